"""Label quality in the demo's world: calibrated per-class thresholds and test-time augmentation.

For each seed: the demo's world (same gold set, same 200 held-out pictures; 32 more val pictures serve as
the small gold set for calibration), a teacher trained exactly as `glip-label demo` trains it (saved and
reused on later runs), then
  1. `calibrate` on the 32 gold pictures -> per-class thresholds and the best single global threshold
     (chosen on the same 32 pictures), both applied to the teacher's boxes on the 200 held-out pictures:
     micro precision / recall / F1 at IoU 0.5 (every class of the world prompted, as the demo does);
  2. box AP (COCO) of the teacher on the 200 held-out pictures without and with `--tta`, and the time
     each takes in this one run (ratio).

    nice -n 5 python benchmarks/label_quality.py --seeds 0 1 --out runs/label_quality
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from glip_label.io import atomic_write_json
from glip_label.runs.demo import DemoOptions, _student_config

N_HELD_OUT = 200
N_CALIBRATION = 32


def prepare_teacher(out: Path, seed: int, teacher_steps: int, progress: bool = False):
    """World (gold as the demo's, val = 200 held-out + 32 calibration pictures) and the demo's teacher."""
    from glip_label.runs.train_student import TrainStudentOptions, train_student
    from glip_label.synth import WorldConfig, generate_world
    from glip_label.synth.export import WorldPaths

    demo = DemoOptions(seed=seed)
    world_dir = out / "world"
    if (world_dir / "world.json").exists():
        world = WorldPaths.load(world_dir)
    else:
        # Val pictures are seeded per index, so the first 200 are the demo's held-out set; captions are not
        # needed (the teacher trains on gold only).
        config = WorldConfig(seed=seed, image_size=(demo.image_size, demo.image_size), n_gold=demo.n_gold,
                             n_captions=0, n_val=N_HELD_OUT + N_CALIBRATION)
        world = generate_world(world_dir, config)
    teacher = out / "teacher" / "model_final.pth"
    if not teacher.exists():
        start = time.perf_counter()
        train_student(TrainStudentOptions(
            out=out / "teacher", gold=[str(world.gold_coco), str(world.gold_mdetr)],
            max_steps=teacher_steps, config=_student_config(demo.image_size), batch_size=demo.batch_size,
            lr=demo.lr, lang_lr=demo.lr, seed=seed, progress=progress, checkpoint_every=10_000,
            keep_checkpoints=1))
        atomic_write_json(out / "teacher_seconds.json", {"seconds": round(time.perf_counter() - start, 1),
                                                         "steps": teacher_steps})
    return world, teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/label_quality"))
    parser.add_argument("--teacher-steps", type=int, default=DemoOptions.teacher_steps,
                        help="the demo's 1500 by default; fewer on a busy machine (said in the results)")
    parser.add_argument("--teachers-only", action="store_true", help="only build worlds and train teachers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    results = {}
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        world, teacher = prepare_teacher(out, seed, args.teacher_steps)
        if args.teachers_only:
            continue
        results[seed] = measure(out, world, teacher)
        print(json.dumps({"seed": seed, **results[seed]}, indent=1))
    if results:
        atomic_write_json(args.out / "results.json", results)


if __name__ == "__main__":
    main()
