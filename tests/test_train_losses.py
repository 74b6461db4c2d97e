"""ATSS assignment, training targets and GLIP losses against hand-computed values.

The rules are the official maskrcnn_benchmark/modeling/rpn/loss.py (ATSSLossComputation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from glip_label.model.anchors import grid_anchors
from glip_label.model.box_coder import BoxCoder
from glip_label.train.assign import (
    atss_assign,
    box_iou_plus_one,
    build_targets,
    compute_centerness_targets,
)
from glip_label.train.losses import (
    centerness_loss,
    flatten_level_outputs,
    giou_loss,
    glip_losses,
    token_sigmoid_focal_loss,
)

CODER = BoxCoder()


def toy_anchors() -> list[torch.Tensor]:
    """Two levels in one row.

    level 0 (10x10): a0 [0,0,9,9] a1 [10,0,19,9] a2 [20,0,29,9] a3 [30,0,39,9]; centres x 4.5/14.5/24.5/34.5, y 4.5
    level 1 (20x20): b0 (index 4) [0,0,19,19] centre (9.5,9.5); b1 (index 5) [20,0,39,19] centre (29.5,9.5)
    """
    level0 = torch.tensor([[x, 0.0, x + 9, 9.0] for x in (0.0, 10.0, 20.0, 30.0)])
    level1 = torch.tensor([[0.0, 0.0, 19.0, 19.0], [20.0, 0.0, 39.0, 19.0]])
    return [level0, level1]


# GT1 = [12,0,21,19]: w 10, h 20, area 200, centre (16.5, 9.5).
GT1 = [12.0, 0.0, 21.0, 19.0]
# GT2 = [8,2,19,15]: w 12, h 14, area 168, centre (13.5, 8.5).
GT2 = [8.0, 2.0, 19.0, 15.0]


# ----------------------------------------------------------------------------------------------
# IoU and ATSS assignment


def test_iou_uses_plus_one_areas():
    # [0,0,9,9] vs [5,0,14,9]: inter (9-5+1)*(9-0+1) = 50; areas 100 and 100; IoU = 50/150.
    iou = box_iou_plus_one(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[5.0, 0, 14, 9], [10.0, 0, 19, 9]]))
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 0.0]]))


def test_atss_single_gt_hand_computed():
    # topk = 3. GT1 centre (16.5, 9.5).
    # Level 0 distances: a0 sqrt(12²+5²)=13, a1 sqrt(2²+5²)=5.39, a2 sqrt(8²+5²)=9.43, a3 sqrt(18²+5²)=18.68
    #   → candidates a1, a2, a0 (a3 is 4th).
    # Level 1 has 2 anchors < topk → both: b0 (dist 7), b1 (dist 13).
    # IoUs (+1 convention):
    #   a0: x overlap max(0,12)..min(9,21) = 12..9 → none → 0
    #   a1: x 12..19 → 8, y 0..9 → 10 → inter 80; union 100 + 200 - 80 = 220 → 4/11 = 0.363636
    #   a2: x 20..21 → 2, y 10 → inter 20; union 100 + 200 - 20 = 280 → 1/14 = 0.071429
    #   b0: x 12..19 → 8, y 0..19 → 20 → inter 160; union 400 + 200 - 160 = 440 → 4/11 = 0.363636
    #   b1: x 20..21 → 2, y 20 → inter 40; union 400 + 200 - 40 = 560 → 1/14 = 0.071429
    # mean = (2·4/11 + 2·1/14 + 0)/5 = 0.174026; unbiased std = 0.175529; threshold = 0.349555.
    # IoU ≥ threshold: a1 and b0.
    # Inside check (centre to GT sides l,t,r,b):
    #   a1 centre (14.5,4.5): 2.5, 4.5, 6.5, 14.5 → inside → positive
    #   b0 centre (9.5,9.5): l = 9.5 - 12 = -2.5 → outside → rejected despite its IoU
    result = atss_assign(toy_anchors(), torch.tensor([GT1]), topk=3)
    assert result.positive.tolist() == [False, True, False, False, False, False]
    assert result.labels.tolist() == [-1, 0, -1, -1, -1, -1]
    torch.testing.assert_close(result.matched_boxes[1], torch.tensor(GT1))
    assert torch.count_nonzero(result.matched_boxes[~result.positive]) == 0


def test_atss_conflicting_gts_go_to_max_iou():
    # GT2 alone (topk 3), centre (13.5, 8.5):
    # Level 0 distances: a0 sqrt(9²+4²)=9.85, a1 sqrt(1²+4²)=4.12, a2 sqrt(11²+4²)=11.70, a3 21.38 → a1, a0, a2.
    # Level 1: b0 sqrt(4²+1²)=4.12, b1 sqrt(16²+1²)=16.03 → both.
    # IoUs: a0: x 8..9 → 2, y 2..9 → 8 → 16; union 100+168-16 = 252 → 0.063492
    #       a1: x 10..19 → 10, y 2..9 → 8 → 80; union 100+168-80 = 188 → 0.425532
    #       a2: x 20..19 → 0;  b0: GT inside → 168/400 = 0.42;  b1: x 20..19 → 0
    # mean 0.181805, std 0.221497, threshold 0.403302 → a1 and b0 pass the IoU test;
    # centres a1 (14.5,4.5): l,t,r,b = 6.5,2.5,4.5,10.5 and b0 (9.5,9.5): 1.5,7.5,9.5,5.5 → both positive.
    # With GT1 (previous test) a1 is positive for both GTs: IoU 4/11 = 0.3636 (GT1) < 0.4255 (GT2) → GT2.
    # b0 is positive for GT2 only. The order of the GTs must not matter.
    anchors = toy_anchors()
    both = atss_assign(anchors, torch.tensor([GT1, GT2]), topk=3)
    assert both.labels.tolist() == [-1, 1, -1, -1, 1, -1]
    swapped = atss_assign(anchors, torch.tensor([GT2, GT1]), topk=3)
    assert swapped.labels.tolist() == [-1, 0, -1, -1, 0, -1]
    torch.testing.assert_close(swapped.matched_boxes[[1, 4]], torch.tensor([GT2, GT2]))


def test_atss_without_gt_is_all_negative():
    result = atss_assign(toy_anchors(), torch.zeros((0, 4)))
    assert result.labels.tolist() == [-1] * 6
    assert not result.positive.any()
    assert result.matched_boxes.shape == (6, 4)


@pytest.mark.parametrize(("gt_x1", "expected_positive"), [(9.495, False), (9.48, True)])
def test_atss_inside_check_needs_more_than_0_01(gt_x1, expected_positive):
    # One level, three anchors, topk 3 → all three are candidates. The GT [x1,0,19,19] sits in the right
    # half of anchor 0 [0,0,19,19] (centre (9.5,9.5)); anchors 1 and 2 do not touch it.
    # IoU(anchor 0) = (19 - x1 + 1)·20 / 400 ≈ 0.525 (x1 = 9.495) or 0.526 (x1 = 9.48); others 0.
    # mean ≈ 0.175, unbiased std ≈ 0.303 → threshold ≈ 0.478: anchor 0 passes the IoU test, and the
    # inside check decides: l = 9.5 - x1 = 0.005 (not > 0.01 → negative) or 0.02 (→ positive).
    anchors = [torch.tensor([[0.0, 0, 19, 19], [40.0, 0, 59, 19], [80.0, 0, 99, 19]])]
    result = atss_assign(anchors, torch.tensor([[gt_x1, 0.0, 19.0, 19.0]]), topk=3)
    assert result.positive.tolist() == [expected_positive, False, False]


def test_atss_single_candidate_has_no_positive():
    # One anchor in total: the unbiased std of one IoU is undefined (NaN in the official code), so the
    # perfect match fails `iou >= NaN`.
    result = atss_assign([torch.tensor([[0.0, 0, 9, 9]])], torch.tensor([[0.0, 0, 9, 9]]))
    assert not result.positive.any()


def _loop_reference_assign(anchors_per_level, gt_boxes, topk):
    """Independent per-GT, per-anchor loop version of the official rules (slow, test-only)."""
    anchors = torch.cat(anchors_per_level).double()
    gts = gt_boxes.double()
    ious = box_iou_plus_one(anchors, gts)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = {}
    for g in range(len(gts)):
        gt_centre = (gts[g, :2] + gts[g, 2:]) / 2
        candidates = []
        start = 0
        for level in anchors_per_level:
            dists = [float(torch.linalg.norm(centres[start + i] - gt_centre)) for i in range(len(level))]
            order = sorted(range(len(level)), key=lambda i: dists[i])
            candidates += [start + i for i in order[:topk]]
            start += len(level)
        values = [float(ious[a, g]) for a in candidates]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for a in candidates:
            cx, cy = float(centres[a, 0]), float(centres[a, 1])
            x1, y1, x2, y2 = gts[g].tolist()
            inside = min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01
            if float(ious[a, g]) >= mean + std and inside and (a not in best or ious[a, g] > best[a][1]):
                best[a] = (g, float(ious[a, g]))
    return [best[a][0] if a in best else -1 for a in range(len(anchors))]


def test_atss_matches_loop_reference_on_random_scenes():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        # Jittered anchors (no exact distance ties) on three levels of different sizes.
        levels = []
        for count, size in ((40, 16.0), (12, 40.0), (3, 90.0)):
            centres = torch.rand((count, 2), generator=generator) * 100
            levels.append(torch.cat((centres - size / 2, centres + size / 2), dim=1))
        top_left = torch.rand((4, 2), generator=generator) * 70
        gt = torch.cat((top_left, top_left + 8 + torch.rand((4, 2), generator=generator) * 40), dim=1)
        result = atss_assign(levels, gt, topk=5)
        assert result.labels.tolist() == _loop_reference_assign(levels, gt, topk=5)
        assert result.positive.any()


# ----------------------------------------------------------------------------------------------
# Targets


def test_centerness_target_of_known_anchor_and_box():
    # Anchor [0,0,9,9] centre (4.5,4.5); box [2,0,15,9]: l = 2.5, r = 10.5, t = b = 4.5
    # → sqrt(2.5/10.5 · 4.5/4.5) = 0.487950.
    anchors = torch.tensor([[0.0, 0, 9, 9]], dtype=torch.float64)
    box = torch.tensor([[2.0, 0, 15, 9]], dtype=torch.float64)
    reg = CODER.encode(box, anchors)
    centerness = compute_centerness_targets(reg, anchors, CODER)
    torch.testing.assert_close(centerness, torch.tensor([0.4879500364742666], dtype=torch.float64))


def test_build_targets_tokens_regression_and_centerness():
    # Same scene as the conflict test: a1 (index 1) and b0 (index 4) → GT2 (row 1 of the map).
    anchors = toy_anchors()
    gts = torch.tensor([GT1, GT2])
    # Row-normalised maps as the dataset produces them; only "> 0" matters.
    positive_map = torch.tensor([[0, 0.5, 0.5, 0, 0, 0, 0, 0], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0]])
    targets = build_targets(anchors, gts, positive_map, num_tokens=8, box_coder=CODER, topk=3)

    assert targets["positive"].tolist() == [False, True, False, False, True, False]
    expected_row = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0.0])
    torch.testing.assert_close(targets["token_targets"][[1, 4]], expected_row.expand(2, 8))
    # T = 8 < 256: negatives have no [NoObj] slot at all, only zeros.
    assert torch.count_nonzero(targets["token_targets"][[0, 2, 3, 5]]) == 0

    all_anchors = torch.cat(anchors)
    positive_anchors = all_anchors[[1, 4]]
    gt2 = torch.tensor([GT2, GT2])
    torch.testing.assert_close(targets["reg_targets"][[1, 4]], CODER.encode(gt2, positive_anchors))
    assert torch.count_nonzero(targets["reg_targets"][[0, 2, 3, 5]]) == 0
    torch.testing.assert_close(targets["anchors"], all_anchors)
    # a1 centre (14.5,4.5) in GT2 [8,2,19,15]: l 6.5 r 4.5 t 2.5 b 10.5 → sqrt(4.5/6.5 · 2.5/10.5) = 0.405999
    # b0 centre (9.5,9.5): l 1.5 r 9.5 t 7.5 b 5.5 → sqrt(1.5/9.5 · 5.5/7.5) = 0.340279
    expected_centerness = torch.tensor(
        [0.0, math.sqrt(4.5 / 6.5 * 2.5 / 10.5), 0.0, 0.0, math.sqrt(1.5 / 9.5 * 5.5 / 7.5), 0.0]
    )
    torch.testing.assert_close(targets["centerness_targets"], expected_centerness)


def test_build_targets_no_object_slot_with_256_tokens():
    positive_map = torch.zeros((1, 256))
    positive_map[0, 1:3] = 1
    targets = build_targets(toy_anchors(), torch.tensor([GT1]), positive_map, 256, CODER, topk=3)
    negatives = ~targets["positive"]
    assert targets["token_targets"][negatives, 255].eq(1).all()
    assert targets["token_targets"][negatives, :255].eq(0).all()
    assert targets["token_targets"][targets["positive"]].sum().item() == 2  # tokens 1, 2; no slot 255


def test_build_targets_without_boxes_and_bad_map_shape():
    targets = build_targets(toy_anchors(), torch.zeros((0, 4)), torch.zeros((0, 8)), 8, CODER)
    assert not targets["positive"].any()
    assert torch.count_nonzero(targets["token_targets"]) == 0
    with pytest.raises(ValueError, match="positive_map"):
        build_targets(toy_anchors(), torch.tensor([GT1]), torch.zeros((1, 7)), 8, CODER)


# ----------------------------------------------------------------------------------------------
# Loss pieces


def test_token_focal_loss_hand_values_with_mask():
    # alpha 0.25, gamma 2. Kept positions (mask 1,1,1,0):
    #   x=2,  t=1: p = 0.880797, 0.25·(1-p)²·(-ln p)      = 0.000450891
    #   x=-1, t=0: p = 0.268941, 0.75·p²·(-ln(1-p))        = 0.016993543
    #   x=0.5,t=0: p = 0.622459, 0.75·p²·(-ln(1-p))        = 0.283058701
    #   x=3 (masked out) would add 2.73e-5.               sum = 0.300503135
    logits = torch.tensor([[[2.0, -1.0, 0.5, 3.0]]], requires_grad=True)
    targets = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = token_sigmoid_focal_loss(logits, targets, mask)
    torch.testing.assert_close(loss, torch.tensor(0.300503135), rtol=1e-6, atol=1e-8)
    loss.backward()
    assert logits.grad[0, 0, 3] == 0 and (logits.grad[0, 0, :3] != 0).all()


def test_token_focal_loss_mask_broadcasts_over_anchors():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 3, 5), generator=generator)
    targets = (torch.rand((2, 3, 5), generator=generator) > 0.7).float()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    expected = 0.0
    for b in range(2):
        for a in range(3):
            for t in range(5):
                if mask[b, t]:
                    p = torch.sigmoid(logits[b, a, t]).item()
                    if targets[b, a, t] == 1:
                        expected += 0.25 * (1 - p) ** 2 * -math.log(p)
                    else:
                        expected += 0.75 * p**2 * -math.log(1 - p)
    loss = token_sigmoid_focal_loss(logits, targets, mask)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-7)


def test_giou_loss_hand_values():
    pred = torch.tensor(
        [
            [0.0, 0, 4, 4],  # identical to target → GIoU 1 → loss 0
            [0.0, 0, 1, 1],  # disjoint: inter 0, union 2, enclosing [0,0,3,1] = 3 → GIoU -1/3 → 4/3
            [0.0, 0, 2, 2],  # overlap: inter 1, union 7, enclosing 9 → 1/7 - 2/9 = -5/63 → 68/63
            [2.0, 0, 1, 1],  # inverted: x2 forced to 2 → area 0; inter 0, union 3, enclosing 3 → loss 1
        ]
    )
    target = torch.tensor([[0.0, 0, 4, 4], [2.0, 0, 3, 1], [1.0, 1, 3, 3], [0.0, 0, 3, 1]])
    per_box = [giou_loss(pred[i : i + 1], target[i : i + 1]).item() for i in range(4)]
    assert per_box == pytest.approx([0.0, 4 / 3, 68 / 63, 1.0], abs=1e-6)
    weights = torch.tensor([0.5, 2.0, 1.0, 0.25])
    assert giou_loss(pred, target, weights).item() == pytest.approx(2 * 4 / 3 + 68 / 63 + 0.25, abs=1e-5)
    # Official quirk: all-zero weights fall back to the unweighted sum.
    assert giou_loss(pred, target, torch.zeros(4)).item() == pytest.approx(4 / 3 + 68 / 63 + 1, abs=1e-5)
    # Zero-area boxes: the 1e-7 on union and enclosing area keeps 0/0 away → IoU 0, GIoU 0, loss 1.
    point = torch.tensor([[1.0, 1, 1, 1]])
    assert giou_loss(point, point).item() == pytest.approx(1.0)
    # On valid boxes it agrees with torchvision's GIoU loss.
    torch.testing.assert_close(
        giou_loss(pred[:3], target[:3]), generalized_box_iou_loss(pred[:3], target[:3], reduction="sum")
    )


def test_centerness_loss_is_summed_bce():
    # x=0, t=0.5: ln 2 = 0.693147; x=2, t=1: ln(1 + e^-2) = 0.126928.
    loss = centerness_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.5, 1.0]))
    assert loss.item() == pytest.approx(math.log(2) + math.log(1 + math.exp(-2)), rel=1e-6)


def test_flatten_level_outputs_row_major_level_order():
    # Level 0 2x3, level 1 1x2; values encode (level, y, x) so the flat order can be read back.
    level0 = torch.arange(6.0).reshape(1, 1, 2, 3)  # y*3 + x
    level1 = 100 + torch.arange(2.0).reshape(1, 1, 1, 2)
    box = [level0.expand(1, 4, 2, 3) + torch.arange(4.0)[None, :, None, None] * 1000, level1.expand(1, 4, 1, 2)]
    tokens = [torch.zeros(1, 6, 3), torch.ones(1, 2, 3)]
    flat = flatten_level_outputs(box, [level0, level1], tokens)
    assert flat["centerness"].tolist() == [[0, 1, 2, 3, 4, 5, 100, 101]]
    assert flat["box_regression"].shape == (1, 8, 4)
    assert flat["box_regression"][0, 4].tolist() == [4, 1004, 2004, 3004]
    assert flat["token_logits"].shape == (1, 8, 3) and flat["token_logits"][0, 6:].eq(1).all()


# ----------------------------------------------------------------------------------------------
# Combined losses


def _scene(num_tokens: int = 6):
    """Two 128x128 images, levels stride 8 (16x16) and 16 (8x8); image 0 has two boxes, image 1 one.

    Boxes are large on purpose: a box much smaller than the 64/128-pixel anchors lies inside many of
    them, several candidates then share the top IoU, it stays below mean + std and the box gets no
    positive at all (official ATSS behaviour, checked while writing this test).
    """
    anchors = grid_anchors([(16, 16), (8, 8)], strides=[8, 16], sizes=[64, 128])  # 256 + 64 = 320 anchors
    boxes = [
        torch.tensor([[10.0, 12.0, 80.0, 70.0], [60.0, 50.0, 120.0, 125.0]]),
        torch.tensor([[20.0, 30.0, 100.0, 110.0]]),
    ]
    maps = [torch.tensor([[0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0.0]]), torch.tensor([[0, 0, 1, 0, 0, 0.0]])]
    targets = [build_targets(anchors, b, m, num_tokens, CODER) for b, m in zip(boxes, maps, strict=True)]
    text_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    return anchors, targets, text_mask


def _random_outputs(num_anchors: int, num_tokens: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "box_regression": (0.3 * torch.randn((2, num_anchors, 4), generator=generator)).requires_grad_(),
        "centerness": torch.randn((2, num_anchors), generator=generator).requires_grad_(),
        "token_logits": torch.randn((2, num_anchors, num_tokens), generator=generator).requires_grad_(),
    }


def test_glip_losses_combine_pieces_with_official_normalisation():
    _, targets, text_mask = _scene()
    outputs = _random_outputs(320, 6, seed=2)
    losses = glip_losses(outputs, targets, CODER, text_mask=text_mask)

    positive = torch.cat([t["positive"] for t in targets])
    num_pos = int(positive.sum())
    assert num_pos == 11  # 5 anchors in image 0 (3 + 2 for its two boxes), 6 in image 1
    token_targets = torch.stack([t["token_targets"] for t in targets])
    expected_token = token_sigmoid_focal_loss(outputs["token_logits"], token_targets, text_mask) / num_pos

    anchors = torch.cat([t["anchors"] for t in targets])[positive]
    pred = CODER.decode(outputs["box_regression"].reshape(-1, 4)[positive], anchors)
    target = CODER.decode(torch.cat([t["reg_targets"] for t in targets])[positive], anchors)
    weight = torch.cat([t["centerness_targets"] for t in targets])[positive]
    # Independent GIoU (torchvision; identical on valid boxes), weighted by the centerness targets.
    expected_reg = 2.0 * (generalized_box_iou_loss(pred, target) * weight).sum() / weight.sum()
    expected_ctr = (
        F.binary_cross_entropy_with_logits(outputs["centerness"].reshape(-1)[positive], weight, reduction="sum")
        / num_pos
    )

    torch.testing.assert_close(losses["loss_dot_product_token"], expected_token)
    torch.testing.assert_close(losses["loss_reg"], expected_reg)
    torch.testing.assert_close(losses["loss_centerness"], expected_ctr)

    # The divisors come from the rank-averaging hook: pretending the other ranks had twice as many
    # positives (and twice the centerness sum) halves every loss.
    doubled = glip_losses(outputs, targets, CODER, num_gpus_avg=lambda value: 2 * value, text_mask=text_mask)
    for name, value in losses.items():
        torch.testing.assert_close(doubled[name], value / 2)


def test_glip_losses_without_positives_are_finite_and_differentiable():
    anchors, _, text_mask = _scene()
    targets = [build_targets(anchors, torch.zeros((0, 4)), torch.zeros((0, 6)), 6, CODER) for _ in range(2)]
    outputs = _random_outputs(320, 6, seed=3)
    calls = []

    def counting_average(value: torch.Tensor) -> torch.Tensor:
        calls.append(float(value))
        return value

    losses = glip_losses(outputs, targets, CODER, num_gpus_avg=counting_average, text_mask=text_mask)
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    total = sum(losses.values())
    assert torch.isfinite(total)
    # Divided by max(0 positives, 1) = 1: the plain focal sum over the kept text positions.
    token_targets = torch.zeros((2, 320, 6))
    torch.testing.assert_close(
        losses["loss_dot_product_token"], token_sigmoid_focal_loss(outputs["token_logits"], token_targets, text_mask)
    )
    total.backward()
    assert outputs["token_logits"].grad.abs().sum() > 0
    assert outputs["box_regression"].grad is not None and outputs["box_regression"].grad.eq(0).all()
    assert outputs["centerness"].grad is not None and outputs["centerness"].grad.eq(0).all()
    # Same number of cross-rank averages as with positives, so distributed ranks stay in step.
    assert len(calls) == 2


def test_minimising_the_loss_on_fixed_features_decreases_it():
    torch.manual_seed(0)
    _, targets, text_mask = _scene()
    features = torch.randn((2, 320, 16))  # fixed per-anchor "features"
    box_head = torch.nn.Linear(16, 4)
    centerness_head = torch.nn.Linear(16, 1)
    token_head = torch.nn.Linear(16, 6)
    params = [*box_head.parameters(), *centerness_head.parameters(), *token_head.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.05)

    def losses() -> dict[str, torch.Tensor]:
        outputs = {
            "box_regression": box_head(features),
            "centerness": centerness_head(features).squeeze(-1),
            "token_logits": token_head(features),
        }
        return glip_losses(outputs, targets, CODER, text_mask=text_mask)

    initial = {name: value.item() for name, value in losses().items()}
    for _ in range(30):
        optimizer.zero_grad()
        loss = sum(losses().values())
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item())
    final = {name: value.item() for name, value in losses().items()}
    assert sum(final.values()) < 0.7 * sum(initial.values())
    # Not only the (dominant) token term: the box regression must improve as well.
    assert final["loss_reg"] < 0.7 * initial["loss_reg"]
    assert final["loss_centerness"] < initial["loss_centerness"]
