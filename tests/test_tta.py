"""Test-time augmentation: the merge functions on known boxes, un-flipping, and the views through a predictor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from glip_label.records import Detections
from glip_label.tta import TTAOptions, at_test_scale, merge_nms, merge_wbf, parse_scales, predict_tta, unflip

PHRASES = ["cat", "dog"]


def _det(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, dtype=float), scores, labels, PHRASES)


def test_merge_nms_is_class_wise():
    view_a = _det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.5], [0, 1])
    view_b = _det([[1, 1, 11, 11], [40, 40, 50, 50]], [0.7, 0.6], [0, 0])
    merged = merge_nms([view_a, view_b], iou=0.6, max_detections=100)
    # the 0.7 cat overlaps the 0.9 cat (IoU 100/142 = 0.70) and goes; the dog at the same place stays
    assert merged.scores.tolist() == [0.9, 0.6, 0.5]
    assert merged.labels.tolist() == [0, 0, 1]
    assert len(merge_nms([view_a, view_b], iou=0.6, max_detections=2)) == 2


def test_merge_wbf_averages_agreeing_boxes_and_damps_lonely_ones():
    view_a = _det([[0, 0, 10, 10], [40, 40, 50, 50]], [0.8, 0.5], [0, 0])
    view_b = _det([[1, 1, 11, 11], [0, 0, 10, 10]], [0.4, 0.3], [0, 1])
    merged = merge_wbf([view_a, view_b], iou=0.6, max_detections=100)
    by_score = {round(float(s), 6): (b.tolist(), int(label))
                for b, s, label in zip(merged.boxes, merged.scores, merged.labels, strict=True)}
    # cats at the same place: box weighted by score (0.8, 0.4), score mean * 2/2
    box, label = by_score[0.6]
    np.testing.assert_allclose(box, [1 / 3, 1 / 3, 31 / 3, 31 / 3])
    assert label == 0
    assert by_score[0.25] == ([40, 40, 50, 50], 0)  # one view of two: 0.5 * 1/2
    assert by_score[0.15] == ([0, 0, 10, 10], 1)  # the dog does not fuse with the cats
    assert len(merged) == 3


def test_unflip_is_its_own_inverse():
    det = _det([[0, 5, 9, 20], [30, 0, 99, 9]], [0.5, 0.4], [0, 1])
    flipped = unflip(det, width=100)
    np.testing.assert_allclose(flipped.boxes, [[90, 5, 99, 20], [0, 0, 69, 9]])
    np.testing.assert_allclose(unflip(flipped, width=100).boxes, det.boxes)


def test_options_are_checked():
    with pytest.raises(ValueError, match="tta-merge"):
        TTAOptions(merge="mean")
    with pytest.raises(ValueError, match="tta-scales"):
        TTAOptions(scales=())
    assert parse_scales("0.5, 1,2") == (0.5, 1.0, 2.0)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_scales("big")
    assert TTAOptions(scales=(0.5, 1.0)).views == [(0.5, False), (0.5, True), (1.0, False), (1.0, True)]


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from glip_label.predictor import load_model

    return load_model(tiny_checkpoint)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((160, 120), (96, 128))]


def test_one_view_is_the_plain_prediction(predictor):
    images = _images()
    plain = predictor.predict(images, PHRASES, threshold=0.0, batch_size=2)
    one_view = predict_tta(predictor, images, PHRASES, TTAOptions(scales=(1.0,), hflip=False, iou=1.0),
                           batch_size=2)
    for a, b in zip(plain, one_view, strict=True):
        a = a.sorted_by_score()
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_views_change_the_input_size_and_results_are_deterministic(predictor):
    config = predictor.config
    with at_test_scale(predictor, 0.5):
        assert predictor.config.min_size_test == round(config.min_size_test * 0.5)
        batch, _ = predictor.preprocess(_images()[:1])
    assert predictor.config is config
    assert max(batch.shape[-2:]) < max(predictor.preprocess(_images()[:1])[0].shape[-2:])
    options = TTAOptions(scales=(0.8, 1.0), merge="wbf")
    # Same batch size both times: a batch pads its images to the largest, so batch 1 and batch 2 of these
    # two differently sized pictures legitimately differ (GLIPPredictor.predict's docstring; plain predict too).
    first = predict_tta(predictor, _images(), PHRASES, options, batch_size=2)
    again = predict_tta(predictor, _images(), PHRASES, options, batch_size=2)
    for a, b in zip(first, again, strict=True):
        assert len(a) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        for box in a.boxes:
            assert box[0] <= box[2] and box[1] <= box[3]
