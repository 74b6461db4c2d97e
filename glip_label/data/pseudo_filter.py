"""Which boxes of a training file are trained on: the score, size and confident-grounding filter.

Pseudo labels are filtered when they are read, not when they are written, as GLIP's own self-training
loader does (`maskrcnn_benchmark/data/datasets/pseudo_data.py`, which applies CAPTION_CONF at load
time): a box that has a ``score`` is kept only if score >= min_score, so one labelling pass serves
training runs with different thresholds. Gold boxes (no score) are always kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from glip_label.data.samples import Span


@dataclass(frozen=True)
class BoxFilter:
    """Which boxes of a training file are trained on.

    min_score: boxes with a score (pseudo labels) below it are dropped; gold boxes have none.
    min_box_size: boxes whose "+1" width or height is below it (after clipping) are dropped.
    min_margin: None keeps every scored box that passes min_score. A number keeps, for each phrase (or
      category) of an image, only its best-scoring box, and only when (a) it beats the phrase's best box
      on another object (IoU < 0.3) by at least min_margin and (b) no other phrase scores higher on the
      same object (IoU >= 0.7). A teacher that spreads a phrase over several objects, or that gives an
      object to two phrases, is guessing; dropping such groundings trades pseudo boxes for precision,
      which is what a student learning a word it has never seen from the teacher needs most.
      It also drops the extra boxes of plural phrases ("two dogs"), so it suits object-level captions.
      A caption whose phrases lost all their boxes is cut to the kept phrases (`kept_phrases_caption`).
    """

    min_score: float = 0.5
    min_box_size: float = 1.0
    min_margin: float | None = None

    def keep(self, boxes: np.ndarray, scores: np.ndarray | None, keys: Sequence[Any], width: int,
             height: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip to the image ("+1": [0, w-1]) and select. Returns (clipped boxes [G, 4], keep mask [G_in]).

        keys: one hashable per box naming its phrase (spans) or category, for min_margin.
        Size is the "+1" width/height (COCO's w = x2 - x1 + 1), so a one-pixel box has size 1.
        """
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1)
        keep = np.isfinite(boxes).all(axis=1) & (sizes >= self.min_box_size)
        if scores is not None:
            keep &= np.isnan(scores) | (scores >= self.min_score)
            if self.min_margin is not None:
                keep &= np.isnan(scores) | confident_groundings(boxes, scores, keys, self.min_margin)
        return boxes[keep], keep


def confident_groundings(boxes: np.ndarray, scores: np.ndarray, keys: Sequence[Any], min_margin: float,
                         other_object_iou: float = 0.3, same_object_iou: float = 0.7) -> np.ndarray:
    """Mask of the boxes that `BoxFilter.min_margin` keeps (see there); boxes without a score are never kept.

    boxes [G, 4] xyxy, scores [G] (NaN for unscored), keys: G hashables (the phrase of each box).
    """
    keep = np.zeros(len(boxes), dtype=bool)
    scored = np.flatnonzero(~np.isnan(scores))
    if len(scored) == 0:
        return keep
    iou = box_iou(torch.from_numpy(boxes[scored]), torch.from_numpy(boxes[scored])).numpy()
    local_keys = [keys[i] for i in scored]
    local_scores = scores[scored]
    for key in dict.fromkeys(local_keys):
        mine = np.array([k == key for k in local_keys])
        best = int(np.flatnonzero(mine)[np.argmax(local_scores[mine])])
        elsewhere = mine & (iou[best] < other_object_iou)
        runner_up = local_scores[elsewhere].max() if elsewhere.any() else 0.0
        rivals = ~mine & (iou[best] >= same_object_iou)
        rival = local_scores[rivals].max() if rivals.any() else -np.inf
        if local_scores[best] - runner_up >= min_margin and local_scores[best] > rival:
            keep[scored[best]] = True
    return keep


def kept_phrases_caption(caption: str, box_spans: list[list[Span]]) -> tuple[str, list[list[Span]]]:
    """A caption of only the given phrases ("a red star. a ring"), and each box's span in it.

    Why: a phrase whose pseudo boxes were all dropped would stay in the caption with no box, and GLIP's
    token loss would then teach that nothing in the image is "a blue circle" -- including the blue
    circle the teacher was merely unsure about. Cutting the caption to the kept phrases (the way a
    detection prompt lists only the classes it has labels or negatives for) avoids these false negatives.
    """
    phrases = sorted({tuple(map(tuple, s)) for s in box_spans}, key=lambda spans: spans[0] if spans else (0, 0))
    text, where = "", {}
    for spans in phrases:
        if text:
            text += ". "
        phrase = " ".join(caption[start:end] for start, end in spans)
        where[spans] = [(len(text), len(text) + len(phrase))]
        text += phrase
    return text, [list(where[tuple(map(tuple, s))]) for s in box_spans]
