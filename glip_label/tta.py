"""Test-time augmentation for labeling: several input scales and a horizontal flip, merged per class.

As the official GLIP test code offers it (microsoft/GLIP maskrcnn_benchmark/engine/inference.py: with
TEST.USE_MULTISCALE the batch goes through `im_detect_bbox_aug`, which runs the model at every
TEST.SCALES size, and flipped too with TEST.FLIP, maps every box back to the original image, and merges
them per class with NMS at TEST.TH in `merge_result_from_multi_scales`). Here the scales are factors of
the model's own test size (so one setting suits glip-tiny at 160 px and glip-l at 800 px), and the merge
is class-wise NMS (the official one) or weighted box fusion (Solovyev et al. 2021), which averages the
boxes that several views agree on instead of keeping one of them.

The predictor is driven through its public interface only: `predict` / `predict_grounding` on mirrored
PIL images, with the predictor's test size swapped for the duration of a view (`preprocess` reads it
from `predictor.config`). Every view takes the whole batch, so a batch stays a batch; nothing is random.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from glip_label.model.postprocess import ml_nms
from glip_label.records import Detections
from glip_label.train.assign import box_iou_plus_one

MERGES = ("nms", "wbf")
# Captions that say where things are change meaning when mirrored ("the circle left of the star").
_SIDED = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@dataclass(frozen=True)
class TTAOptions:
    """scales: factors of the model's test size (1.0 = the size it normally runs at); hflip adds a
    mirrored view at every scale; merge: "nms" or "wbf"; iou: the merge's IoU threshold (0.6 is the
    official TEST.TH); max_detections: kept per image after the merge (official: 100)."""

    scales: tuple[float, ...] = (0.8, 1.0, 1.2)
    hflip: bool = True
    merge: str = "nms"
    iou: float = 0.6
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ValueError(f"--tta-merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if not self.scales or any(not 0.1 <= s <= 4.0 for s in self.scales):
            raise ValueError(f"--tta-scales must be factors in [0.1, 4], got {list(self.scales)}")
        if not 0.0 < self.iou <= 1.0:
            raise ValueError(f"TTA merge IoU must be in (0, 1], got {self.iou}")

    @property
    def views(self) -> list[tuple[float, bool]]:
        return [(s, f) for s in self.scales for f in ((False, True) if self.hflip else (False,))]

    def to_dict(self) -> dict:
        return {"scales": list(self.scales), "hflip": self.hflip, "merge": self.merge, "iou": self.iou,
                "max_detections": self.max_detections}


def parse_scales(text: str) -> tuple[float, ...]:
    """"0.8,1,1.2" -> (0.8, 1.0, 1.2); a clear error for anything else."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--tta-scales must be comma-separated numbers, got {text!r}") from None


@contextmanager
def at_test_scale(predictor, scale: float) -> Iterator[None]:
    """The predictor resizes inputs `scale` times its configured test size while the block runs."""
    config = predictor.config
    if scale != 1.0:
        divisor = max(1, config.size_divisibility)
        predictor.config = config.replace(min_size_test=max(divisor, round(config.min_size_test * scale)),
                                          max_size_test=max(divisor, round(config.max_size_test * scale)))
    try:
        yield
    finally:
        predictor.config = config


def unflip(detections: Detections, width: int) -> Detections:
    """Boxes found on the mirrored image, back on the original one ("+1" boxes: x -> width - 1 - x, as
    the official BoxList.transpose(FLIP_LEFT_RIGHT) does with TO_REMOVE = 1)."""
    boxes = detections.boxes.copy()
    boxes[:, 0] = width - 1 - detections.boxes[:, 2]
    boxes[:, 2] = width - 1 - detections.boxes[:, 0]
    return Detections(boxes, detections.scores, detections.labels, detections.phrases)


def merge_nms(views: Sequence[Detections], iou: float, max_detections: int) -> Detections:
    """All views' boxes, class-wise NMS (the official merge), best first, capped."""
    pooled = _concat(views)
    if len(pooled):
        kept = ml_nms(torch.from_numpy(pooled.boxes), torch.from_numpy(pooled.scores),
                      torch.from_numpy(pooled.labels), iou)
        pooled = pooled.select(kept.numpy())
    return _cap(pooled, max_detections)


def merge_wbf(views: Sequence[Detections], iou: float, max_detections: int) -> Detections:
    """Weighted box fusion per class: boxes join the first cluster (in score order) whose fused box they
    overlap by more than `iou`; a cluster's box is the score-weighted mean of its members and its score
    the mean member score times min(members, views) / views, so a box only one view found is damped."""
    pooled = _concat(views).sorted_by_score()
    n_views = max(1, len(views))
    boxes, scores, labels = [], [], []
    for label in np.unique(pooled.labels):
        members = pooled.select(pooled.labels == label)
        clusters: list[list[int]] = []
        fused: list[np.ndarray] = []
        for i in range(len(members)):
            if fused:
                overlaps = box_iou_plus_one(torch.from_numpy(members.boxes[i : i + 1]),
                                            torch.from_numpy(np.stack(fused)))[0].numpy()
                best = int(np.argmax(overlaps))
                if overlaps[best] > iou:
                    clusters[best].append(i)
                    weights = members.scores[clusters[best]]
                    fused[best] = (members.boxes[clusters[best]] * weights[:, None]).sum(0) / weights.sum()
                    continue
            clusters.append([i])
            fused.append(members.boxes[i].copy())
        for members_of, box in zip(clusters, fused, strict=True):
            member_scores = members.scores[members_of]
            boxes.append(box)
            scores.append(member_scores.mean() * min(len(members_of), n_views) / n_views)
            labels.append(label)
    phrases = views[0].phrases if views else []
    merged = Detections(np.asarray(boxes).reshape(-1, 4), np.asarray(scores), np.asarray(labels, dtype=np.int64),
                        phrases)
    return _cap(merged, max_detections)


def _concat(views: Sequence[Detections]) -> Detections:
    if not views:
        raise ValueError("nothing to merge")
    return Detections(np.concatenate([v.boxes for v in views]), np.concatenate([v.scores for v in views]),
                      np.concatenate([v.labels for v in views]), views[0].phrases)


def _cap(detections: Detections, max_detections: int) -> Detections:
    ordered = detections.sorted_by_score()
    return ordered.select(np.arange(min(len(ordered), max_detections)))


def merge_views(views: Sequence[Detections], options: TTAOptions) -> Detections:
    merge = merge_nms if options.merge == "nms" else merge_wbf
    return merge(views, options.iou, options.max_detections)


def predict_tta(predictor, images: Sequence[Image.Image], prompt, options: TTAOptions, threshold: float = 0.0,
                batch_size: int = 1) -> list[Detections]:
    """`predictor.predict` over every view of the batch, merged per image; then the score threshold."""
    images = list(images)
    mirrored = [ImageOps.mirror(im) for im in images]
    per_image: list[list[Detections]] = [[] for _ in images]
    for scale, flip in options.views:
        with at_test_scale(predictor, scale):
            found = predictor.predict(mirrored if flip else images, prompt, threshold=0.0, batch_size=batch_size)
        for i, det in enumerate(found):
            per_image[i].append(unflip(det, images[i].size[0]) if flip else det)
    merged = [merge_views(views, options) for views in per_image]
    return [d.select(d.scores >= threshold) for d in merged]


def predict_grounding_tta(predictor, images: Sequence[Image.Image], prompts: Sequence, options: TTAOptions,
                          threshold: float = 0.0) -> list[Detections]:
    """`predictor.predict_grounding` over every view, merged per image by phrase. A caption that says
    "left" or "right" is not mirrored (the flipped picture would contradict it)."""
    images = list(images)
    per_image: list[list[Detections]] = [[] for _ in images]
    for scale, flip in options.views:
        index = [i for i, p in enumerate(prompts) if not (flip and _SIDED.search(p.text))]
        if not index:
            continue
        view_images = [ImageOps.mirror(images[i]) if flip else images[i] for i in index]
        with at_test_scale(predictor, scale):
            found = predictor.predict_grounding(view_images, [prompts[i] for i in index], 0.0)
        for i, det in zip(index, found, strict=True):
            per_image[i].append(unflip(det, images[i].size[0]) if flip else det)
    merged = [merge_views(views, options) for views in per_image]
    return [d.select(d.scores >= threshold) for d in merged]


__all__ = ["MERGES", "TTAOptions", "merge_nms", "merge_views", "merge_wbf", "parse_scales", "predict_grounding_tta",
           "predict_tta", "unflip", "at_test_scale"]
