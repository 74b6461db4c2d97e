"""ATSS anchor assignment and the per-anchor training targets of GLIP.

Mirrors the official `ATSSLossComputation.prepare_targets` / `compute_centerness_targets`
(`maskrcnn_benchmark/modeling/rpn/loss.py`) for one image, so that a student trained here sees exactly
the positives, token targets and regression targets the official trainer would produce. The legacy
"+1" box convention (widths x2 - x1 + 1) is used for the IoU on purpose: the anchors and the box
coder use it too, and a "+0" IoU changes which anchors pass the adaptive threshold on small boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

# Position of the official "[NoObj]" one-hot for unmatched anchors: the last of the 256 text slots.
NO_OBJECT_TOKEN_INDEX = 255
# An anchor centre must lie this far (in pixels) inside its GT on all four sides to be a positive.
INSIDE_MARGIN = 0.01


class BoxCoderLike(Protocol):
    """The part of `glip_label.model.box_coder.BoxCoder` the targets and losses need."""

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor: ...

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor: ...


@dataclass
class AssignResult:
    """ATSS assignment of one image's anchors (all levels concatenated, level order P3..P7).

    labels:        [A] long, index of the matched GT box, -1 for negatives
    matched_boxes: [A, 4] the matched GT box (xyxy); zeros for negatives
    positive:      [A] bool, labels >= 0
    """

    labels: torch.Tensor
    matched_boxes: torch.Tensor
    positive: torch.Tensor


def box_iou_plus_one(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU [N, M] with the official `boxlist_iou` "+1" areas and intersections.

    torchvision.ops.box_iou uses continuous (+0) areas, so it is not used here.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)  # [N]
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)  # [M]
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (bottom_right - top_left + 1).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    return inter / (area1[:, None] + area2[None, :] - inter)


def _box_centres(boxes: torch.Tensor) -> torch.Tensor:
    # Official ATSS uses (x1 + x2) / 2 for both anchors and GTs (no +1 here).
    return torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0), dim=1)


def _all_negative(num_anchors: int, like: torch.Tensor) -> AssignResult:
    return AssignResult(
        labels=torch.full((num_anchors,), -1, dtype=torch.long, device=like.device),
        matched_boxes=like.new_zeros((num_anchors, 4)),
        positive=torch.zeros(num_anchors, dtype=torch.bool, device=like.device),
    )


def atss_assign(anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor, topk: int = 9) -> AssignResult:
    """Adaptive Training Sample Selection for one image (one anchor per location, as in GLIP).

    anchors_per_level: list of [L_l, 4] xyxy anchors in level order; gt_boxes: [G, 4] xyxy ("+1").
    Per GT: take, on every level, the `topk` anchors whose centres are closest to the GT centre
    (capped at the level size); the IoU threshold is mean + unbiased std over all those candidates;
    a candidate is positive when its IoU >= threshold and its centre lies inside the GT by more than
    0.01 on every side. An anchor claimed by several GTs goes to the one with the highest IoU (first
    GT on exact ties, as torch.max does).
    """
    anchors = torch.cat(list(anchors_per_level), dim=0)  # [A, 4]
    num_anchors = anchors.shape[0]
    num_gt = gt_boxes.shape[0]
    if num_gt == 0 or num_anchors == 0:
        # The official code would fail on an image without boxes; "everything is background" is the
        # only sensible reading and is what the token loss needs for negative-only images.
        return _all_negative(num_anchors, anchors)
    gt_boxes = gt_boxes.to(dtype=anchors.dtype, device=anchors.device)

    ious = box_iou_plus_one(anchors, gt_boxes)  # [A, G]
    anchor_centres = _box_centres(anchors)  # [A, 2]
    gt_centres = _box_centres(gt_boxes)  # [G, 2]
    # Same formula as the official code (sqrt of summed squares) so that near-ties order the same way.
    distances = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

    candidate_idxs_per_level = []
    level_start = 0
    for level_anchors in anchors_per_level:
        level_size = level_anchors.shape[0]
        level_topk = min(topk, level_size)
        _, nearest = distances[level_start : level_start + level_size].topk(level_topk, dim=0, largest=False)
        candidate_idxs_per_level.append(nearest + level_start)  # [k_l, G]
        level_start += level_size
    candidate_idxs = torch.cat(candidate_idxs_per_level, dim=0)  # [K, G], indices into the A anchors

    candidate_ious = ious.gather(0, candidate_idxs)  # [K, G]
    if candidate_idxs.shape[0] >= 2:
        iou_threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # [G], unbiased std as torch.std
    else:
        # A single candidate has an undefined (NaN) unbiased std in the official code, so nothing
        # passes `iou >= NaN`; reproduce that without the degrees-of-freedom warning.
        iou_threshold = candidate_ious.new_full((num_gt,), float("nan"))
    is_positive = candidate_ious >= iou_threshold[None, :]  # [K, G]

    candidate_centres = anchor_centres[candidate_idxs]  # [K, G, 2]
    left = candidate_centres[..., 0] - gt_boxes[None, :, 0]
    top = candidate_centres[..., 1] - gt_boxes[None, :, 1]
    right = gt_boxes[None, :, 2] - candidate_centres[..., 0]
    bottom = gt_boxes[None, :, 3] - candidate_centres[..., 1]
    is_inside = torch.stack((left, top, right, bottom), dim=-1).min(dim=-1).values > INSIDE_MARGIN  # [K, G]
    is_positive &= is_inside

    # Keep each GT's IoU only where that anchor is one of its positives; max over GTs resolves conflicts.
    gt_index_grid = torch.arange(num_gt, device=anchors.device).expand_as(candidate_idxs)  # [K, G]
    positive_anchor_idx = candidate_idxs[is_positive]
    positive_gt_idx = gt_index_grid[is_positive]
    claimed_ious = torch.full_like(ious, float("-inf"))  # [A, G]
    claimed_ious[positive_anchor_idx, positive_gt_idx] = ious[positive_anchor_idx, positive_gt_idx]
    best_iou, best_gt = claimed_ious.max(dim=1)  # [A], [A]

    positive = best_iou != float("-inf")
    labels = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
    matched_boxes = torch.where(positive[:, None], gt_boxes[best_gt], torch.zeros_like(anchors))
    return AssignResult(labels=labels, matched_boxes=matched_boxes, positive=positive)


def compute_centerness_targets(
    reg_targets: torch.Tensor, anchors: torch.Tensor, box_coder: BoxCoderLike
) -> torch.Tensor:
    """Official centerness target [P] for positive anchors: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)).

    l, t, r, b are measured from the anchor centre ((x1 + x2) / 2) to the box decoded from the
    regression target, as the official code does (not to the raw GT box), so the +1 round trip of the
    coder is part of the target. Only meaningful for anchors whose centre is inside the box.
    """
    target_boxes = box_coder.decode(reg_targets, anchors)  # [P, 4]
    anchor_centres = _box_centres(anchors)  # [P, 2]
    left = anchor_centres[:, 0] - target_boxes[:, 0]
    top = anchor_centres[:, 1] - target_boxes[:, 1]
    right = target_boxes[:, 2] - anchor_centres[:, 0]
    bottom = target_boxes[:, 3] - anchor_centres[:, 1]
    left_right = torch.stack((left, right), dim=1)  # [P, 2]
    top_bottom = torch.stack((top, bottom), dim=1)  # [P, 2]
    return torch.sqrt(
        (left_right.min(dim=1).values / left_right.max(dim=1).values)
        * (top_bottom.min(dim=1).values / top_bottom.max(dim=1).values)
    )


def build_targets(
    anchors_per_level: list[torch.Tensor],
    gt_boxes: torch.Tensor,
    gt_positive_map: torch.Tensor,
    num_tokens: int,
    box_coder: BoxCoderLike,
    topk: int = 9,
) -> dict[str, torch.Tensor]:
    """All per-anchor training targets of one image, in the flat anchor order of `anchors_per_level`.

    gt_positive_map: [G, T] token map per GT box; any value > 0 counts as positive (the official
    collator re-binarises the row-normalised maps before the loss). T must equal `num_tokens`, the
    width of the token logits.

    Returns a dict of:
      anchors            [A, 4]  concatenated anchors (the loss decodes predictions from them)
      positive           [A]     bool
      token_targets      [A, T]  positives: their GT's binary token row; negatives: zeros, plus the
                                 official [NoObj] one-hot at text position 255 when T > 255
      reg_targets        [A, 4]  encode(matched GT, anchor) on positives; zeros on negatives (never read)
      centerness_targets [A]     official centerness on positives; zeros on negatives (never read)
    """
    anchors = torch.cat(list(anchors_per_level), dim=0)  # [A, 4]
    num_gt = gt_boxes.shape[0]
    if gt_positive_map.dim() != 2 or gt_positive_map.shape != (num_gt, num_tokens):
        raise ValueError(f"gt_positive_map must be [G={num_gt}, T={num_tokens}], got {tuple(gt_positive_map.shape)}")
    assignment = atss_assign(anchors_per_level, gt_boxes, topk=topk)
    positive = assignment.positive
    positive_labels = assignment.labels[positive]  # [P]

    token_targets = anchors.new_zeros((anchors.shape[0], num_tokens))  # [A, T]
    binary_map = (gt_positive_map > 0).to(device=anchors.device, dtype=anchors.dtype)  # [G, T]
    token_targets[positive] = binary_map[positive_labels]
    if num_tokens > NO_OBJECT_TOKEN_INDEX:
        # Official prepare_targets gives unmatched anchors a one-hot at the last of the 256 text slots
        # (a disabled "[NoObj]" idea). The token loss only keeps positions whose attention mask is 1,
        # and slot 255 is [PAD] unless the prompt fills all 256 tokens, so this target is normally
        # masked out and negatives simply have all-zero targets. Kept for exact parity in the rare
        # full-prompt case (then negatives are pushed towards the final [SEP], as officially).
        token_targets[~positive, NO_OBJECT_TOKEN_INDEX] = 1.0

    reg_targets = anchors.new_zeros((anchors.shape[0], 4))  # [A, 4]
    centerness_targets = anchors.new_zeros((anchors.shape[0],))  # [A]
    if bool(positive.any()):
        positive_anchors = anchors[positive]  # [P, 4]
        positive_reg_targets = box_coder.encode(assignment.matched_boxes[positive], positive_anchors)
        reg_targets[positive] = positive_reg_targets
        centerness_targets[positive] = compute_centerness_targets(positive_reg_targets, positive_anchors, box_coder)

    return {
        "anchors": anchors,
        "positive": positive,
        "token_targets": token_targets,
        "reg_targets": reg_targets,
        "centerness_targets": centerness_targets,
    }
