"""Box encoding/decoding of the official GLIP ATSS head (`vldyhead.py::BoxCoder`).

GLIP inherits maskrcnn-benchmark's legacy pixel convention: a box [x1, x2] covers x2 - x1 + 1 pixels
("TO_REMOVE = 1"). Decoded boxes must follow it exactly, otherwise every box is off by half a pixel
against the official outputs, and the regression targets used in training would not match what the
released checkpoints learned. The arithmetic below keeps the official operation order (divide by the
weights, not multiply by their inverse; `0.5 * (w - 1)`), so fp32 results agree bit for bit.
"""

from __future__ import annotations

import math

import torch

TO_REMOVE = 1.0  # legacy "+1" width: a box from x1 to x2 covers x2 - x1 + 1 pixels


def size_and_centre(boxes_xyxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(widths, heights, centre x, centre y) of [..., 4] xyxy boxes, each [...], in the official operation order:
    sizes with the legacy +1, centres as (x2 + x1) / 2."""
    widths = boxes_xyxy[..., 2] - boxes_xyxy[..., 0] + TO_REMOVE
    heights = boxes_xyxy[..., 3] - boxes_xyxy[..., 1] + TO_REMOVE
    ctr_x = (boxes_xyxy[..., 2] + boxes_xyxy[..., 0]) / 2
    ctr_y = (boxes_xyxy[..., 3] + boxes_xyxy[..., 1]) / 2
    return widths, heights, ctr_x, ctr_y


class BoxCoder:
    """Anchor-relative (dx, dy, dw, dh) deltas <-> xyxy boxes, with the official weights and clamp.

    Works on any leading shape [..., 4]; `anchors` must broadcast against the boxes/deltas.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        # exp(dw) is clamped so that a wild regression output cannot overflow to inf widths.
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Regression targets for `gt_boxes` [N,4] xyxy w.r.t. `anchors` [N,4] xyxy -> [N,4] deltas."""
        wx, wy, ww, wh = self.weights
        ex_widths, ex_heights, ex_ctr_x, ex_ctr_y = size_and_centre(anchors.to(gt_boxes.dtype))
        gt_widths, gt_heights, gt_ctr_x, gt_ctr_y = size_and_centre(gt_boxes)

        targets_dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        targets_dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        targets_dw = ww * torch.log(gt_widths / ex_widths)
        targets_dh = wh * torch.log(gt_heights / ex_heights)
        return torch.stack((targets_dx, targets_dy, targets_dw, targets_dh), dim=-1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes [N,4] xyxy (legacy +1 convention) from `deltas` [N,4] applied to `anchors` [N,4]."""
        wx, wy, ww, wh = self.weights
        widths, heights, ctr_x, ctr_y = size_and_centre(anchors.to(deltas.dtype))

        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights

        return torch.stack(
            (
                pred_ctr_x - 0.5 * (pred_w - 1),
                pred_ctr_y - 0.5 * (pred_h - 1),
                pred_ctr_x + 0.5 * (pred_w - 1),
                pred_ctr_y + 0.5 * (pred_h - 1),
            ),
            dim=-1,
        )
