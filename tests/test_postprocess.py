"""Anchors, box coder, +1-IoU class-aware NMS, ATSS post-processing and the resize back to the image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision

from glip_label.model.anchors import cell_anchor, grid_anchors
from glip_label.model.box_coder import BoxCoder
from glip_label.model.postprocess import atss_postprocess, ml_nms, resize_boxes

STRIDES = (8, 16, 32, 64, 128)
SIZES = (64, 128, 256, 512, 1024)


# ----------------------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize(
    ("stride", "expected"),
    [
        (8, [-28, -28, 35, 35]),
        (16, [-56, -56, 71, 71]),
        (32, [-112, -112, 143, 143]),
        (64, [-224, -224, 287, 287]),
        (128, [-448, -448, 575, 575]),
    ],
)
def test_cell_anchor_legacy_plus_one(stride: int, expected: list[int]) -> None:
    anchor = cell_anchor(stride, 8 * stride)
    assert anchor.dtype == torch.float32
    assert anchor.tolist() == expected


def test_grid_anchors_layout_is_y_major() -> None:
    sizes = [(3, 5), (2, 3), (1, 2), (1, 1), (1, 1)]
    anchors = grid_anchors(sizes, STRIDES, SIZES)
    assert [tuple(a.shape) for a in anchors] == [(15, 4), (6, 4), (2, 4), (1, 4), (1, 4)]
    for (height, width), stride, size, level in zip(sizes, STRIDES, SIZES, anchors, strict=True):
        cell = cell_anchor(stride, size)
        for y in range(height):
            for x in range(width):
                shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=torch.float32)
                assert torch.equal(level[y * width + x], cell + shift)
    assert grid_anchors(sizes, STRIDES, SIZES, dtype=torch.float64)[0].dtype == torch.float64
    with pytest.raises(ValueError):
        grid_anchors(sizes[:2], STRIDES, SIZES)


@pytest.mark.parity
def test_grid_anchors_match_fixture(parity_dir) -> None:
    for case_dir in sorted((parity_dir / "cases").iterdir()):
        stored = np.load(case_dir / "postprocess_isolated.npz")
        levels = json.loads((case_dir / "postprocess_isolated.json").read_text())["levels"]  # p4..p7
        first = ["p3", "p4", "p5", "p6", "p7"].index(levels[0])
        feature_sizes = [tuple(stored[f"{lv}.box_regression"].shape[-2:]) for lv in levels]
        ours = grid_anchors(feature_sizes, STRIDES[first:], SIZES[first:])
        for lv, anchors in zip(levels, ours, strict=True):
            assert np.array_equal(anchors.numpy(), stored[f"{lv}.anchors_xyxy"]), (case_dir.name, lv)


# --------------------------------------------------------------------------------------------- box coder
def test_decode_zero_deltas_returns_the_anchor() -> None:
    anchors = torch.tensor([[-28.0, -28.0, 35.0, 35.0], [10.0, 20.0, 30.0, 60.0]])
    assert torch.equal(BoxCoder().decode(torch.zeros(2, 4), anchors), anchors)


def test_decode_hand_computed() -> None:
    # anchor [0, 0, 9, 19]: w 10, h 20 (+1), centre (4.5, 9.5)
    anchor = torch.tensor([[0.0, 0.0, 9.0, 19.0]])
    deltas = torch.tensor([[10.0, -5.0, 5.0 * math.log(2.0), 0.0]])  # dx = 1, dy = -0.5, w x2, h x1
    box = BoxCoder().decode(deltas, anchor)[0].tolist()
    # centre (14.5, -0.5), w 20, h 20 -> x 14.5 -+ 9.5, y -0.5 -+ 9.5
    assert box == pytest.approx([5.0, -10.0, 24.0, 9.0], abs=1e-5)


def test_decode_clamps_width_and_height_deltas() -> None:
    anchor = torch.tensor([[0.0, 0.0, 15.0, 15.0]])  # 16 x 16
    box = BoxCoder().decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchor)[0]
    width = (box[2] - box[0] + 1).item()
    assert width == pytest.approx(1000.0, rel=1e-5)  # exp(log(1000 / 16)) * 16
    assert torch.isfinite(box).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encode_decode_round_trip(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    anchors = grid_anchors([(6, 7)], (16,), (128,), dtype=dtype)[0]
    xy = torch.rand(len(anchors), 2, generator=generator, dtype=dtype) * 500
    wh = torch.rand(len(anchors), 2, generator=generator, dtype=dtype) * 300 + 2
    gt = torch.cat((xy, xy + wh), dim=1)
    coder = BoxCoder()
    deltas = coder.encode(gt, anchors)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(coder.decode(deltas, anchors), gt, rtol=0, atol=tolerance)
    # the +1 widths: a box equal to its anchor encodes to zero
    torch.testing.assert_close(coder.encode(anchors, anchors), torch.zeros_like(anchors), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------- NMS
def test_ml_nms_uses_plus_one_iou() -> None:
    # [0,0,9,9] vs [0,0,9,5.2]: +1 IoU = 10*6.2 / (10*10) = 0.62, plain IoU = 9*5.2 / (9*9) = 0.578.
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 5.2]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([1, 1])
    assert ml_nms(boxes, scores, labels, 0.6).tolist() == [0]
    assert torchvision.ops.nms(boxes, scores, 0.6).tolist() == [0, 1]  # plain IoU would keep both
    # Boxes sharing one pixel column: plain IoU 0, +1 IoU = (1*11) / (2*11*11 - 11) = 0.0476.
    touching = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10]], dtype=torch.float32)
    assert ml_nms(touching, scores, labels, 0.04).tolist() == [0]
    assert ml_nms(touching, scores, labels, 0.05).tolist() == [0, 1]
    # (The converse, plain IoU above and +1 IoU below a threshold, cannot happen for overlapping boxes:
    # adding 1 grows the intersection relatively more than either area.)


def test_ml_nms_suppresses_only_strictly_above_threshold() -> None:
    boundary = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 4]], dtype=torch.float32)  # +1 IoU exactly 50 / 100
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([3, 3])
    assert ml_nms(boundary, scores, labels, 0.5).tolist() == [0, 1]
    assert ml_nms(boundary, scores, labels, 0.4999).tolist() == [0]


def test_ml_nms_labels_never_suppress_each_other() -> None:
    boxes = torch.tensor([[0, 0, 10, 10]] * 4, dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    labels = torch.tensor([1, 2, 1, 3])
    # label 1: box 2 (0.7) beats box 0 (0.5); labels 2 and 3 have one box each
    assert ml_nms(boxes, scores, labels, 0.6).tolist() == [1, 2, 3]


def test_ml_nms_is_greedy_and_returns_ascending_indices() -> None:
    # best A suppresses B; B would suppress C but B is gone, and A-C do not overlap enough: C stays.
    boxes = torch.tensor([[20, 0, 29, 9], [0, 0, 9, 9], [5, 0, 14, 9], [10, 0, 19, 9]], dtype=torch.float32)
    scores = torch.tensor([0.1, 0.9, 0.8, 0.7])  # A = index 1, B = index 2, C = index 3, D = index 0
    labels = torch.ones(4, dtype=torch.long)
    # A-B +1 IoU 50/150 = 0.33; B-C 0.33; A-C 0; threshold 0.3: B removed by A, C kept, D (vs C: 0) kept
    assert ml_nms(boxes, scores, labels, 0.3).tolist() == [0, 1, 3]
    assert ml_nms(boxes[:0], scores[:0], labels[:0], 0.3).tolist() == []


def test_ml_nms_equals_torchvision_batched_nms_with_plus_one_boxes() -> None:
    generator = torch.Generator().manual_seed(0)
    for trial in range(5):
        n = 400
        xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
        wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 30 + 1
        boxes = torch.cat((xy, xy + wh), dim=1)
        scores = torch.rand(n, generator=generator, dtype=torch.float64)
        labels = torch.randint(1, 6, (n,), generator=generator)
        threshold = [0.3, 0.45, 0.5, 0.6, 0.7][trial]
        ours = ml_nms(boxes, scores, labels, threshold)
        shifted = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # +1 IoU == plain IoU here
        reference = torchvision.ops.batched_nms(shifted, scores, labels, threshold)
        assert ours.tolist() == sorted(reference.tolist())
        assert 0 < len(ours) < n


# ----------------------------------------------------------------------------------- ATSS post-processing
def _as_sorted_arrays(boxes, scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections in a canonical order (score, label, box), so that sets can be compared position by position."""
    boxes, scores, labels = (np.asarray(x) for x in (boxes, scores, labels))
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], labels, scores))
    return boxes[order], scores[order], labels[order]


def _assert_same_detections(result: dict, boxes, scores, labels, atol: float) -> None:
    got = _as_sorted_arrays(result["boxes"].numpy(), result["scores"].numpy(), result["labels"].numpy())
    expected = _as_sorted_arrays(boxes, scores, labels)
    assert len(got[0]) == len(expected[0])
    np.testing.assert_array_equal(got[2], expected[2])
    np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=atol)
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=atol)


def _load_isolated(case_dir, pad_tokens_to: int | None):
    stored = np.load(case_dir / "postprocess_isolated.npz")
    meta = json.loads((case_dir / "postprocess_isolated.json").read_text())
    positive_map = {
        int(label): tokens
        for label, tokens in json.loads((case_dir / "tokenization.json").read_text())[
            "positive_map_label_to_token"
        ].items()
    }
    regression, centerness, logits, anchors = [], [], [], []
    for level in meta["levels"]:
        regression.append(torch.from_numpy(stored[f"{level}.box_regression"]))
        centerness.append(torch.from_numpy(stored[f"{level}.centerness"]))
        valid = torch.from_numpy(stored[f"{level}.dot_product_logits_valid_cols"])  # [1, HW, n_valid]
        if pad_tokens_to is not None:  # the official map has 256 columns; those past n_valid are never read
            pad = torch.full((*valid.shape[:2], pad_tokens_to - valid.shape[2]), -1e4)
            valid = torch.cat((valid, pad), dim=2)
        logits.append(valid)
        anchors.append(torch.from_numpy(stored[f"{level}.anchors_xyxy"]))
    image_size = tuple(int(v) for v in stored["image_size_hw"])
    expected = (stored["out.boxes_xyxy"], stored["out.scores"], stored["out.labels"])
    return regression, centerness, logits, anchors, image_size, positive_map, expected


@pytest.mark.parity
@pytest.mark.parametrize("pad_tokens_to", [256, None])
def test_atss_postprocess_matches_official_isolated_case(parity_dir, pad_tokens_to) -> None:
    for case_dir in sorted((parity_dir / "cases").iterdir()):
        regression, centerness, logits, anchors, image_size, positive_map, expected = _load_isolated(
            case_dir, pad_tokens_to
        )
        assert len(expected[0]) > 0
        (result,) = atss_postprocess(regression, centerness, logits, anchors, [image_size], positive_map, 80)
        assert result["labels"].dtype == torch.long
        # Same fp32 inputs and the official op order: expected to agree exactly; 1e-5 leaves room for
        # one-ulp differences of the sigmoid between vectorised and scalar CPU code paths.
        _assert_same_detections(result, *expected, atol=1e-5)


def _official_transcription(
    box_regression, centerness, token_logits, anchors, image_sizes, positive_map, num_classes,
    pre_nms_thresh, pre_nms_top_n, nms_thresh, detections_per_img, score_agg,
):
    """A literal, unvectorised re-statement of the official ATSSPostProcessor (dense K-column scores, topk,
    per-label greedy NMS in Python, kthvalue cap), used to check the vectorised implementation. Also
    returns the largest candidate count of a level and the largest post-NMS count, to prove coverage."""
    coder = BoxCoder()
    per_image = [[] for _ in image_sizes]
    max_candidates = 0
    levels = zip(box_regression, centerness, token_logits, anchors, strict=True)
    for regression, center, logits, level_anchors in levels:
        batch, _, height, width = regression.shape
        probs = logits.sigmoid()
        scores = torch.zeros(batch, height * width, num_classes)
        for label, tokens in positive_map.items():
            selected = probs[:, :, torch.LongTensor(tokens)]
            scores[:, :, label - 1] = selected.mean(-1) if score_agg == "MEAN" else selected.max(-1)[0]
        deltas = regression.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        candidates = scores > pre_nms_thresh
        top_n = candidates.reshape(batch, -1).sum(1).clamp(max=pre_nms_top_n)
        max_candidates = max(max_candidates, int(candidates.reshape(batch, -1).sum(1).max()))
        scores = scores * center.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()[:, :, None]
        for i in range(batch):
            values, chosen = scores[i][candidates[i]].topk(int(top_n[i]), sorted=False)
            nonzero = candidates[i].nonzero()[chosen]
            boxes = coder.decode(deltas[i, nonzero[:, 0]], level_anchors[nonzero[:, 0]])
            h, w = image_sizes[i]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=w - 1)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=h - 1)
            per_image[i].append((boxes, values.sqrt(), nonzero[:, 1] + 1))
    results, max_after_nms = [], 0
    for parts in per_image:
        boxes = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        labels = torch.cat([p[2] for p in parts])
        kept = []
        for label in labels.unique().tolist():
            chosen = []
            for j in [int(k) for k in torch.argsort(scores, descending=True) if labels[k] == label]:
                a, others = boxes[j], boxes[chosen]
                iw = (torch.minimum(a[2], others[:, 2]) - torch.maximum(a[0], others[:, 0]) + 1).clamp(min=0)
                ih = (torch.minimum(a[3], others[:, 3]) - torch.maximum(a[1], others[:, 1]) + 1).clamp(min=0)
                inter = iw * ih
                area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
                area_o = (others[:, 2] - others[:, 0] + 1) * (others[:, 3] - others[:, 1] + 1)
                if not bool((inter / (area_o + area_a - inter) > nms_thresh).any()):
                    chosen.append(j)
            kept.extend(chosen)
        kept = sorted(kept)
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
        max_after_nms = max(max_after_nms, len(kept))
        if len(kept) > detections_per_img:
            threshold, _ = torch.kthvalue(scores, len(kept) - detections_per_img + 1)
            keep = scores >= threshold.item()
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results.append((boxes, scores, labels))
    return results, max_candidates, max_after_nms


def _synthetic_head_outputs(seed: int, image_sizes, num_tokens: int):
    """Random head outputs for a padded batch: dense enough for > 1000 candidates per level and > 100 boxes."""
    generator = torch.Generator().manual_seed(seed)
    padded_h = -(-max(h for h, _ in image_sizes) // 128) * 128
    padded_w = -(-max(w for _, w in image_sizes) // 128) * 128
    feature_sizes = [(-(-padded_h // s), -(-padded_w // s)) for s in STRIDES]
    batch = len(image_sizes)
    regression = [torch.randn(batch, 4, h, w, generator=generator) for h, w in feature_sizes]
    centerness = [torch.randn(batch, 1, h, w, generator=generator) for h, w in feature_sizes]
    logits = [torch.randn(batch, h * w, num_tokens, generator=generator) * 2 - 1.5 for h, w in feature_sizes]
    return regression, centerness, logits, grid_anchors(feature_sizes, STRIDES, SIZES)


@pytest.mark.parametrize("score_agg", ["MEAN", "MAX"])
def test_atss_postprocess_equals_literal_official_transcription(score_agg: str) -> None:
    image_sizes = [(300, 380), (256, 250)]
    positive_map = {1: [1, 2], 2: [4], 3: [6, 7, 8], 5: [10], 7: [12, 13], 80: [15]}
    regression, centerness, logits, anchors = _synthetic_head_outputs(1, image_sizes, num_tokens=17)
    settings = dict(num_classes=80, pre_nms_thresh=0.05, pre_nms_top_n=1000, nms_thresh=0.6,
                    detections_per_img=100, score_agg=score_agg)
    ours = atss_postprocess(regression, centerness, logits, anchors, image_sizes, positive_map, **settings)
    reference, max_candidates, max_after_nms = _official_transcription(
        regression, centerness, logits, anchors, image_sizes, positive_map, *settings.values()
    )
    assert max_candidates > 1000 and max_after_nms > 100  # the top-n cut and the kthvalue cap both ran
    for result, expected, (h, w) in zip(ours, reference, image_sizes, strict=True):
        assert len(result["scores"]) == 100
        _assert_same_detections(result, *(x.numpy() for x in expected), atol=0)
        assert result["boxes"][:, 0::2].max() <= w - 1 and result["boxes"][:, 1::2].max() <= h - 1
        assert result["boxes"].min() >= 0


def test_atss_postprocess_labels_beyond_class_columns() -> None:
    regression, centerness, logits, anchors = _synthetic_head_outputs(2, [(128, 128)], num_tokens=8)
    with pytest.raises(IndexError, match="num_classes"):
        atss_postprocess(regression, centerness, logits, anchors, [(128, 128)], {1: [1], 81: [3]}, 80)
    (result,) = atss_postprocess(regression, centerness, logits, anchors, [(128, 128)], {1: [1], 81: [3]}, 81)
    assert set(result["labels"].tolist()) <= {1, 81} and 81 in result["labels"].tolist()
    with pytest.raises(IndexError, match="token"):
        atss_postprocess(regression, centerness, logits, anchors, [(128, 128)], {1: [8]}, 80)


def test_atss_postprocess_reads_only_mapped_tokens_and_breaks_ties_by_position() -> None:
    regression, centerness, logits, anchors = _synthetic_head_outputs(3, [(128, 128)], num_tokens=6)
    logits = [torch.zeros_like(x) for x in logits]  # every probability 0.5: all scores tie
    logits[0][:, :, 5] = float("nan")  # a column no label reads must not matter
    centerness = [torch.zeros_like(x) for x in centerness]
    regression = [torch.zeros_like(x) for x in regression]  # boxes = anchors
    first = atss_postprocess(regression, centerness, logits, anchors, [(128, 128)], {1: [2]}, 80,
                             pre_nms_top_n=3, nms_thresh=0.0)[0]
    again = atss_postprocess(regression, centerness, logits, anchors, [(128, 128)], {1: [2]}, 80,
                             pre_nms_top_n=3, nms_thresh=0.0)[0]
    assert all(torch.equal(first[k], again[k]) for k in first)
    # per level, the first three locations in y-major order are taken (levels with fewer take all of them)
    expected_per_level = [min(3, len(a)) for a in anchors]
    assert len(first["scores"]) == sum(expected_per_level)
    assert torch.allclose(first["scores"], torch.full_like(first["scores"], 0.5))  # sqrt(0.5 * 0.5)
    clipped = [a[: min(3, len(a))].clamp(min=0, max=127) for a in anchors]
    assert torch.equal(first["boxes"], torch.cat(clipped))


def test_atss_postprocess_without_candidates_returns_empty_results() -> None:
    regression, centerness, logits, anchors = _synthetic_head_outputs(4, [(128, 128), (64, 96)], num_tokens=4)
    logits = [torch.full_like(x, -20.0) for x in logits]
    results = atss_postprocess(regression, centerness, logits, anchors, [(128, 128), (64, 96)], {1: [1]}, 80)
    assert [tuple(r["boxes"].shape) for r in results] == [(0, 4), (0, 4)]
    assert all(r["labels"].dtype == torch.long for r in results)
    empty_map = atss_postprocess(regression, centerness, logits, anchors, [(128, 128), (64, 96)], {}, 80)
    assert all(len(r["scores"]) == 0 for r in empty_map)


# -------------------------------------------------------------------------------------------- resize back
def test_resize_boxes_common_and_separate_ratios() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert resize_boxes(boxes, (800, 800), (400, 400)).tolist() == [[5.0, 10.0, 15.0, 20.0]]
    assert resize_boxes(boxes, (1066, 800), (640, 480))[0].tolist() == pytest.approx(
        [10.0 * 640 / 1066, 20.0 * 0.6, 30.0 * 640 / 1066, 40.0 * 0.6], rel=1e-6
    )


@pytest.mark.parity
def test_resize_boxes_matches_official_predictions(parity_dir) -> None:
    for case_dir in sorted((parity_dir / "cases").iterdir()):
        predictions = json.loads((case_dir / "predictions.json").read_text())
        resized = torch.tensor(predictions["predictions_resized_image_coords"]["boxes_xyxy"], dtype=torch.float32)
        height, width = predictions["resized_size_hw"]
        ours = resize_boxes(resized, (width, height), tuple(predictions["original_size_wh"]))
        expected = np.asarray(predictions["predictions"]["boxes_xyxy"], dtype=np.float32)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)
