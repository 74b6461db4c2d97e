"""`glip-label calibrate`: per-class score thresholds chosen on a few gold images.

One threshold for every class gives too many boxes for some classes and none for others. With a small
gold set (tens of images boxed for the classes to label), the teacher's boxes on it are matched to the
gold boxes (IoU >= 0.5, greedy by score as in COCO), which gives each class its precision-recall curve.
The criteria (micro F1 of the labels by default: per class a weighted mean of a threshold moved from one global
threshold only as far as its gold boxes give evidence and one from a fit of all classes' scores together; each
class's own F1; one global threshold; a target precision) are in
`glip_label.runs.thresholds`.

Outputs (OUT/): thresholds.json (read by `annotate --thresholds` / `pseudo-caption --thresholds` through
`glip_label.runs.ontology.read_thresholds`),
ontology.calibrated.yaml (the ontology with the thresholds merged in, for `annotate --ontology`),
pr_curves/CLASS.png, and metrics: per class precision / recall / F1 at its chosen threshold and at the
global one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glip_label.io import atomic_write_json, atomic_write_text
from glip_label.runs.annotate_labeler import postprocess_for_ontology
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.calibrate_options import CalibrateOptions
from glip_label.runs.ontology import Ontology, apply_thresholds, load_ontology, ontology_yaml
from glip_label.runs.thresholds import (
    MATCH_IOU,
    ClassMatches,
    PRCurve,
    calibrate_thresholds,
    choose_threshold,
    micro_prf,
    pr_curve,
    prf_at,
)
from glip_label.train.assign import box_iou_plus_one

# ------------------------------------------------------------------------------------------- matching


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


# ------------------------------------------------------------------------------------------- running the model


@dataclass
class GoldSet:
    """A gold set read for calibration: its images, where they are, and each image's boxes by ontology category."""

    path: Path
    images: list[dict[str, Any]]
    root: Path
    boxes_of: dict[Any, list[tuple[int, list[float]]]]  # image id -> [(category index, COCO xywh)]
    categories: list[int]  # the ontology categories the gold set has a class for
    not_labeled: list[str]  # gold classes the ontology does not label


def read_gold_set(gold: str | Path, ontology: Ontology) -> GoldSet:
    """Read "FILE" or "FILE@ROOT" (a COCO detection file, or a YOLO data.yaml's val split) and match its
    categories to the ontology's by name (case and surrounding spaces ignored). Raises ValueError when it has no
    image or no class of the ontology; run before the model loads, so a wrong gold set fails at once."""
    from glip_label.data.sources import parse_data_arg, read_detection_gold

    gold_path, root = parse_data_arg(gold)
    data = read_detection_gold(gold_path, root)
    if not data["images"]:
        raise ValueError(f"{gold_path}: no images")
    by_name = {_key(c): i for i, c in enumerate(ontology.categories)}
    gold_to_cat = {c["id"]: by_name.get(_key(c["name"])) for c in data["categories"]}
    if all(v is None for v in gold_to_cat.values()):
        raise ValueError(f"{gold_path}: none of its categories {[c['name'] for c in data['categories']][:8]} "
                         f"is one of the classes {ontology.categories[:8]}")
    boxes_of: dict[Any, list[tuple[int, list[float]]]] = {}
    for ann in data["annotations"]:
        category = gold_to_cat.get(ann["category_id"])
        if category is not None and not ann.get("iscrowd", 0):
            boxes_of.setdefault(ann["image_id"], []).append((category, ann["bbox"]))
    return GoldSet(gold_path, data["images"], root or gold_path.resolve().parent, boxes_of,
                   sorted({v for v in gold_to_cat.values() if v is not None}),
                   sorted(c["name"] for c in data["categories"] if gold_to_cat[c["id"]] is None))


def collect_matches(predictor, gold: str | Path | GoldSet, ontology: Ontology, floor: float = 0.05,
                    batch_size: int = 1, tta=None, progress: bool = False,
                    ) -> tuple[dict[str, ClassMatches], dict[str, Any]]:
    """The model's boxes on every gold image, mapped to the ontology's categories and matched per class.

    gold: "FILE" or "FILE@ROOT", or a `GoldSet` already read (`read_gold_set`). Returns (per boxed category, info)
    where info lists the images that could not be read and the gold classes that are not labeled.
    """
    from glip_label.data.images import ImageError, load_image
    from glip_label.formats.coco import xywh_to_xyxy
    from glip_label.tta import predict_tta

    gold_set = gold if isinstance(gold, GoldSet) else read_gold_set(gold, ontology)
    root, boxes_of = gold_set.root, gold_set.boxes_of
    bare = Ontology(ontology.categories, ontology.phrases, ontology.phrase_category, {})
    post = AnnotateOptions(source="", out=Path("."), threshold=0.0, max_dets=10_000)
    per_class = {ontology.categories[c]: ClassMatches() for c in gold_set.categories}
    unreadable: list[dict[str, str]] = []
    images = gold_set.images
    numbered = list(enumerate(images))  # a box's image number, for validation by folds
    batches = [numbered[i : i + batch_size] for i in range(0, len(numbered), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="calibrate", unit="batch")
    for batch in batches:
        loaded = [(number, entry, load_image(root, entry["file_name"])) for number, entry in batch]
        unreadable += [x.to_dict() for _, _, x in loaded if isinstance(x, ImageError)]
        loaded = [(n, e, x) for n, e, x in loaded if not isinstance(x, ImageError)]
        if not loaded:
            continue
        pil = [x.image for _, _, x in loaded]
        if tta is not None:
            found = predict_tta(predictor, pil, ontology.phrases, tta, threshold=floor, batch_size=batch_size)
        else:
            found = predictor.predict(pil, ontology.phrases, threshold=floor, batch_size=batch_size)
        for (image_number, entry, image), det in zip(loaded, found, strict=True):
            det = postprocess_for_ontology(det, bare, post, (image.width, image.height))
            gold_here = boxes_of.get(entry["id"], [])
            for name in per_class:
                category = ontology.categories.index(name)
                mine = det.select(det.labels == category)
                gold_boxes = np.array([xywh_to_xyxy(b) for c, b in gold_here if c == category]).reshape(-1, 4)
                per_class[name].add(mine.scores, match_detections(mine.boxes, mine.scores, gold_boxes),
                                    len(gold_boxes), image_number)
    if len(unreadable) == len(images):
        raise ValueError(f"none of the {len(images)} gold images could be read (first: {unreadable[0]})")
    return per_class, {"images": len(images), "unreadable": unreadable,
                       "gold_classes_not_labeled": gold_set.not_labeled}


def _key(name: str) -> str:
    return str(name).strip().lower()


# ------------------------------------------------------------------------------------------- the command


def calibrate(options: CalibrateOptions, predictor=None, progress: bool = False) -> dict[str, Any]:
    """Run the model on the gold set, choose the thresholds, write OUT/ (see the module docstring)."""
    options.validate()
    ontology = load_ontology(options.prompt, options.classes_file, options.ontology)
    gold_set = read_gold_set(options.gold, ontology)
    if predictor is None:
        from glip_label.predictor import load_model

        predictor = load_model(options.model, config=options.config, device=options.device, dtype=options.dtype)
    per_class, info = collect_matches(predictor, gold_set, ontology, options.floor, options.batch_size,
                                      options.tta, progress)
    result = calibrate_thresholds(per_class, ontology.categories, options.target_precision, options.floor,
                                  options.criterion, options.evidence)
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


__all__ = ["CalibrateOptions", "ClassMatches", "GoldSet", "PRCurve", "calibrate", "calibrate_thresholds",
           "choose_threshold", "collect_matches", "match_detections", "micro_prf", "plot_pr_curve", "pr_curve",
           "prf_at", "read_gold_set"]
