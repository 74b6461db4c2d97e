"""Large vocabularies: the image's features are computed once and reused by every prompt chunk (issue 17).

The reuse must not change a single number: predictions with `reuse_features=True` (the default) equal
those of the per-chunk computation (`reuse_features=False`, the whole network once per chunk, as the
official code runs LVIS), on the parity checkpoint (fusion) and on heads without fusion, where the
tower, boxes and centerness are shared as well.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip_label.config import PRESETS
from glip_label.model.glip import GLIP
from glip_label.predictor import GLIPPredictor, load_model
from glip_label.text.prompts import chunk_phrases

REPO = Path(__file__).resolve().parents[1]


def _vocabulary(first: list[str], min_chunks: int, predictor: GLIPPredictor) -> list[str]:
    """`first` followed by LVIS names, long enough to split into at least `min_chunks` prompt chunks."""
    lvis = [n.strip() for n in (REPO / "prompts" / "lvis.txt").read_text().splitlines() if n.strip()]
    names = list(first) + [n for n in lvis if n not in first]
    for size in range(len(first) + 20, len(names), 20):
        if len(chunk_phrases(names[:size], max_len=predictor.config.max_query_len)) >= min_chunks:
            return names[:size]
    raise AssertionError("LVIS is too short for the requested number of chunks")


def _assert_same_detections(images, names: list[str], predictor: GLIPPredictor) -> int:
    predictor.reuse_features = True
    reused = predictor.predict(images, names, threshold=0.0, batch_size=len(images))
    predictor.reuse_features = False
    per_chunk = predictor.predict(images, names, threshold=0.0, batch_size=len(images))
    predictor.reuse_features = True
    boxes = 0
    for a, b in zip(reused, per_chunk, strict=True):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)
        boxes += len(a)
    return boxes


def _assert_same_head_outputs(predictor: GLIPPredictor, images: list[Image.Image], names: list[str]) -> None:
    batch, _ = predictor.preprocess(images)
    with torch.inference_mode():
        visual = predictor._encode_images(batch)
        for chunk in predictor.encode_prompt(names):
            reused, per_chunk = predictor._decode(visual, chunk.text), predictor._forward(batch, chunk.text)
            for field in ("box_regression", "centerness", "token_logits"):
                for x, y in zip(getattr(reused, field), getattr(per_chunk, field), strict=True):
                    assert torch.equal(x, y), field


def test_parity_checkpoint_chunks_reuse_features_exactly(parity_dir: Path, parity_checkpoint: Path):
    """GLIP-T (fusion): backbone + FPN once, fusion and head per chunk; at least 3 chunks, same detections."""
    torch.set_num_threads(2)
    predictor = load_model(parity_checkpoint, config="glip-t")
    cases = {c["case"]: c for c in json.loads((parity_dir / "cases.json").read_text())}
    names = _vocabulary(cases["coffee_det"]["classes"], 3, predictor)
    assert len(predictor.encode_prompt(names)) >= 3
    boxes = _assert_same_detections([parity_dir / "inputs" / "coffee.png"], names, predictor)
    assert boxes > 0


def test_heads_without_fusion_share_tower_boxes_and_centerness():
    """No early fusion (glip-tiny built as GLIP-T(A) is): only the token dot product runs per chunk."""
    config = dataclasses.replace(PRESETS["glip-tiny"], early_fuse=False, fused_features_dot_product=False,
                                 min_size_test=256, max_size_test=400)
    torch.manual_seed(0)
    model = GLIP(config)
    with torch.no_grad():
        model.rpn.head.bias0.fill_(0.0)  # candidate boxes above the 0.05 floor, as a trained model has
    predictor = GLIPPredictor(model)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((240, 320), (200, 300))]
    names = _vocabulary(["person", "cup"], 3, predictor)
    visual = predictor._encode_images(predictor.preprocess(images)[0])
    assert all(v.tower is not None and v.box_regression is not None for v in visual)
    _assert_same_head_outputs(predictor, images, names)
    assert _assert_same_detections(images, names, predictor) > 0


def test_fused_head_refuses_a_text_free_tower():
    model = GLIP(PRESETS["glip-tiny"])
    assert model.rpn.head.tower_uses_text
    with pytest.raises(ValueError, match="fuses text"):
        model.rpn.head.run_visual_tower([torch.zeros(1, model.config.channels, 4, 4)])
