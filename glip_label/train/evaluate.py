"""Evaluating a (student) GLIP: COCO box AP on a gold detection file, phrase-grounding Recall@k.

Detection follows the official zero-shot/fine-tuned COCO evaluation (microsoft/GLIP
maskrcnn_benchmark/engine/inference.py, `inference` with TEST.EVAL_TASK "detection" and
`create_queries_and_maps_from_dataset`): every gold image is prompted with all gold category names
(cleaned, joined by ". ", chunked when longer than the text limit), the official post-processing keeps up
to 100 boxes per image, and pycocotools scores the results. Boxes are exported like the official code
(maskrcnn_benchmark/data/datasets/evaluation/coco/coco_eval.py, `prepare_for_coco_detection`), w = x2 - x1 + 1.

Grounding follows the Flickr30K Entities protocol of MDETR/GLIP (maskrcnn_benchmark/data/datasets/evaluation/
flickr/flickr_eval.py, `FlickrEvaluator`, after MDETR's flickr_eval.py): each image-caption
pair is prompted with its caption and the spans of its gold phrases; per phrase the predicted boxes
are ranked by score, and Recall@k is the share of phrases for which any of the top-k boxes has
IoU >= 0.5 with any gold box of that phrase ("any-box" protocol). IoU uses the same "+1" areas as the
rest of the box code. Phrases of captions that cannot be scored (unreadable image, caption over the
text limit) count as misses and are reported, so a recall is never inflated by skipping.

Both functions only call `predictor.predict(...)` (for a GLIPPredictor, the one forward and decode path that
labelling runs too: glip_label/predictor.py, glip_label/processor.py), so any object with that method can be
evaluated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from glip_label.data.image_refs import image_resolver
from glip_label.data.images import ImageError
from glip_label.data.sources import read_detection_gold
from glip_label.formats.coco import BBOX_DECIMALS, evaluate_coco, xywh_to_xyxy, xyxy_to_xywh
from glip_label.formats.mdetr import read_mdetr
from glip_label.records import Detections
from glip_label.train.assign import box_iou_plus_one

log = logging.getLogger(__name__)

GROUNDING_IOU = 0.5
MAX_LISTED_PROBLEMS = 20


class NothingEvaluatedError(ValueError):
    """No image of a validation file could be read (or it has none): a metric of nothing is not a 0."""


def _require_images(path: Path, attempted: int, unreadable: list[dict[str, str]], where: str) -> None:
    """Raise when a metric would be computed on no image at all; the reason names the first failures."""
    if attempted == 0:
        raise NothingEvaluatedError(f"{path}: no image to evaluate on")
    if len(unreadable) >= attempted:
        first = "; ".join(f"{u['file_name']}: {u['reason']}" for u in unreadable[:3])
        raise NothingEvaluatedError(
            f"{path}: none of the {attempted} images could be read from {where} ({first}); "
            f"give FILE@ROOT with the image folder"
        )


class PredictorLike(Protocol):
    def predict(
        self, images: Any, prompt: Any, spans: Any = None, threshold: float = ..., batch_size: int = ...
    ) -> Detections | list[Detections]: ...


def _rescale_to_stated_size(detections: Detections, actual: tuple[int, int], stated: tuple[int, int]) -> np.ndarray:
    """Boxes in the gold file's pixel frame when the decoded image (w, h) differs from the stated one."""
    if actual == stated:
        return detections.boxes
    scale = np.array([stated[0] / actual[0], stated[1] / actual[1]] * 2)
    return detections.boxes * scale


def check_images_readable(path: str | Path, image_root: str | Path | None = None, probe: int = 20,
                          images: Sequence[dict[str, Any]] | None = None) -> None:
    """Fail early (before hours of training) when none of the first `probe` images of a validation file
    can be read where `evaluate_detection` / `evaluate_grounding` will look for them. images: the file's
    ``images`` entries when the caller has read it already (else it is read here)."""
    path = Path(path)
    if images is None:
        with open(path, encoding="utf-8") as fh:
            images = json.load(fh).get("images", [])
    names = list(dict.fromkeys(str(img.get("file_name")) for img in images))[:probe]
    resolver = image_resolver(path, image_root)
    failures = []
    for name in names:
        loaded = resolver.load(name)
        if not isinstance(loaded, ImageError):
            return
        failures.append(loaded.to_dict())
    _require_images(path, len(names), failures, resolver.description)


def _progress(items: Sequence[Any], enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="img", dynamic_ncols=True)


def evaluate_detection(
    predictor: PredictorLike,
    gold_coco_path: str | Path,
    image_root: str | Path | None = None,
    threshold: float = 0.0,
    batch_size: int = 1,
    progress: bool = False,
    category_groups: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """COCO box AP of `predictor` on a gold COCO detection file, or on the val split of a YOLO data.yaml.

    category_groups: named subsets of class names, e.g. {"base": [...], "novel": [...]}; each adds
    `ap_{name}` and `ap50_{name}` (COCOeval restricted to those categories) to the result.

    image_root: where the gold file's file_names live (default: what the run.json beside it records,
    else its folder; `glip_label.data.image_refs.image_resolver`).
    threshold: minimum score of a kept box (0 keeps everything the post-processing returns, as the
    official evaluation does). batch_size > 1 pads images together, which changes outputs slightly
    (the fusion has no padding mask for pictures); 1 reproduces the official numbers, which were produced
    with one image per GPU.
    Returns the 12 COCOeval stats by name (ap, ap50, ...), num_results, num_images and the images that
    could not be read (they count as images without predictions, and are logged). Raises
    `NothingEvaluatedError` when no image could be read.
    """
    gold_path = Path(gold_coco_path)
    gold = read_detection_gold(gold_path, image_root)
    categories = sorted(gold["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{gold_path}: no categories, nothing to prompt with")
    names = [str(c["name"]) for c in categories]
    category_ids = [c["id"] for c in categories]
    resolver = image_resolver(gold_path, image_root)
    results: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    images = gold["images"]
    batches = [images[i : i + max(1, batch_size)] for i in range(0, len(images), max(1, batch_size))]
    for batch in _progress(batches, progress, "evaluate"):
        readable = []
        for entry in batch:
            loaded = resolver.load(entry["file_name"])
            if isinstance(loaded, ImageError):
                unreadable.append(loaded.to_dict())
            else:
                readable.append((entry, loaded))
        if not readable:
            continue
        predictions = predictor.predict(
            [loaded.image for _, loaded in readable], names, threshold=threshold, batch_size=batch_size
        )
        for (entry, loaded), detections in zip(readable, predictions, strict=True):
            boxes = _rescale_to_stated_size(
                detections, (loaded.width, loaded.height), (int(entry["width"]), int(entry["height"]))
            )
            for box, score, label in zip(xyxy_to_xywh(boxes), detections.scores, detections.labels, strict=True):
                results.append(
                    {
                        "image_id": entry["id"],
                        "category_id": category_ids[int(label)],
                        "bbox": [round(float(v), BBOX_DECIMALS) for v in box],
                        "score": float(score),
                    }
                )
    _require_images(gold_path, len(images), unreadable, resolver.description)
    if unreadable:
        log.warning("%d of %d gold images unreadable (no predictions for them); first: %s: %s", len(unreadable),
                    len(images), unreadable[0]["file_name"], unreadable[0]["reason"])
    stats = evaluate_coco(gold, results)
    for group, group_names in (category_groups or {}).items():
        unknown = sorted(set(group_names) - set(names))
        if unknown:
            raise ValueError(f"category group {group!r} names classes not in {gold_path}: {unknown}")
        ids = [category_ids[names.index(name)] for name in group_names]
        group_stats = evaluate_coco(gold, results, category_ids=ids)
        stats[f"ap_{group}"], stats[f"ap50_{group}"] = group_stats["ap"], group_stats["ap50"]
    return {
        **{k: float(v) for k, v in stats.items()},
        "num_images": len(images),
        "num_unreadable_images": len(unreadable),
        "unreadable_images": unreadable[:MAX_LISTED_PROBLEMS],
    }


@dataclass
class _Phrase:
    spans: list[tuple[int, int]]
    gold_boxes: np.ndarray  # [n, 4] "+1" xyxy


def _overlaps(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def _belongs(annotation: dict[str, Any], phrase_index: int, phrase_spans: Sequence[Sequence[int]]) -> bool:
    if annotation.get("phrase_ids") is not None:
        return phrase_index in annotation["phrase_ids"]
    return _overlaps(annotation["tokens_positive"], phrase_spans)


def _phrases_of(image: dict[str, Any], annotations: list[dict[str, Any]]) -> list[_Phrase]:
    """The gold phrases of one image-caption pair and their boxes.

    With `tokens_positive_eval` (MDETR Flickr files, ours) those are the phrases; a box belongs to
    phrase p when its `phrase_ids` name p (our files) or one of its spans overlaps p's spans (MDETR
    lists on each box the spans of every phrase that refers to it). Without it, boxes with identical
    span lists form one phrase.
    """
    boxes = xywh_to_xyxy(np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4))
    phrase_spans = image.get("tokens_positive_eval")
    if phrase_spans:
        phrases = []
        for index, spans in enumerate(phrase_spans):
            members = [i for i, a in enumerate(annotations) if _belongs(a, index, spans)]
            phrases.append(_Phrase([tuple(s) for s in spans], boxes[members]))
        return phrases
    grouped: dict[tuple, list[int]] = {}
    for i, a in enumerate(annotations):
        grouped.setdefault(tuple(tuple(s) for s in a["tokens_positive"]), []).append(i)
    return [_Phrase(list(key), boxes[members]) for key, members in grouped.items()]


def _first_hit_rank(detections: Detections, label: int, gold_boxes: np.ndarray, boxes: np.ndarray) -> int | None:
    """0-based rank of the best-scored box of `label` that hits a gold box (IoU >= 0.5), else None."""
    selected = np.flatnonzero(detections.labels == label)
    if len(selected) == 0 or len(gold_boxes) == 0:
        return None
    order = selected[np.argsort(-detections.scores[selected], kind="stable")]
    ious = box_iou_plus_one(torch.from_numpy(boxes[order]), torch.from_numpy(gold_boxes))  # [n_pred, n_gold]
    hits = np.flatnonzero((ious >= GROUNDING_IOU).any(dim=1).numpy())
    return int(hits[0]) if len(hits) else None


def evaluate_grounding(
    predictor: PredictorLike,
    mdetr_path: str | Path,
    image_root: str | Path | None = None,
    ks: Sequence[int] = (1, 5, 10),
    progress: bool = False,
) -> dict[str, Any]:
    """Phrase-grounding Recall@k (MDETR any-box protocol) on an MDETR-style grounding file.

    Returns recall@k for each k, num_phrases (phrases with at least one gold box), num_captions, the
    captions that could not be scored (their phrases count as misses) and the unreadable images among
    them. Images are found like `evaluate_detection` finds them. Raises `NothingEvaluatedError` when no
    image could be read.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    gold_path = Path(mdetr_path)
    data = read_mdetr(gold_path)
    resolver = image_resolver(gold_path, image_root)
    by_image: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if not ann.get("iscrowd"):
            by_image[ann["image_id"]].append(ann)

    hits = dict.fromkeys(ks, 0)
    num_phrases = 0
    num_captions = 0
    problems: list[dict[str, str]] = []
    unreadable: list[dict[str, str]] = []
    attempted: set[str] = set()
    cached: tuple[str, Any] | None = None  # MDETR files list each image once per caption, consecutively
    for entry in _progress(data["images"], progress, "grounding"):
        phrases = [p for p in _phrases_of(entry, by_image[entry["id"]]) if len(p.gold_boxes)]
        if not phrases:
            continue
        num_captions += 1
        num_phrases += len(phrases)
        if cached is None or cached[0] != entry["file_name"]:
            cached = (entry["file_name"], resolver.load(entry["file_name"]))
            if entry["file_name"] not in attempted and isinstance(cached[1], ImageError):
                unreadable.append(cached[1].to_dict())
            attempted.add(entry["file_name"])
        loaded = cached[1]
        if isinstance(loaded, ImageError):
            problems.append({"file_name": entry["file_name"], "reason": loaded.reason})
            continue
        try:
            detections = predictor.predict(
                loaded.image, entry["caption"], spans=[p.spans for p in phrases], threshold=0.0
            )
        except ValueError as exc:  # e.g. a caption over the 256-token text limit
            problems.append({"file_name": entry["file_name"], "reason": str(exc).splitlines()[0]})
            continue
        boxes = _rescale_to_stated_size(
            detections, (loaded.width, loaded.height), (int(entry["width"]), int(entry["height"]))
        )
        for label, phrase in enumerate(phrases):
            rank = _first_hit_rank(detections, label, phrase.gold_boxes, boxes)
            for k in ks:
                hits[k] += rank is not None and rank < k
    _require_images(gold_path, len(attempted), unreadable, resolver.description)
    if problems:
        log.warning("%d captions could not be scored; their phrases count as misses", len(problems))
    recalls = {f"recall_at_{k}": (hits[k] / num_phrases if num_phrases else 0.0) for k in ks}
    return {
        **recalls,
        "num_phrases": num_phrases,
        "num_captions": num_captions,
        "num_unscored_captions": len(problems),
        "unscored_captions": problems[:MAX_LISTED_PROBLEMS],
        "num_unreadable_images": len(unreadable),
        "unreadable_images": unreadable[:MAX_LISTED_PROBLEMS],
    }


def print_metrics_table(metrics: dict[str, Any], title: str = "Evaluation", console: Any = None) -> None:
    """The scalar metrics as a two-column rich table (lists and dicts are summarised by their length)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            text = str(value)
        elif isinstance(value, float):
            text = f"{value:.4f}"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, (list, tuple, dict)):
            if not value:
                continue
            text = f"{len(value)} entries"
        else:
            text = str(value)
        table.add_row(key, text)
    (console or Console()).print(table)


__all__ = [
    "GROUNDING_IOU",
    "NothingEvaluatedError",
    "PredictorLike",
    "check_images_readable",
    "evaluate_detection",
    "evaluate_grounding",
    "print_metrics_table",
]
