"""ATSS post-processing of the official GLIP evaluation path, and the box resize back to the image.

Reproduces `modeling/rpn/inference.py::ATSSPostProcessor` (dot-product branch, SCORE_AGG MEAN/MAX),
`boxlist_ml_nms` as run by the official CUDA kernel, the kthvalue cap, `BoxList.clip_to_image`,
`remove_small_boxes` and `BoxList.resize`. Elementwise ops are kept in the official order and on the
same tensor layouts where that decides the last float bit (sigmoid on the whole logit map), so that
from identical head outputs the detections are identical.

Two choices the official code leaves to the backend are made deterministic here:
- the top-`pre_nms_top_n` cut breaks exact score ties by (location, class) order, and candidates keep
  that order within a level (official: `topk(sorted=False)`, whose order is implementation-defined);
- NMS visits equal-scored boxes in input order (official: an unstable GPU sort).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from glip_label.model.box_coder import BoxCoder
from glip_label.precision import HALF_DTYPES

TO_REMOVE = 1.0  # legacy "+1" pixel convention of the official boxes
_NMS_CHUNK_ELEMENTS = 1 << 22  # rows of the pairwise IoU are computed in blocks of about this many pairs


# ---------------------------------------------------------------------------------------------- NMS
def _pairwise_iou_plus1(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU [A, B] with the official CUDA kernel's "+1" widths and its float operation order.

    In-place steps keep the number of [A, B] temporaries low: this is the cost centre of NMS.
    """
    inter_w = torch.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    inter_w.sub_(torch.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])).add_(TO_REMOVE).clamp_(min=0)
    inter_h = torch.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    inter_h.sub_(torch.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])).add_(TO_REMOVE).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + TO_REMOVE) * (boxes_a[:, 3] - boxes_a[:, 1] + TO_REMOVE)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + TO_REMOVE) * (boxes_b[:, 3] - boxes_b[:, 1] + TO_REMOVE)
    union = (area_a[:, None] + area_b[None, :]).sub_(inter)
    return inter.div_(union)


def _greedy_nms_sorted(boxes_sorted: torch.Tensor, iou_threshold: float) -> np.ndarray:
    """Keep mask [m] for boxes already sorted best first: a box survives unless a kept better box overlaps it."""
    m = boxes_sorted.shape[0]
    keep = np.zeros(m, dtype=bool)
    if m == 1:
        keep[0] = True
        return keep
    # suppresses[i, j]: box i (better) would remove box j (worse); only j > i is ever needed.
    suppresses = np.zeros((m, m), dtype=bool)
    rows_per_chunk = max(1, _NMS_CHUNK_ELEMENTS // m)
    positions = torch.arange(m, device=boxes_sorted.device)
    for start in range(0, m, rows_per_chunk):
        stop = min(m, start + rows_per_chunk)
        # columns before `start` are better boxes than every row of the chunk: skip them
        over = _pairwise_iou_plus1(boxes_sorted[start:stop], boxes_sorted[start:]) > iou_threshold
        over &= positions[None, start:] > positions[start:stop, None]
        suppresses[start:stop, start:] = over.cpu().numpy()
    removed = np.zeros(m, dtype=bool)
    for i in range(m):
        if not removed[i]:
            keep[i] = True
            removed |= suppresses[i]
    return keep


def ml_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware greedy NMS as the official CUDA `ml_nms`; returns kept indices [K] (long) in ascending order.

    boxes [N,4] xyxy ("+1" convention), scores [N], labels [N]. A box is removed when its "+1" IoU with a
    higher-scored kept box of the same label is > iou_threshold; different labels never interact.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.is_cuda:
        return ml_nms_torchvision(boxes, scores, labels, iou_threshold)
    # Best first (stable, so equal scores keep input order), then grouped by label, best first inside.
    by_score = torch.sort(scores, descending=True, stable=True).indices
    by_label = torch.sort(labels[by_score], stable=True)
    order = by_score[by_label.indices]  # [N]
    _, counts = torch.unique_consecutive(by_label.values, return_counts=True)
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    start = 0
    for count in counts.tolist():
        group = order[start : start + count]
        group_keep = _greedy_nms_sorted(boxes[group], iou_threshold)
        keep[group[torch.from_numpy(group_keep).to(group.device)]] = True
        start += count
    return keep.nonzero().squeeze(1)


def ml_nms_torchvision(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """`ml_nms` by torchvision's batched NMS kernel, the path for CUDA tensors (no host sync per label).

    torchvision's IoU has no "+1"; on boxes whose x2, y2 are moved by +1 it is the official IoU (the same
    suppression rule, IoU > threshold, per label). The widths are rounded in another order, and equal scores
    may be visited in another order than `ml_nms`'s stable one, so boxes can differ where a pair's IoU is
    within float round-off of the threshold. Returns the kept indices in ascending order, as `ml_nms`.
    """
    from torchvision.ops import batched_nms

    shifted = boxes.float().clone()  # [N, 4]
    shifted[:, 2:] += TO_REMOVE
    return torch.sort(batched_nms(shifted, scores.float(), labels, iou_threshold)).values


# ------------------------------------------------------------------------------------- ATSS post-processing
def _label_scores(
    token_probs: torch.Tensor, token_groups: Sequence[Sequence[int]], score_agg: str
) -> torch.Tensor:
    """Per-label scores [B, HW, L] from token probabilities [B, HW, T].

    Column j aggregates the probabilities of token_groups[j] (mean or max). Labels with the same number
    of tokens are gathered together, which gives the same per-row reduction as the official one-label-
    at-a-time loop but costs one op per distinct token count instead of one per label.
    """
    batch, locations, _ = token_probs.shape
    scores = token_probs.new_zeros((batch, locations, len(token_groups)))
    by_length: dict[int, list[int]] = {}
    for column, tokens in enumerate(token_groups):
        if len(tokens) > 0:  # an empty group would be NaN officially: never a candidate, same as 0 here
            by_length.setdefault(len(tokens), []).append(column)
    for columns in by_length.values():
        token_index = torch.tensor([list(token_groups[c]) for c in columns], dtype=torch.long,
                                   device=token_probs.device)  # [n_labels, k]
        gathered = token_probs[:, :, token_index]  # [B, HW, n_labels, k]
        if score_agg == "MEAN":
            aggregated = gathered.mean(-1)
        elif score_agg == "MAX":
            aggregated = gathered.amax(-1)
        else:
            raise ValueError(f"score_agg must be 'MEAN' or 'MAX', got {score_agg!r}")
        scores[:, :, torch.tensor(columns, device=token_probs.device)] = aggregated
    return scores


def _top_n_in_order(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n largest values, exact ties broken by position, returned in ascending position order."""
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    if values.numel() <= n:
        return torch.arange(values.numel(), device=values.device)
    kth_largest = torch.topk(values, n, sorted=False).values.min()
    above = (values > kth_largest).nonzero().squeeze(1)
    at_kth = (values == kth_largest).nonzero().squeeze(1)[: n - above.numel()]
    return torch.sort(torch.cat((above, at_kth))).values


def _empty_result(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros((0, 4), dtype=dtype, device=device),
        "scores": torch.zeros(0, dtype=dtype, device=device),
        "labels": torch.zeros(0, dtype=torch.long, device=device),
    }


def atss_postprocess(
    box_regression: Sequence[torch.Tensor],
    centerness: Sequence[torch.Tensor],
    token_logits: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    positive_map: Mapping[int, Sequence[int]],
    num_classes: int = 80,
    pre_nms_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    score_agg: str = "MEAN",
) -> list[dict[str, torch.Tensor]]:
    """Detections per image from raw head outputs, exactly as the official ATSSPostProcessor.

    Per level l: box_regression [B,4,H,W], centerness [B,1,H,W], token_logits [B,H*W,T] (T may be < 256:
    only the token columns named in positive_map are read), anchors [H*W,4].
    image_sizes: per image (h, w) of the resized, unpadded image (boxes are clipped to it).
    positive_map: label (1-based) -> token indices; num_classes: K, the number of class-score columns
    (labels must be <= K: the official code raises IndexError otherwise).
    Returns per image {"boxes": [n,4] xyxy in resized-image pixels, "scores": [n], "labels": [n] (1-based)}.
    Order: by level, then (location, label) within a level, as left by the official ascending-index NMS.
    """
    # fp32 island: half-precision head outputs are scored, decoded and suppressed in fp32 (others are left as is).
    box_regression, centerness, token_logits, anchors = (
        [x.float() if x.dtype in HALF_DTYPES else x for x in part]
        for part in (box_regression, centerness, token_logits, anchors)
    )
    num_levels = len(box_regression)
    if not (len(centerness) == len(token_logits) == len(anchors) == num_levels):
        raise ValueError("box_regression, centerness, token_logits and anchors need one entry per level")
    labels_sorted = sorted(int(label) for label in positive_map)
    for label in labels_sorted:
        if label < 1 or label > num_classes:
            raise IndexError(
                f"positive_map label {label} is outside 1..{num_classes}: the class-score matrix has "
                f"num_classes={num_classes} columns (official DYHEAD.NUM_CLASSES - 1); pass a larger num_classes"
            )
    token_groups = [[int(t) for t in positive_map[label]] for label in labels_sorted]
    num_images = len(image_sizes)
    coder = BoxCoder()
    max_token = max((max(g) for g in token_groups if g), default=-1)
    if min((min(g) for g in token_groups if g), default=0) < 0:
        raise IndexError("positive_map token indices must be >= 0")

    per_image_parts: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(num_images)]
    for level in range(num_levels):
        regression = box_regression[level]
        batch, _, height, width = regression.shape
        if batch != num_images:
            raise ValueError(f"level {level}: batch of {batch} images but {num_images} image sizes")
        logits = token_logits[level]
        if logits.shape[:2] != (batch, height * width):
            raise ValueError(f"level {level}: token_logits {tuple(logits.shape)} do not match {height}x{width} maps")
        if max_token >= logits.shape[2]:
            raise IndexError(f"positive_map names token {max_token} but token_logits have {logits.shape[2]} columns")

        # Same layouts as the official permute_and_flatten (A = 1 anchor per location).
        deltas = regression.permute(0, 2, 3, 1).reshape(batch, height * width, 4)  # [B, HW, 4]
        center_prob = centerness[level].permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()  # [B, HW]
        token_probs = logits.sigmoid()  # [B, HW, T] (whole map, as the official code; see module doc)
        scores = _label_scores(token_probs, token_groups, score_agg)  # [B, HW, L]
        candidates = scores > pre_nms_thresh  # before centerness, as officially
        level_anchors = anchors[level]
        label_ids = torch.tensor(labels_sorted, dtype=torch.long, device=regression.device)  # column -> label

        for image_index in range(num_images):
            location_label = candidates[image_index].nonzero()  # [m, 2] (location, label column), row-major
            if location_label.numel() == 0:
                continue
            location = location_label[:, 0]
            products = scores[image_index][candidates[image_index]] * center_prob[image_index, location]  # [m]
            chosen = _top_n_in_order(products, pre_nms_top_n)
            location = location[chosen]
            label_column = location_label[chosen, 1]
            boxes = coder.decode(deltas[image_index, location], level_anchors[location])  # [n, 4]
            image_h, image_w = image_sizes[image_index]
            boxes = _clip_to_image(boxes, image_w, image_h)
            keep = _not_small(boxes, min_size=0)
            per_image_parts[image_index].append(
                (boxes[keep], torch.sqrt(products[chosen])[keep], label_ids[label_column[keep]])
            )

    device = box_regression[0].device if num_levels else torch.device("cpu")
    dtype = box_regression[0].dtype if num_levels else torch.float32
    results = []
    for parts in per_image_parts:
        if not parts:
            results.append(_empty_result(device, dtype))
            continue
        boxes = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        labels = torch.cat([p[2] for p in parts])
        if nms_thresh > 0:  # official boxlist_ml_nms is a no-op for thresholds <= 0
            keep = ml_nms(boxes, scores, labels, nms_thresh)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        count = scores.numel()
        if count > detections_per_img > 0:
            threshold, _ = torch.kthvalue(scores.cpu().float(), count - detections_per_img + 1)
            keep = scores >= threshold.item()  # ties at the threshold can keep more than detections_per_img
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results


def _clip_to_image(boxes: torch.Tensor, image_w: int, image_h: int) -> torch.Tensor:
    """Official `clip_to_image`: x into [0, w - 1], y into [0, h - 1] (legacy +1 convention)."""
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=image_w - TO_REMOVE),
            boxes[:, 1].clamp(min=0, max=image_h - TO_REMOVE),
            boxes[:, 2].clamp(min=0, max=image_w - TO_REMOVE),
            boxes[:, 3].clamp(min=0, max=image_h - TO_REMOVE),
        ),
        dim=1,
    )


def _not_small(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Official `remove_small_boxes` keep mask: "+1" width and height >= min_size (also drops NaN boxes)."""
    widths = boxes[:, 2] - boxes[:, 0] + TO_REMOVE
    heights = boxes[:, 3] - boxes[:, 1] + TO_REMOVE
    return (widths >= min_size) & (heights >= min_size)


# ------------------------------------------------------------------------------------------ resize back
def resize_boxes(boxes: torch.Tensor, from_size_wh: tuple[int, int], to_size_wh: tuple[int, int]) -> torch.Tensor:
    """Official `BoxList.resize`: boxes [n,4] xyxy from an image of from_size_wh to one of to_size_wh.

    One common ratio scales all coordinates when the aspect is kept exactly, else x and y separately;
    no +-1 adjustment, as officially.
    """
    ratio_w = float(to_size_wh[0]) / float(from_size_wh[0])
    ratio_h = float(to_size_wh[1]) / float(from_size_wh[1])
    if ratio_w == ratio_h:
        return boxes * ratio_w
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)
