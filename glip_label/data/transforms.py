"""Image + box transforms for training and evaluating GLIP students.

The official pipeline is `maskrcnn_benchmark/data/transforms/build.py`, `build_transforms` (Resize,
RandomHorizontalFlip, ToTensor, Normalize from `maskrcnn_benchmark/data/transforms/transforms.py`).
Training follows the official pretraining recipe (AUGMENT.MULT_MIN_SIZE_TRAIN of
`configs/pretrain/glip_Swin_T_O365.yaml`, AUGMENT.FLIP_PROB_TRAIN of
`maskrcnn_benchmark/config/defaults.py`): the short side is drawn from (480, 560, 640, 720, 800) (scaled
proportionally for presets whose test size is not 800, e.g. glip-tiny's 320 gives 192..320), the long
side is capped, and the image is flipped horizontally with probability 0.5 — except when the caption
talks about left or right, because a flipped "man on the left" would teach the model the wrong side.
Evaluation is exactly the inference preprocessing of `glip_label.model.preprocess` (same resize rule,
PIL bilinear, BGR x255 normalisation).

Box convention. Boxes stay in GLIP's legacy "+1" xyxy convention (a box covering pixel columns x1..x2
is x2 - x1 + 1 wide) before and after every transform, and the arithmetic is the official one
(`structures/bounding_box.py`):
- resize: every coordinate is multiplied by the axis ratio new/old, with no ±1 (BoxList.resize). The
  predictor maps boxes back with the same plain division, so train targets and inference round-trip.
  torchvision's `resize` on XYXY BoundingBoxes is exactly this multiplication, so the "+1" numbers
  are handed to it as they are.
- horizontal flip: x1' = W - x2 - 1, x2' = W - x1 - 1 (BoxList.transpose with TO_REMOVE = 1).
  torchvision's XYXY treats x2 as exclusive (x1' = W - x2), so x2 is converted to exclusive (+1)
  before `horizontal_flip` and back (-1) after: W - (x2 + 1) = W - x2 - 1.
- clipping: to [0, w - 1] x [0, h - 1] of the resized image, as the official clip_to_image; boxes
  whose x2 < x1 or y2 < y1 after clipping are dropped (the caller gets the kept indices).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import tv_tensors

from glip_label.config import GLIPConfig
from glip_label.model.preprocess import get_resized_size, image_to_tensor

# INPUT.MIN_SIZE_TRAIN of the official pretraining yamls, for a test size of 800.
OFFICIAL_TRAIN_SCALES = (480, 560, 640, 720, 800)
OFFICIAL_MIN_SIZE_TEST = 800
# "left", "right", "leftmost", "right-hand", ... but not "bright", "upright" or "copyright".
_LEFT_RIGHT = re.compile(r"\b(?:left|right)", re.IGNORECASE)


def mentions_left_or_right(caption: str | None) -> bool:
    """Whether flipping the image would contradict the caption (then training does not flip)."""
    return bool(caption) and _LEFT_RIGHT.search(caption) is not None


def train_scales_for(config: GLIPConfig) -> tuple[int, ...]:
    """The official multi-scale short sides, scaled by min_size_test / 800 (glip-tiny: 192..320)."""
    ratio = config.min_size_test / OFFICIAL_MIN_SIZE_TEST
    return tuple(int(round(s * ratio)) for s in OFFICIAL_TRAIN_SCALES)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(height, width) of the PIL image among a v2 transform's inputs."""
    for item in flat_inputs:
        if isinstance(item, Image.Image):
            return item.height, item.width
    raise TypeError("these transforms expect a PIL image among their inputs")


class ResizeShortSide(v2.Transform):
    """The official `Resize.get_size` rule for one short side: PIL bilinear for the image, plain ratio for boxes.

    Not torchvision's Resize: its size arithmetic rounds differently from the official int()/round(),
    and a one-pixel difference changes the padded size and so every output of the fusion layers.
    """

    def __init__(self, min_size: int, max_size: int | None) -> None:
        super().__init__()
        self.min_size = int(min_size)
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        new_w, new_h = get_resized_size(width, height, self.min_size, self.max_size)
        return {"size": (new_h, new_w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        new_h, new_w = params["size"]
        if isinstance(inpt, Image.Image):
            if inpt.size == (new_w, new_h):
                return inpt
            return inpt.resize((new_w, new_h), Image.Resampling.BILINEAR)
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return TF.resize(inpt, size=[new_h, new_w])  # x * new_w / old_w, y * new_h / old_h
        return inpt


class HorizontalFlipPlusOne(v2.Transform):
    """Horizontal flip with the official "+1" box arithmetic (x' = W - x - 1); see the module docstring."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            return inpt.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            exclusive = inpt.clone()
            exclusive[:, 2] += 1  # inclusive x2 -> torchvision's exclusive x2
            flipped = TF.horizontal_flip(exclusive)
            flipped[:, 2] -= 1  # back to inclusive: x2' = W - x1 - 1
            return flipped
        return inpt


class ToGLIPTensor(v2.Transform):
    """PIL RGB -> the normalised network input [3, h, w] (BGR, x255, mean/std in the official op order)."""

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            # min_size = the current short side and no cap: image_to_tensor does not resize again and
            # only normalises, so training and inference share one normalisation routine.
            return image_to_tensor(inpt, min(inpt.size), None, self.pixel_mean, self.pixel_std)
        return inpt


@dataclass
class TransformedSample:
    """Output of a GLIP transform.

    image:         [3, h, w] float32 normalised, unpadded
    boxes:         [K, 4] float32 "+1" xyxy in resized-image pixels (the boxes that survived clipping)
    keep:          [K] indices of the input boxes that `boxes` are
    image_size:    (h, w) after resizing
    original_size: (h, w) before
    flipped:       whether the image was mirrored
    """

    image: torch.Tensor
    boxes: torch.Tensor
    keep: np.ndarray
    image_size: tuple[int, int]
    original_size: tuple[int, int]
    flipped: bool


def _clip_plus_one(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, np.ndarray]:
    """Clip to [0, w-1] x [0, h-1] and drop boxes turned inside out (official clip_to_image)."""
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=height - 1)
    valid = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    keep = torch.nonzero(valid).flatten().numpy()
    return boxes[valid], keep


class GLIPTransform:
    """Resize (one short side drawn per call), optional flip, normalisation — for one image and its boxes.

    Randomness comes only from the `rng` given to each call, so an item is a pure function of its
    seed: resumed, sharded and multi-worker runs see the same augmentations as an uninterrupted one.
    """

    def __init__(
        self,
        scales: Sequence[int],
        max_size: int | None,
        flip_prob: float,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        if not scales:
            raise ValueError("at least one short-side scale is needed")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.scales = tuple(int(s) for s in scales)
        self.max_size = max_size
        self.flip_prob = float(flip_prob)
        self.to_tensor = ToGLIPTensor(pixel_mean, pixel_std)

    def __call__(
        self,
        image: Image.Image,
        boxes: np.ndarray | torch.Tensor,
        caption: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> TransformedSample:
        """image: RGB PIL; boxes: [G, 4] "+1" xyxy in original pixels; caption: the prompt (flip veto)."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
        if rng is None:
            rng = np.random.default_rng(0)
        min_size = self.scales[int(rng.integers(len(self.scales)))] if len(self.scales) > 1 else self.scales[0]
        # Draw the flip coin even when vetoed, so the caption does not shift later draws of this rng.
        flip = bool(rng.random() < self.flip_prob) and not mentions_left_or_right(caption)

        box_tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))  # [G, 4]
        original_size = (image.height, image.width)
        bounding_boxes = tv_tensors.BoundingBoxes(box_tensor, format="XYXY", canvas_size=original_size)
        steps: list[v2.Transform] = [ResizeShortSide(min_size, self.max_size)]
        if flip:
            steps.append(HorizontalFlipPlusOne())
        steps.append(self.to_tensor)
        tensor, out_boxes = v2.Compose(steps)(image, bounding_boxes)
        height, width = int(tensor.shape[1]), int(tensor.shape[2])
        clipped, keep = _clip_plus_one(out_boxes.as_subclass(torch.Tensor), height, width)
        return TransformedSample(tensor, clipped.float(), keep, (height, width), original_size, flip)


def build_transform(
    config: GLIPConfig,
    train: bool,
    scales: Sequence[int] | None = None,
    max_size: int | None = None,
    flip_prob: float = 0.5,
) -> GLIPTransform:
    """The training transform (multi-scale + flip) or the evaluation one (= inference preprocessing).

    scales: training short sides (default `train_scales_for(config)`); max_size: long-side cap
    (default config.max_size_test, i.e. 1333 for GLIP-T/L as in the official training yamls).
    """
    cap = config.max_size_test if max_size is None else max_size
    if not train:
        return GLIPTransform((config.min_size_test,), config.max_size_test, 0.0, config.pixel_mean, config.pixel_std)
    return GLIPTransform(scales or train_scales_for(config), cap, flip_prob, config.pixel_mean, config.pixel_std)


__all__ = [
    "OFFICIAL_TRAIN_SCALES",
    "GLIPTransform",
    "HorizontalFlipPlusOne",
    "ResizeShortSide",
    "ToGLIPTensor",
    "TransformedSample",
    "build_transform",
    "mentions_left_or_right",
    "train_scales_for",
]
