"""Anchors of the official GLIP ATSS head (`anchor_generator.py::make_anchor_generator_complex`).

GLIP uses one square anchor per feature-map location and level (aspect ratio 1, one scale per
octave). Anchors matter at inference only as the reference boxes the regression deltas are applied
to, so they must be the official ones to the pixel, including the legacy "+1" centre (s - 1) / 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cell_anchor(stride: int, size: int) -> torch.Tensor:
    """The anchor [4] (x1, y1, x2, y2) at location (0, 0) of a level with this stride and anchor size.

    Mirrors the official float64 numpy arithmetic (`_generate_anchors` with ratio 1, scale size/stride)
    before the cast to float32; for size = 8 * stride this is [-3.5s, -3.5s, 4.5s - 1, 4.5s - 1].
    """
    base_width = float(stride)  # reference window (0, 0, s - 1, s - 1)
    centre = 0.0 + 0.5 * (base_width - 1)
    # _ratio_enum with ratio 1: round(sqrt(s * s)) == s, then _scale_enum multiplies by size / stride.
    width = round((base_width * base_width) ** 0.5) * (float(size) / float(stride))
    half = 0.5 * (width - 1)
    return torch.tensor([centre - half, centre - half, centre + half, centre + half], dtype=torch.float64).float()


def grid_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Per level, anchors [H_l * W_l, 4] over the padded feature map, flattened y-major (index y * W + x).

    feature_sizes: (H_l, W_l) of each level's feature map (of the padded batch, as in the official code);
    strides/sizes: per level stride and anchor size (GLIP: 8..128 and 64..1024).
    The order equals the flattening of the head outputs, so anchor i pairs with location i.
    """
    if not (len(feature_sizes) == len(strides) == len(sizes)):
        raise ValueError(
            f"need one stride and one anchor size per level: {len(feature_sizes)} levels, "
            f"{len(strides)} strides, {len(sizes)} sizes"
        )
    anchors = []
    for (height, width), stride, size in zip(feature_sizes, strides, sizes, strict=True):
        cell = cell_anchor(stride, size).to(device=device, dtype=torch.float32)
        shifts_x = torch.arange(0, int(width) * stride, step=stride, dtype=torch.float32, device=device)
        shifts_y = torch.arange(0, int(height) * stride, step=stride, dtype=torch.float32, device=device)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # [H, W] each
        shift_x = shift_x.reshape(-1)
        shift_y = shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [H*W, 4]
        anchors.append((shifts + cell).to(dtype))
    return anchors
