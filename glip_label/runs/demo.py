"""`glip-label demo`: the paper's self-training loop end to end, offline, on a generated world.

Stages (each calls the library function of the real command, so the demo is an honest end-to-end
run of them):
  1. world    - `glip_label.synth.generate_world`: gold (base shapes boxed), captions, val
  2. teacher  - `train_student` on the gold set only, as GLIP's teacher is trained on gold data
  3. pseudo   - `pseudo_caption` with the teacher over the caption corpus (noun phrases found by the
                same phrase finder a real corpus gets)
  4. student  - `train_student` on gold + the teacher's pseudo boxes (score >= pseudo_min_score, and only
                confident groundings when pseudo_min_margin is set), the gold set weighted gold_weight
  5. evaluate - COCO AP overall / base / novel and grounding Recall@1 on the held-out set, for both

Why the student can win: the teacher has never seen the novel nouns, so for "a small star next to a
red circle" it can only rely on objectness and on the other phrases of the caption. Most of its
groundings of novel phrases are wrong, so the student keeps only confident ones (`pseudo_min_margin`):
a phrase's best box, when it clearly beats the phrase's boxes on other objects and no other phrase
claims that object (typically the only object in the picture, or the one the caption's known phrases
leave unexplained), with the caption cut to the kept phrases. About 80% of the kept novel-shape
groundings are right (73-97% per shape), and the student then sees the novel nouns tied to boxes, which
the gold set never gave. Kept groundings are mostly one phrase on a simple picture, so they teach the
nouns but not how to tell the phrases of a long caption apart; the gold set, three copies per epoch
(`gold_weight`, about half of what the student sees), keeps that skill. Measured on 800 held-out
pictures of the world as it was before the ring became a base shape, seeds 0 / 1: with one copy (a
quarter), the student's Recall@1 fell below the teacher's (0.540 -> 0.519, 0.486 -> 0.484); with three
it rose (-> 0.589, -> 0.521). Recall@1 and base AP also gain from the student's extra 1500 steps alone: a
control that continued the teacher on gold only did better on both than the student (Recall@1 0.641 /
0.643 against 0.600 / 0.599, one core per seed) and worse on novel AP (0.062 / 0.049 against 0.101 /
0.097). The novel shapes are what the pseudo labels buy.

The world is sized so that the teacher is good enough for this on CPU in minutes: 256 gold images (with
96 the teacher over-fitted: 0.38 AP on its own training images against 0.19 on held-out ones) and a
caption corpus 16x larger, since the confident groundings are a small share of it (labelling it takes
a fraction of the time training takes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glip_label.config import get_preset
from glip_label.io import atomic_write_json

log = logging.getLogger(__name__)

@dataclass
class DemoOptions:
    """Sizes and budgets of the demo; the defaults are the full demo (minutes on 2 CPU cores)."""

    out: Path = Path("runs/demo")
    seed: int = 0
    n_gold: int = 256
    n_captions: int = 4096
    n_val: int = 200
    image_size: int = 160
    teacher_steps: int = 1500
    student_steps: int = 1500
    batch_size: int = 4
    lr: float = 1e-3
    pseudo_min_score: float = 0.5
    pseudo_min_margin: float | None = 0.1
    gold_weight: float = 3.0
    pseudo_batch_size: int = 8
    vis_images: int = 6
    progress: bool = True

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> DemoOptions:
        """A reduced demo for tests: every stage runs and writes valid files; metrics are not meaningful."""
        return cls(out=out, seed=seed, n_gold=8, n_captions=8, n_val=6, teacher_steps=4, student_steps=4,
                   batch_size=2, pseudo_min_score=0.0, pseudo_min_margin=None, vis_images=2,
                   progress=False)


def demo_model_config(image_size: int):
    """glip-tiny at the world's image size (no up-scaling of 160 px pictures to 320)."""
    return get_preset("glip-tiny").replace(min_size_test=image_size, max_size_test=max(image_size, 256))


def _evaluate(model_path: Path, world, progress: bool) -> dict[str, Any]:
    from glip_label.predictor import load_model
    from glip_label.train.evaluate import evaluate_detection, evaluate_grounding

    predictor = load_model(model_path)
    groups = {"base": list(world.base_shapes), "novel": list(world.novel_shapes)}
    detection = evaluate_detection(predictor, world.val_coco, progress=progress, category_groups=groups)
    grounding = evaluate_grounding(predictor, world.val_mdetr, progress=progress)
    return {
        "ap": detection["ap"], "ap50": detection["ap50"], "ap_base": detection["ap_base"],
        "ap_novel": detection["ap_novel"], "recall_at_1": grounding["recall_at_1"],
        "recall_at_5": grounding["recall_at_5"], "recall_at_10": grounding["recall_at_10"],
    }  # fmt: skip


def _draw(model_path: Path, world, out_dir: Path, count: int) -> list[str]:
    """Pictures of the model's boxes (score >= 0.3) for the first val images, prompted with every class."""
    from PIL import Image

    from glip_label.formats.vis import draw_detections
    from glip_label.predictor import load_model

    predictor = load_model(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = sorted(world.val_images.glob("*.png"))[:count]
    written = []
    for path, detections in zip(images, predictor.predict([str(p) for p in images], list(world.categories),
                                                          threshold=0.3), strict=True):
        target = out_dir / path.name
        with Image.open(path) as image:
            draw_detections(image, detections).save(target)
        written.append(str(target))
    return written


def run_demo(options: DemoOptions, on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every stage into options.out; returns (and writes to OUT/metrics.json) the metrics and timings."""
    from glip_label.runs.pseudo_caption import PseudoCaptionOptions, pseudo_caption
    from glip_label.runs.train_student import TrainStudentOptions, train_student
    from glip_label.synth import WorldConfig, generate_world

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    announce = on_stage or (lambda stage: log.info("demo stage: %s", stage))
    config = demo_model_config(options.image_size)

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        announce(stage)
        start = time.perf_counter()
        result = fn()
        seconds[stage] = round(time.perf_counter() - start, 2)
        return result

    world_config = WorldConfig(seed=options.seed, image_size=(options.image_size, options.image_size),
                               n_gold=options.n_gold, n_captions=options.n_captions, n_val=options.n_val)
    world = timed("world", lambda: generate_world(out / "world", world_config))
    # The text encoder starts from random weights here (no BERT download), so it learns at the full rate.
    common = dict(config=config, batch_size=options.batch_size, lr=options.lr, lang_lr=options.lr,
                  seed=options.seed, progress=options.progress, checkpoint_every=10_000,
                  keep_checkpoints=1)  # fmt: skip
    gold = [str(world.gold_coco), str(world.gold_mdetr)]

    timed("teacher", lambda: train_student(TrainStudentOptions(
        out=out / "teacher", gold=gold, max_steps=options.teacher_steps, **common)))
    teacher = out / "teacher" / "model_final.pth"

    timed("pseudo_caption", lambda: pseudo_caption(PseudoCaptionOptions(
        source=str(world.captions_jsonl), out=out / "pseudo", model=str(teacher),
        batch_size=options.pseudo_batch_size), progress=options.progress))

    # The student continues from the teacher's weights (self-training as fine-tuning): what it can learn
    # about the novel shapes comes only from the pseudo boxes, since the gold set never names them.
    timed("student", lambda: train_student(TrainStudentOptions(
        out=out / "student", gold=gold, pseudo=[str(out / "pseudo" / "grounding.odvg.jsonl")], init=str(teacher),
        max_steps=options.student_steps, pseudo_min_score=options.pseudo_min_score,
        pseudo_min_margin=options.pseudo_min_margin, gold_weight=options.gold_weight,
        **{**common, "config": None})))
    student = out / "student" / "model_final.pth"

    metrics: dict[str, Any] = {"seed": options.seed}
    metrics["teacher"] = timed("evaluate_teacher", lambda: _evaluate(teacher, world, options.progress))
    metrics["student"] = timed("evaluate_student", lambda: _evaluate(student, world, options.progress))
    if options.vis_images:
        timed("pictures", lambda: {
            "teacher": _draw(teacher, world, out / "vis" / "teacher", options.vis_images),
            "student": _draw(student, world, out / "vis" / "student", options.vis_images),
        })  # fmt: skip
    metrics["pseudo"] = _pseudo_summary(out / "pseudo", out / "student")
    metrics["seconds"] = {**seconds, "total": round(sum(seconds.values()), 2)}
    metrics["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _pseudo_summary(pseudo_dir: Path, student_dir: Path) -> dict[str, Any]:
    """How much the teacher labelled (pairs grounded, boxes) and how much of it the student trained on.

    The student's share comes from the data stats `train_student` recorded in its metrics.json, so it is
    what the student's own filters kept, not a recount.
    """
    run = json.loads((pseudo_dir / "run.json").read_text(encoding="utf-8"))
    student = json.loads((student_dir / "metrics.json").read_text(encoding="utf-8"))
    (source,) = [s for s in student["data"]["sources"] if s["name"].startswith("pseudo:")]
    kept = source["stats"].get("boxes_read", 0) - source["stats"].get("boxes_dropped", 0)
    return {**run["counts"], "boxes_kept_for_student": kept, "images_kept_for_student": source["images"]}


__all__ = ["DemoOptions", "run_demo"]
