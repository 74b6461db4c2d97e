"""Label quality in the demo's world: calibrated per-class thresholds and test-time augmentation.

For each seed: the demo's world (same gold set, same 200 held-out pictures; 32 more val pictures serve as
the small gold set for calibration), a teacher trained exactly as `glip-label demo` trains it (saved and
reused on later runs), then
  1. `calibrate` on the 32 gold pictures -> per-class thresholds (the default criterion, micro-f1, and
     class-f1 for comparison) and the best single global threshold (chosen on the same 32 pictures), each
     applied to the teacher's boxes on the 200 held-out pictures: micro precision / recall / F1 at IoU 0.5
     (every class of the world prompted, as the demo does);
  2. box AP (COCO) of the teacher on the 200 held-out pictures without and with `--tta`, and the time
     each takes in this one run (ratio).

    nice -n 5 python benchmarks/label_quality.py --seeds 0 1 --out runs/label_quality
    (teachers and worlds are kept in --out and reused; results: benchmarks/results/label_quality.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from glip_label.io import atomic_write_json
from glip_label.runs.demo import DemoOptions, demo_model_config

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
            max_steps=teacher_steps, config=demo_model_config(demo.image_size), batch_size=demo.batch_size,
            lr=demo.lr, lang_lr=demo.lr, seed=seed, progress=progress, checkpoint_every=10_000,
            keep_checkpoints=1))
        atomic_write_json(out / "teacher_seconds.json", {"seconds": round(time.perf_counter() - start, 1),
                                                         "steps": teacher_steps})
    return world, teacher


def split_val(world, out: Path) -> tuple[str, str]:
    """The val file cut into the 200 held-out pictures (the demo's) and the 32 calibration ones, as
    "FILE@ROOT" gold arguments."""
    from glip_label.formats.coco import read_coco

    val = read_coco(world.val_coco)
    images = sorted(val["images"], key=lambda im: im["id"])
    specs = []
    for name, part in (("held_out", images[:N_HELD_OUT]), ("calibration", images[N_HELD_OUT:])):
        ids = {im["id"] for im in part}
        subset = {**val, "images": part, "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}
        atomic_write_json(out / f"{name}.coco.json", subset)
        specs.append(f"{out / f'{name}.coco.json'}@{world.val_coco.parent}")
    if len(images) != N_HELD_OUT + N_CALIBRATION:
        raise ValueError(f"{world.val_coco}: {len(images)} images, expected {N_HELD_OUT + N_CALIBRATION}")
    return specs[0], specs[1]


class _TTAPredictor:
    """`predict` with test-time augmentation, for evaluate_detection (which only calls predict)."""

    def __init__(self, predictor, options) -> None:
        self.predictor, self.options = predictor, options

    def predict(self, images, prompt, spans=None, threshold: float = 0.0, batch_size: int = 1):
        from glip_label.tta import predict_tta

        return predict_tta(self.predictor, images, prompt, self.options, threshold=threshold, batch_size=batch_size)


def measure(out: Path, world, teacher: Path, merges: list[str]) -> dict:
    """Calibrated vs global thresholds (micro P/R/F1 at IoU 0.5 on the held-out pictures) and AP +- TTA."""
    from glip_label.predictor import load_model
    from glip_label.runs.calibrate import calibrate_thresholds, collect_matches, micro_prf
    from glip_label.runs.ontology import Ontology
    from glip_label.train.evaluate import evaluate_detection
    from glip_label.tta import TTAOptions

    held_out, calibration = split_val(world, out)
    predictor = load_model(teacher)
    ontology = Ontology.from_names(list(world.categories))
    cal_matches, _ = collect_matches(predictor, calibration, ontology)
    thresholds = calibrate_thresholds(cal_matches, ontology.categories)  # the default criterion, micro-f1
    by_class = calibrate_thresholds(cal_matches, ontology.categories, criterion="class-f1")
    atomic_write_json(out / "thresholds.json", thresholds)
    held_matches, _ = collect_matches(predictor, held_out, ontology)
    result = {
        "teacher_steps": json.loads((out / "teacher_seconds.json").read_text())["steps"]
        if (out / "teacher_seconds.json").exists() else None,
        "thresholds": thresholds["thresholds"], "class_f1_thresholds": by_class["thresholds"],
        "global_threshold": thresholds["default"],
        "calibration_f1": {"per_class": thresholds["per_class_micro"]["f1"],
                           "per_class_class_f1": by_class["per_class_micro"]["f1"],
                           "global": thresholds["global"]["f1"]},
        "held_out": {"per_class": micro_prf(held_matches, thresholds["thresholds"]),
                     "per_class_class_f1": micro_prf(held_matches, by_class["thresholds"]),
                     "global": micro_prf(held_matches, dict.fromkeys(ontology.categories, thresholds["default"]))},
    }
    gold_path = held_out.rsplit("@", 1)
    start = time.perf_counter()
    plain = evaluate_detection(predictor, gold_path[0], image_root=gold_path[1])
    result["ap"] = {"plain": plain["ap"], "plain_ap50": plain["ap50"]}
    result["seconds"] = {"plain": round(time.perf_counter() - start, 1)}
    for merge in merges:
        start = time.perf_counter()
        tta = evaluate_detection(_TTAPredictor(predictor, TTAOptions(merge=merge)), gold_path[0],
                                 image_root=gold_path[1])
        result["ap"][f"tta_{merge}"], result["ap"][f"tta_{merge}_ap50"] = tta["ap"], tta["ap50"]
        result["seconds"][f"tta_{merge}"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/label_quality"))
    parser.add_argument("--teacher-steps", type=int, default=DemoOptions.teacher_steps,
                        help="the demo's 1500 by default; fewer on a busy machine (said in the results)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "label_quality.json")
    parser.add_argument("--merges", nargs="+", default=["nms", "wbf"], choices=["nms", "wbf"])
    parser.add_argument("--teachers-only", action="store_true", help="only build worlds and train teachers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    results = {}
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        world, teacher = prepare_teacher(out, seed, args.teacher_steps)
        if args.teachers_only:
            continue
        results[seed] = measure(out, world, teacher, args.merges)
        print(json.dumps({"seed": seed, **results[seed]}, indent=1))
    if results:
        atomic_write_json(args.results, {"args": {k: str(v) for k, v in vars(args).items()}, "seeds": results})


if __name__ == "__main__":
    main()
