"""GLIP training losses: token focal loss, centerness-weighted GIoU, centerness BCE.

Follows the official `ATSSLossComputation.__call__` (`maskrcnn_benchmark/modeling/rpn/loss.py`; the
focal loss from `maskrcnn_benchmark/layers/sigmoid_focal_loss.py`, the loss weights applied in
`maskrcnn_benchmark/modeling/rpn/vldyhead.py`, `VLDyHeadModule._forward_train`) with
DOT_PRODUCT_TOKEN_LOSS (the configuration of every released GLIP model). `loss_cls` is left out:
officially it is 0 x (focal loss on a frozen conv) and only exists so DDP sees that parameter; this
re-implementation has no such conv.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from glip_label.train.assign import BoxCoderLike

GIOU_EPS = 1e-7


def token_sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    text_mask: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Binary sigmoid focal loss over (anchor, token) pairs, summed over the kept text positions.

    logits, targets: [B, A, T]; text_mask: [B, T] (attention mask, > 0 = real token), broadcast over
    the anchors. Positions with mask 0 are dropped (official masked_select), so [PAD] slots neither
    add loss nor receive gradient. Not normalised: the caller divides by the number of positives.
    torchvision's sigmoid_focal_loss is the fvcore form the official code copied, op for op.
    """
    if logits.shape != targets.shape or logits.dim() != 3:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must be [B, A, T]")
    if text_mask.shape != (logits.shape[0], logits.shape[2]):
        raise ValueError(f"text_mask must be [B, T]={logits.shape[0], logits.shape[2]}, got {tuple(text_mask.shape)}")
    keep = (text_mask > 0)[:, None, :].expand_as(logits)  # [B, A, T]
    kept_logits = torch.masked_select(logits, keep)  # [N_kept]
    kept_targets = torch.masked_select(targets.to(logits.dtype), keep)  # [N_kept]
    return sigmoid_focal_loss(kept_logits, kept_targets, alpha=alpha, gamma=gamma, reduction="sum")


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Official ATSS GIoU loss: sum over boxes of (1 - GIoU), weighted when `weight` sums to > 0.

    pred_boxes, target_boxes: [P, 4] xyxy (already decoded); weight: [P] or None.

    Written out instead of torchvision.ops.generalized_box_iou_loss because the official form
    differs in ways that change values or gradients: predicted x2/y2 are first forced to be >= x1/y1
    (torchvision would give negative areas for inverted predictions), and the 1e-7 is added to the
    union and to the enclosing area before they are subtracted. Areas are continuous (no +1) here,
    unlike the rest of the legacy box code. When all weights are zero the official code falls back
    to the unweighted sum, reproduced here.
    """
    pred_x1, pred_y1, pred_x2, pred_y2 = pred_boxes.unbind(dim=1)
    pred_x2 = torch.max(pred_x1, pred_x2)
    pred_y2 = torch.max(pred_y1, pred_y2)
    pred_area = (pred_x2 - pred_x1) * (pred_y2 - pred_y1)  # [P]

    target_x1, target_y1, target_x2, target_y2 = target_boxes.unbind(dim=1)
    target_area = (target_x2 - target_x1) * (target_y2 - target_y1)  # [P]

    inter_x1 = torch.max(pred_x1, target_x1)
    inter_y1 = torch.max(pred_y1, target_y1)
    inter_x2 = torch.min(pred_x2, target_x2)
    inter_y2 = torch.min(pred_y2, target_y2)
    overlaps = (inter_y2 > inter_y1) & (inter_x2 > inter_x1)
    # torch.where keeps the official gradient: zero through the product wherever boxes do not overlap.
    inter_area = torch.where(
        overlaps, (inter_x2 - inter_x1) * (inter_y2 - inter_y1), torch.zeros_like(pred_area)
    )  # [P]

    enclosing_x1 = torch.min(pred_x1, target_x1)
    enclosing_y1 = torch.min(pred_y1, target_y1)
    enclosing_x2 = torch.max(pred_x2, target_x2)
    enclosing_y2 = torch.max(pred_y2, target_y2)
    enclosing_area = (enclosing_x2 - enclosing_x1) * (enclosing_y2 - enclosing_y1) + GIOU_EPS

    union_area = pred_area + target_area - inter_area + GIOU_EPS
    ious = inter_area / union_area
    gious = ious - (enclosing_area - union_area) / enclosing_area
    losses = 1 - gious  # [P]

    if weight is not None and bool(weight.sum() > 0):
        return (losses * weight).sum()
    return losses.sum()


def centerness_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits summed over positive anchors (official BCEWithLogitsLoss(reduction="sum"))."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar tensor over all ranks when torch.distributed is running, else the value itself.

    The official trainer normalises by the positives (and centerness sums) averaged over GPUs, so
    that every rank divides by the same number and the gradient average stays unbiased.
    """
    if dist.is_available() and dist.is_initialized():
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / dist.get_world_size()
    return value.detach()


def flatten_level_outputs(
    box_regression: Sequence[torch.Tensor],
    centerness: Sequence[torch.Tensor],
    token_logits: Sequence[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Per-level head outputs → the flat `outputs` dict of `glip_losses`.

    Inputs per level l (P3..P7): box_regression [B, 4, H_l, W_l], centerness [B, 1, H_l, W_l],
    token_logits [B, H_l*W_l, T] (already row-major). Locations are flattened row-major
    (index y*W_l + x) and levels concatenated in order, the same order as the anchors and as the
    official `concat_box_prediction_layers`.
    """
    batch = box_regression[0].shape[0]
    flat_box_regression = torch.cat(
        [level.permute(0, 2, 3, 1).reshape(batch, -1, 4) for level in box_regression], dim=1
    )  # [B, A, 4]
    flat_centerness = torch.cat([level.permute(0, 2, 3, 1).reshape(batch, -1) for level in centerness], dim=1)
    flat_token_logits = torch.cat(list(token_logits), dim=1)  # [B, A, T]
    return {
        "box_regression": flat_box_regression,
        "centerness": flat_centerness,
        "token_logits": flat_token_logits,
    }


def glip_losses(
    outputs: dict[str, torch.Tensor],
    targets: Sequence[dict[str, torch.Tensor]],
    box_coder: BoxCoderLike,
    reg_loss_weight: float = 2.0,
    num_gpus_avg: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    text_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """GLIP detection losses for a batch, normalised as the official trainer does.

    outputs (flat over levels; see `flatten_level_outputs`): anchor index a runs over levels P3..P7
    in order and, within a level, over locations y*W_l + x — the same order as the anchors that
    `build_targets` concatenated.
      box_regression [B, A, 4] deltas; centerness [B, A] logits; token_logits [B, A, T].
    targets: one `build_targets` dict per image (keys anchors, positive, token_targets, reg_targets,
      centerness_targets), A and T matching `outputs`.
    text_mask: [B, T] attention mask of the prompts the logits were computed with.
    num_gpus_avg: maps a local scalar tensor to its mean over ranks; defaults to an all-reduce mean
      when torch.distributed is initialised (identity otherwise). Every rank must call this function
      the same number of times, so it is also called when an image batch has no positives.

    Returns {"loss_dot_product_token", "loss_reg", "loss_centerness"}; their sum is the total loss.
    Divisors (positive count, centerness sum) are detached numbers, as in the official `.item()`.
    """
    average = num_gpus_avg if num_gpus_avg is not None else mean_over_ranks
    # Official loss runs under custom_fwd(cast_inputs=float32): keep the losses in fp32 under autocast.
    box_regression = outputs["box_regression"].float()  # [B, A, 4]
    centerness_logits = outputs["centerness"].float()  # [B, A]
    token_logits = outputs["token_logits"].float()  # [B, A, T]
    batch, num_anchors, _ = token_logits.shape
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} target dicts for a batch of {batch}")
    for image_targets in targets:
        if image_targets["positive"].shape[0] != num_anchors:
            raise ValueError(f"targets have {image_targets['positive'].shape[0]} anchors, outputs have {num_anchors}")

    positive = torch.cat([t["positive"] for t in targets])  # [B*A], image-major like the outputs
    token_targets = torch.stack([t["token_targets"] for t in targets]).to(token_logits)  # [B, A, T]
    reg_targets = torch.cat([t["reg_targets"] for t in targets]).to(box_regression)  # [B*A, 4]
    anchors = torch.cat([t["anchors"] for t in targets]).to(box_regression)  # [B*A, 4]
    centerness_targets = torch.cat([t["centerness_targets"] for t in targets]).to(box_regression)  # [B*A]

    num_pos_avg = max(float(average(positive.sum().to(torch.float32))), 1.0)
    loss_token = token_sigmoid_focal_loss(token_logits, token_targets, text_mask) / num_pos_avg

    positive_box_regression = box_regression.reshape(-1, 4)[positive]  # [P, 4]
    positive_centerness_logits = centerness_logits.reshape(-1)[positive]  # [P]
    if bool(positive.any()):
        positive_anchors = anchors[positive]
        positive_centerness_targets = centerness_targets[positive]  # [P]
        centerness_sum_avg = float(average(positive_centerness_targets.sum()))
        pred_boxes = box_coder.decode(positive_box_regression, positive_anchors)
        target_boxes = box_coder.decode(reg_targets[positive], positive_anchors)
        loss_reg = giou_loss(pred_boxes, target_boxes, weight=positive_centerness_targets) / centerness_sum_avg
        loss_centerness = centerness_loss(positive_centerness_logits, positive_centerness_targets) / num_pos_avg
    else:
        # Sums over empty selections: exactly 0 but still attached to the graph, so backward works and
        # DDP sees the box and centerness parameters. The dummy average matches the other ranks' call.
        average(centerness_logits.new_zeros(()))
        loss_reg = positive_box_regression.sum()
        loss_centerness = positive_centerness_logits.sum()

    return {
        "loss_dot_product_token": loss_token,
        "loss_reg": loss_reg * reg_loss_weight,
        "loss_centerness": loss_centerness,
    }
