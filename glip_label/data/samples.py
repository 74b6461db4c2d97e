"""What one training image is once read: `GroundingSample`, the samples of one file (`GroundingSource`),
and how a sample's image is decoded.

Every image becomes a `GroundingSample` with "+1" xyxy boxes in original pixels. Detection samples have
no caption: a prompt is drawn for them each time they are used (`glip_label.data.detection_prompt`).
Grounding samples keep their caption and the character spans of each box's phrase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glip_label.data.captions import ImageRef, load_caption_image
from glip_label.data.images import ImageError, LoadedImage, load_image

Span = tuple[int, int]


@dataclass
class GroundingSample:
    """One training image (for MDETR files: one image-caption pair).

    boxes:      [G, 4] float64 "+1" xyxy in original pixels, clipped to the image
    spans:      per box, the [start, end) character spans of its phrase in `caption` (empty lists for
                detection samples, whose caption is drawn later)
    categories: per box, the class name (detection samples only)
    scores:     per box, the teacher's confidence; NaN for gold boxes; None when no box has a score
    image_ref:  where the image is when it is not the file ``image_path`` (a tar member, a dataset row;
                see `glip_label.data.image_refs`); ``image_path`` then only names it
    """

    image_path: Path
    width: int
    height: int
    caption: str | None
    boxes: np.ndarray
    spans: list[list[Span]]
    categories: list[str] | None
    scores: np.ndarray | None
    source: str
    image_ref: ImageRef | None = None

    @property
    def is_detection(self) -> bool:
        return self.caption is None


def load_sample_image(sample: GroundingSample) -> LoadedImage | ImageError:
    """The sample's image, decoded like every image glip-label reads; never raises for a bad image."""
    if sample.image_ref is not None:
        return load_caption_image(sample.image_ref)
    return load_image(sample.image_path.parent, sample.image_path.name)


@dataclass
class GroundingSource:
    """The samples of one data file, with what mixing and prompting need.

    categories: all class names of a detection file (the pool negatives are drawn from); None for
                grounding files
    weight:     copies per epoch (the official FLICKR_COPY, MIXED_COPY, ...); fractions draw a random
                subset of that size each epoch
    """

    name: str
    format: str
    path: Path
    samples: list[GroundingSample]
    categories: list[str] | None = None
    weight: float = 1.0
    stats: dict[str, int] = field(default_factory=dict)
