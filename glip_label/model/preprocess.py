"""Image preprocessing of the official GLIP evaluation path (`data/transforms`, `structures/image_list.py`).

The network's outputs depend on the exact input size (fusion attends over every padded position), so
the resize arithmetic has to reproduce the official `Resize.get_size` including Python's `int()`
truncation and half-to-even `round()`, and the pixel values have to follow the official op order:
uint8 / 255 -> RGB to BGR -> x 255 -> (x - mean) / std. Algebraically equal forms (normalising in
[0, 1] with mean / 255 and std / 255, or multiplying by 1 / std) differ in the last float bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def get_resized_size(width: int, height: int, min_size: int = 800, max_size: int | None = 1333) -> tuple[int, int]:
    """(new_w, new_h) of the official resize: short side `min_size`, long side capped at `max_size`.

    max_size None or <= 0 disables the cap (the official code only checks `is not None`; 0/negative
    would be meaningless there, so they mean "no cap" here).
    """
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    size = min_size
    if max_size is not None and max_size > 0:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))

    if (w <= h and w == size) or (h <= w and h == size):
        return w, h
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return ow, oh


def image_to_tensor(
    image: Image.Image,
    min_size: int = 800,
    max_size: int | None = 1333,
    pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
    pixel_std: Sequence[float] = (57.375, 57.120, 58.395),
) -> torch.Tensor:
    """An RGB PIL image -> the normalised network input [3, h, w] (BGR, x255 scale), unpadded.

    Resizing goes through PIL bilinear (antialiased when shrinking), which is what
    torchvision's `resize` does for PIL input; it is skipped when the size does not change.
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image (convert with .convert('RGB') first), got mode {image.mode!r}")
    new_w, new_h = get_resized_size(image.width, image.height, min_size, max_size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)

    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # [h, w, 3] uint8 RGB
    rgb = pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # [3, h, w] in [0, 1]
    bgr255 = rgb[[2, 1, 0]] * 255
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1)
    return bgr255.sub_(mean).div_(std)


def batch_images(
    tensors: Sequence[torch.Tensor], size_divisibility: int = 32
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad images [3, h_i, w_i] bottom/right into one batch [B, 3, H, W]; also their unpadded (h, w).

    H, W are the batch maxima rounded up to `size_divisibility` (<= 0: no rounding). Zeros are added
    after normalisation, as in the official `to_image_list`.
    """
    if len(tensors) == 0:
        raise ValueError("batch_images needs at least one image")
    channels = max(int(t.shape[0]) for t in tensors)
    height = max(int(t.shape[1]) for t in tensors)
    width = max(int(t.shape[2]) for t in tensors)
    if size_divisibility > 0:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    batch = tensors[0].new_zeros((len(tensors), channels, height, width))
    image_sizes = []
    for padded, image in zip(batch, tensors, strict=True):
        padded[: image.shape[0], : image.shape[1], : image.shape[2]].copy_(image)
        image_sizes.append((int(image.shape[1]), int(image.shape[2])))
    return batch, image_sizes
