"""`glip-label calibrate`: per-class score thresholds chosen on a few gold images.

One threshold for every class gives too many boxes for some classes and none for others. With a small
gold set (tens of images boxed for the classes to label), the teacher's boxes on it are matched to the
gold boxes (IoU >= 0.5, greedy by score as in COCO), which gives each class its precision-recall curve.
Three criteria:
- `micro-f1` (default): the per-class thresholds that together maximise the micro F1 of the labels, the
  measure of a labeled dataset (every box counts once). A box raises micro F1 exactly when it is a true
  positive with probability above F/2 (Lipton et al. 2014, "Thresholding classifiers to maximize F1"), so
  the best thresholds sit where each class's boxes stop being right more than F/2 of the time.
- `class-f1`: per class, the threshold of that class's best F1. Each class then keeps boxes down to its own
  F_c/2, so a weak class (low F_c) keeps many wrong boxes: measured in the demo's world
  (benchmarks/label_quality.py) this scored a lower micro F1 than one global threshold.
- `target_precision`: per class, the lowest threshold that reaches it (most recall at that precision).
Classes the gold set does not box (no gold box on these images), or where the model finds none of the gold
boxes, get the fallback: the single global threshold that maximises micro F1 over the classes it does box.

Outputs (OUT/): thresholds.json (read by `annotate --thresholds` / `pseudo-caption --thresholds` through
`glip_label.runs.ontology.read_thresholds`),
ontology.calibrated.yaml (the ontology with the thresholds merged in, for `annotate --ontology`),
pr_curves/CLASS.png, and metrics: per class precision / recall / F1 at its chosen threshold and at the
global one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glip_label.io import atomic_write_json, atomic_write_text
from glip_label.runs.annotate_labeler import postprocess_for_ontology
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.ontology import Ontology, apply_thresholds, load_ontology, ontology_yaml
from glip_label.train.assign import box_iou_plus_one

MATCH_IOU = 0.5
THRESHOLDS_VERSION = 1
CRITERIA = ("micro-f1", "class-f1")


# ------------------------------------------------------------------------------------------- matching


@dataclass
class ClassMatches:
    """A class's detections on the gold images: scores [N] and whether each is a true positive, and how
    many gold boxes there are (the recall's denominator)."""

    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    is_tp: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    n_gold: int = 0

    def add(self, scores: np.ndarray, is_tp: np.ndarray, n_gold: int) -> None:
        self.scores = np.concatenate([self.scores, scores])
        self.is_tp = np.concatenate([self.is_tp, is_tp])
        self.n_gold += n_gold


def match_detections(boxes: np.ndarray, scores: np.ndarray, gold_boxes: np.ndarray,
                     iou: float = MATCH_IOU) -> np.ndarray:
    """Greedy COCO-style matching of one class in one image: best score first, each detection takes the
    best-overlapping unmatched gold box with IoU >= iou. Returns is_tp [N] in the input order.

    Greedy in score order means the matches among the boxes above any threshold are the same as in the
    full matching, so one matching gives the exact precision and recall at every threshold.
    """
    is_tp = np.zeros(len(scores), dtype=bool)
    if not len(scores) or not len(gold_boxes):
        return is_tp
    overlaps = box_iou_plus_one(torch.from_numpy(np.asarray(boxes, dtype=np.float64)),
                                torch.from_numpy(np.asarray(gold_boxes, dtype=np.float64))).numpy()  # [N, G]
    taken = np.zeros(len(gold_boxes), dtype=bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(~taken, overlaps[i], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= iou:
            taken[best] = True
            is_tp[i] = True
    return is_tp


# ------------------------------------------------------------------------------------------- thresholds


@dataclass
class PRCurve:
    """Precision / recall / F1 when keeping boxes scoring >= thresholds[k] (thresholds descending)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    tp: np.ndarray  # true positives kept at each threshold
    kept: np.ndarray  # boxes kept at each threshold


def pr_curve(scores: np.ndarray, is_tp: np.ndarray, n_gold: int) -> PRCurve:
    """Every distinct score is a candidate threshold; ties are kept or dropped together."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], is_tp[order].astype(np.float64)
    tp, kept = np.cumsum(hits), np.arange(1, len(hits) + 1, dtype=np.float64)
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True] if len(scores) else np.zeros(0, dtype=bool)
    tp, kept, thresholds = tp[last_of_tie], kept[last_of_tie], sorted_scores[last_of_tie]
    precision = tp / kept
    recall = tp / n_gold if n_gold else np.zeros_like(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return PRCurve(thresholds, precision, recall, f1, tp, kept)


def prf_at(scores: np.ndarray, is_tp: np.ndarray, n_gold: int, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 (and counts) of the boxes scoring >= threshold."""
    keep = scores >= threshold
    tp, kept = int(is_tp[keep].sum()), int(keep.sum())
    precision = tp / kept if kept else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "kept": kept, "gold": n_gold}


def choose_threshold(scores: np.ndarray, is_tp: np.ndarray, n_gold: int, target_precision: float | None = None,
                     ) -> tuple[float | None, bool]:
    """The threshold maximising F1 (ties: the highest threshold, fewest boxes), or with target_precision
    the lowest threshold whose precision reaches it (most recall at that precision).

    Returns (threshold, met); threshold None when there is no true positive to keep (the caller falls
    back); met False when target_precision is never reached (then the highest-precision threshold).
    """
    curve = pr_curve(scores, is_tp, n_gold)
    if not len(curve.thresholds) or not is_tp.any():
        return None, False
    if target_precision is None:
        best = int(np.argmax(curve.f1))  # first maximum = highest threshold among ties
        return float(curve.thresholds[best]), True
    reaching = np.nonzero(curve.precision >= target_precision)[0]
    if len(reaching):
        return float(curve.thresholds[reaching[-1]]), True
    return float(curve.thresholds[int(np.argmax(curve.precision))]), False


def micro_f1_thresholds(per_class: dict[str, ClassMatches], fixed: dict[str, float], start_f1: float = 0.0,
                        max_rounds: int = 100) -> dict[str, float]:
    """Thresholds for the classes of `per_class` that maximise micro F1 together with the `fixed` ones.

    Micro F1 = 2 TP / (kept + gold) is a ratio; Dinkelbach's method maximises it exactly: for a fixed
    lambda, max of 2 TP - lambda * kept splits into one search per class over its own thresholds, and
    lambda = the F1 of that choice climbs to the optimum in a few rounds (it stops when F1 no longer rises).
    Each class keeps at least its top box (ties of the maximum: the highest threshold, fewest boxes).
    Classes without a true positive belong in `fixed` (their boxes at that threshold still count as kept).
    """
    curves = {name: pr_curve(m.scores, m.is_tp, m.n_gold) for name, m in per_class.items()}
    fixed_kept = sum(int((m.scores >= fixed[name]).sum()) for name, m in per_class.items() if name in fixed)
    curves = {name: c for name, c in curves.items() if name not in fixed and len(c.thresholds)}
    gold = sum(m.n_gold for m in per_class.values())
    lam, best = start_f1, {}
    for _ in range(max_rounds):
        pick = {name: int(np.argmax(2 * c.tp - lam * c.kept)) for name, c in curves.items()}
        tp = sum(c.tp[pick[name]] for name, c in curves.items())
        kept = fixed_kept + sum(c.kept[pick[name]] for name, c in curves.items())
        f1 = 2 * tp / (kept + gold) if kept + gold else 0.0
        if best and f1 <= lam + 1e-12:
            break
        lam, best = f1, {name: float(c.thresholds[pick[name]]) for name, c in curves.items()}
    return best


def micro_matches(per_class: dict[str, ClassMatches], classes: Sequence[str] | None = None) -> ClassMatches:
    """All classes' detections pooled (micro averaging)."""
    pooled = ClassMatches()
    for name in classes if classes is not None else per_class:
        m = per_class[name]
        pooled.add(m.scores, m.is_tp, m.n_gold)
    return pooled


def micro_prf(per_class: dict[str, ClassMatches], thresholds: dict[str, float]) -> dict[str, float]:
    """Micro precision / recall / F1 with a threshold per class."""
    tp = kept = gold = 0
    for name, m in per_class.items():
        keep = m.scores >= thresholds[name]
        tp, kept, gold = tp + int(m.is_tp[keep].sum()), kept + int(keep.sum()), gold + m.n_gold
    precision = tp / kept if kept else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "kept": kept, "gold": gold}


def calibrate_thresholds(per_class: dict[str, ClassMatches], categories: Sequence[str],
                         target_precision: float | None = None, floor: float = 0.0,
                         criterion: str = "micro-f1") -> dict[str, Any]:
    """thresholds.json's content from the matched detections of each category (see the module docstring).

    per_class holds the categories the gold set boxes (n_gold > 0 there); the others fall back to the
    global threshold (best micro F1 over the boxed categories, or the target precision when given).
    criterion ("micro-f1" or "class-f1") applies when no target_precision is given.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    boxed = [c for c in categories if c in per_class and per_class[c].n_gold > 0]
    if not boxed:
        raise ValueError("the gold set boxes none of the classes: nothing to calibrate on")
    pooled = micro_matches(per_class, boxed)
    global_threshold, global_met = choose_threshold(pooled.scores, pooled.is_tp, pooled.n_gold, target_precision)
    if global_threshold is None:
        raise ValueError("the model found none of the gold boxes (no true positive at IoU 0.5): "
                         "no threshold can be calibrated")
    joint: dict[str, float] = {}
    if target_precision is None and criterion == "micro-f1":
        no_tp = {c: global_threshold for c in boxed if not per_class[c].is_tp.any()}
        start = micro_prf({c: per_class[c] for c in boxed}, dict.fromkeys(boxed, global_threshold))["f1"]
        joint = micro_f1_thresholds({c: per_class[c] for c in boxed}, no_tp, start)
    thresholds: dict[str, float] = {}
    classes: dict[str, Any] = {}
    for name in categories:
        m = per_class.get(name)
        if m is None or m.n_gold == 0:
            thresholds[name] = global_threshold
            classes[name] = {"threshold": global_threshold, "source": "fallback", "gold_boxes": 0}
            continue
        if joint:
            chosen, met = joint.get(name), True
        else:
            chosen, met = choose_threshold(m.scores, m.is_tp, m.n_gold, target_precision)
        source = "gold" if chosen is not None else "fallback"
        chosen = max(floor, chosen) if chosen is not None else global_threshold
        thresholds[name] = chosen
        classes[name] = {
            "threshold": chosen, "source": source, "gold_boxes": m.n_gold,
            **({"target_met": met} if target_precision is not None and source == "gold" else {}),
            "at_threshold": prf_at(m.scores, m.is_tp, m.n_gold, chosen),
            "at_global": prf_at(m.scores, m.is_tp, m.n_gold, global_threshold),
        }  # fmt: skip
    gold_only = {c: thresholds[c] for c in boxed}
    return {
        "version": THRESHOLDS_VERSION,
        "criterion": criterion if target_precision is None else f"precision>={target_precision}",
        "iou": MATCH_IOU,
        "default": global_threshold,
        "thresholds": thresholds,
        "classes": classes,
        "global": {"threshold": global_threshold, **({"target_met": global_met} if target_precision else {}),
                   **micro_prf({c: per_class[c] for c in boxed}, dict.fromkeys(boxed, global_threshold))},
        "per_class_micro": micro_prf({c: per_class[c] for c in boxed}, gold_only),
    }


# ------------------------------------------------------------------------------------------- running the model


def collect_matches(predictor, gold: str | Path, ontology: Ontology, floor: float = 0.05, batch_size: int = 1,
                    tta=None, progress: bool = False) -> tuple[dict[str, ClassMatches], dict[str, Any]]:
    """The model's boxes on every gold image, mapped to the ontology's categories and matched per class.

    gold: "FILE" or "FILE@ROOT" (COCO detection). A gold category is matched to the ontology category of
    the same name (case and surrounding spaces ignored). Returns (per boxed category, info) where info
    lists the images that could not be read and the gold classes that are not labeled.
    """
    from glip_label.data.images import ImageError, load_image
    from glip_label.data.sources import parse_data_arg
    from glip_label.formats.coco import read_coco, xywh_to_xyxy
    from glip_label.tta import predict_tta

    gold_path, root = parse_data_arg(gold)
    data = read_coco(gold_path)
    root = root or gold_path.resolve().parent
    if not data["images"]:
        raise ValueError(f"{gold_path}: no images")
    by_name = {_key(c): i for i, c in enumerate(ontology.categories)}
    gold_to_cat = {c["id"]: by_name.get(_key(c["name"])) for c in data["categories"]}
    not_labeled = sorted(c["name"] for c in data["categories"] if gold_to_cat[c["id"]] is None)
    if all(v is None for v in gold_to_cat.values()):
        raise ValueError(f"{gold_path}: none of its categories {[c['name'] for c in data['categories']][:8]} "
                         f"is one of the classes {ontology.categories[:8]}")
    boxes_of: dict[int, list[tuple[int, list[float]]]] = {}
    for ann in data["annotations"]:
        category = gold_to_cat.get(ann["category_id"])
        if category is not None and not ann.get("iscrowd", 0):
            boxes_of.setdefault(ann["image_id"], []).append((category, ann["bbox"]))
    bare = Ontology(ontology.categories, ontology.phrases, ontology.phrase_category, {})
    post = AnnotateOptions(source="", out=Path("."), threshold=0.0, max_dets=10_000)
    per_class = {ontology.categories[c]: ClassMatches() for c in sorted({v for v in gold_to_cat.values()
                                                                          if v is not None})}
    unreadable: list[dict[str, str]] = []
    images = data["images"]
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="calibrate", unit="batch")
    for batch in batches:
        loaded = [(entry, load_image(root, entry["file_name"])) for entry in batch]
        unreadable += [x.to_dict() for _, x in loaded if isinstance(x, ImageError)]
        loaded = [(e, x) for e, x in loaded if not isinstance(x, ImageError)]
        if not loaded:
            continue
        pil = [x.image for _, x in loaded]
        if tta is not None:
            found = predict_tta(predictor, pil, ontology.phrases, tta, threshold=floor, batch_size=batch_size)
        else:
            found = predictor.predict(pil, ontology.phrases, threshold=floor, batch_size=batch_size)
        for (entry, image), det in zip(loaded, found, strict=True):
            det = postprocess_for_ontology(det, bare, post, (image.width, image.height))
            gold_here = boxes_of.get(entry["id"], [])
            for name in per_class:
                category = ontology.categories.index(name)
                mine = det.select(det.labels == category)
                gold_boxes = np.array([xywh_to_xyxy(b) for c, b in gold_here if c == category]).reshape(-1, 4)
                per_class[name].add(mine.scores, match_detections(mine.boxes, mine.scores, gold_boxes),
                                    len(gold_boxes))
    if len(unreadable) == len(images):
        raise ValueError(f"none of the {len(images)} gold images could be read (first: {unreadable[0]})")
    return per_class, {"images": len(images), "unreadable": unreadable, "gold_classes_not_labeled": not_labeled}


def _key(name: str) -> str:
    return str(name).strip().lower()


# ------------------------------------------------------------------------------------------- the command


@dataclass
class CalibrateOptions:
    gold: str
    out: Path
    prompt: str | None = None
    classes_file: str | None = None
    ontology: str | None = None
    model: str | None = "glip-t"
    config: str | list[str] | None = None  # a preset, a yaml, or yamls merged in order (repeatable --config)
    target_precision: float | None = None
    criterion: str = "micro-f1"
    floor: float = 0.05
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    tta: Any = None  # glip_label.tta.TTAOptions or None

    def validate(self) -> None:
        if self.target_precision is not None and not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"--target-precision must be in (0, 1], got {self.target_precision}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"--criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"--floor must be in [0, 1), got {self.floor}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")


def calibrate(options: CalibrateOptions, predictor=None, progress: bool = False) -> dict[str, Any]:
    """Run the model on the gold set, choose the thresholds, write OUT/ (see the module docstring)."""
    options.validate()
    ontology = load_ontology(options.prompt, options.classes_file, options.ontology)
    if predictor is None:
        from glip_label.predictor import load_model

        predictor = load_model(options.model, config=options.config, device=options.device, dtype=options.dtype)
    per_class, info = collect_matches(predictor, options.gold, ontology, options.floor, options.batch_size,
                                      options.tta, progress)
    result = calibrate_thresholds(per_class, ontology.categories, options.target_precision, options.floor,
                                  options.criterion)
    result.update({"model": options.model, "gold": str(options.gold), "floor": options.floor,
                   "tta": options.tta.to_dict() if options.tta is not None else None, "gold_info": info})
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "thresholds.json", result)
    atomic_write_text(out / "ontology.calibrated.yaml",
                      ontology_yaml(apply_thresholds(ontology, result["thresholds"])))
    plot_dir = out / "pr_curves"
    plot_dir.mkdir(exist_ok=True)
    for name, m in per_class.items():
        if m.n_gold:
            curve = pr_curve(m.scores, m.is_tp, m.n_gold)
            chosen = result["classes"][name]["at_threshold"]
            plot_pr_curve(plot_dir / f"{_file_stem(name)}.png", name, curve, (chosen["recall"], chosen["precision"]))
    return result


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def plot_pr_curve(path: Path, title: str, curve: PRCurve, chosen: tuple[float, float], size: int = 320) -> None:
    """A precision-recall curve as a PNG drawn with Pillow (no plotting library needed), the chosen
    operating point circled."""
    from PIL import Image, ImageDraw

    margin = 36
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    span = size - 2 * margin

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return margin + recall * span, size - margin - precision * span

    draw.rectangle([margin, margin, size - margin, size - margin], outline=(120, 120, 120))
    for tick in (0.0, 0.5, 1.0):
        x, y = xy(tick, tick)
        draw.text((x - 6, size - margin + 4), f"{tick:g}", fill="black")
        draw.text((4, y - 6), f"{tick:g}", fill="black")
    draw.text((size // 2 - 18, size - 16), "recall", fill="black")
    draw.text((4, 4), f"{title}: precision vs recall", fill="black")
    points = [xy(float(r), float(p)) for r, p in zip(curve.recall, curve.precision, strict=True)]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2)
    cx, cy = xy(*chosen)
    draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], outline=(214, 39, 40), width=2)
    image.save(path)


__all__ = ["CalibrateOptions", "ClassMatches", "PRCurve", "calibrate", "calibrate_thresholds", "choose_threshold",
           "collect_matches", "match_detections", "micro_prf", "plot_pr_curve", "pr_curve", "prf_at"]
