"""What every training-file reader shares: the file being read, and turning one image's boxes into a sample.

A reader parses its format into per-image boxes, spans, categories and scores; `SourceFile.sample`
then applies the box filter (`glip_label.data.pseudo_filter.BoxFilter`), counts what was dropped and
builds the `GroundingSample`, so every format is filtered the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glip_label.data.captions import ImageRef
from glip_label.data.image_refs import ImageResolver
from glip_label.data.pseudo_filter import BoxFilter, kept_phrases_caption
from glip_label.data.samples import GroundingSample, Span


def as_boxes(values: Any) -> np.ndarray:
    """Any list of 4-number boxes as a [G, 4] float64 array (G may be 0)."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 4)


def _score_array(scores: list[float | None]) -> np.ndarray | None:
    """Per-box scores with NaN for gold boxes; None when no box of the sample has a score."""
    if all(s is None for s in scores):
        return None
    return np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)


@dataclass
class SourceFile:
    """One training file being read, with what every reader needs.

    data:      the parsed JSON of a COCO/MDETR file; None for ODVG, which is read line by line
    name:      the source name samples carry (the file name unless given)
    label_map: ODVG detection label map (label id -> class name) for records without "category"
    stats:     counters of what was read and dropped, logged and kept on the `GroundingSource`
    """

    path: Path
    name: str
    images: ImageResolver
    box_filter: BoxFilter
    data: Any = None
    label_map: dict[str, str] | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def locate(self, file_name: str) -> tuple[Path, ImageRef | None]:
        """(path naming the image, reference when the image is not that file)."""
        if not isinstance(file_name, str) or not file_name:
            raise ValueError(f"image file name must be a non-empty string, got {file_name!r}")
        return self.images.path(file_name), None if self.images.root is not None else self.images.ref(file_name)

    def sample(
        self,
        image: tuple[Path, ImageRef | None],
        width: int,
        height: int,
        caption: str | None,
        boxes: np.ndarray,
        spans: list[list[Span]],
        categories: list[str] | None,
        scores: list[float | None],
        keep_empty: bool,
    ) -> GroundingSample | None:
        """The filtered sample of one image, or None when it lost all its boxes and keep_empty is False.

        image: `locate`'s answer; boxes [G, 4] "+1" xyxy in original pixels; spans (grounding) or
        categories (detection) name each box's phrase; scores: None for gold boxes.
        """
        box_filter = self.box_filter
        score_array = _score_array(scores)
        keys = [tuple(map(tuple, s)) for s in spans] if categories is None else list(categories)
        kept_boxes, keep = box_filter.keep(boxes, score_array, keys, width, height)
        self.count("boxes_read", len(keep))
        self.count("boxes_dropped", int((~keep).sum()))
        if len(kept_boxes) == 0 and not keep_empty:
            self.count("images_dropped_no_boxes")
            return None
        index = np.flatnonzero(keep)
        kept_spans = [spans[i] for i in index]
        margin_on_caption = caption is not None and box_filter.min_margin is not None and score_array is not None
        if margin_on_caption and {keys[i] for i in np.flatnonzero(~keep)} - {keys[i] for i in index}:  # lost a phrase
            caption, kept_spans = kept_phrases_caption(caption, kept_spans)
            self.count("captions_cut_to_kept_phrases")
        return GroundingSample(
            image_path=image[0],
            image_ref=image[1],
            width=width,
            height=height,
            caption=caption,
            boxes=kept_boxes,
            spans=kept_spans,
            categories=None if categories is None else [categories[i] for i in index],
            scores=None if score_array is None else score_array[keep],
            source=self.name,
        )


Reader = Callable[[SourceFile], tuple[list[GroundingSample], list[str] | None]]
"""A format's reader: the file's samples, and its class names (the negatives' pool) or None for grounding."""
