"""Plain result records passed from the model layer to writers.

Writers never see tensors: boxes are float64 numpy arrays in ORIGINAL image pixels, xyxy, in the
official "+1" convention of GLIP (a box covering pixels x1..x2 has width x2 - x1 + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """Detections of one image for one prompt.

    boxes:   [N, 4] float64, xyxy in original image pixels
    scores:  [N] float64 in (0, 1]
    labels:  [N] int64, 0-based index into `phrases`
    phrases: the prompt's phrases (class names or caption phrases), in label order
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    phrases: list[str]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError("boxes, scores and labels must have the same length")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, phrases: list[str]) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), list(phrases))

    def select(self, keep: np.ndarray) -> Detections:
        """A subset (boolean mask or index array), keeping the phrase list."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.phrases)

    def sorted_by_score(self) -> Detections:
        return self.select(np.argsort(-self.scores, kind="stable"))

    @property
    def label_names(self) -> list[str]:
        return [self.phrases[i] for i in self.labels]


@dataclass
class ImageRecord:
    """One labeled image as writers see it. `file_name` is relative to the run's image root."""

    file_name: str
    width: int
    height: int
    detections: Detections
    extra: dict = field(default_factory=dict)


def clip_to_image(detections: Detections, width: int, height: int) -> Detections:
    """Clip boxes to [0, w-1] x [0, h-1] and drop the degenerate ones (x2 - x1 < 1 or y2 - y1 < 1).

    The official resize back to original pixels can leave boxes up to a pixel past the image, and a box
    squeezed against an edge can collapse; dataset files need boxes inside the image that loaders keep
    (mmdet drops boxes under 1 px).
    """
    boxes = detections.boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    return Detections(boxes[keep], detections.scores[keep], detections.labels[keep], detections.phrases)
