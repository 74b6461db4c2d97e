"""Parity with the official GLIP code (../shared/fixtures/glip-parity, made by microsoft/GLIP on CPU).

The fixture's generator writes an official-format GLIP-T checkpoint; we load it strictly and compare, for
every case, the final detections (as sets: the official order is not sorted) and the sampled values of every
recorded intermediate tensor, so that a divergence names the module that causes it. Tolerances are the
fixture README's suggestions for an independent fp32 re-implementation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glip_label.model.dyhead import DyConv
from glip_label.model.fusion import VLFuse
from glip_label.predictor import GLIPPredictor, load_model

pytestmark = pytest.mark.parity

CASES = ["astronaut_det", "astronaut_caption", "coffee_det", "coffee_caption"]
BOX_TOL = 0.05  # px, original image coordinates
SCORE_TOL = 1e-4


# How a user names the architecture: the preset, the fixture's own official yaml, or nothing at all (the
# checkpoint carries no metadata: the architecture is recognised from its keys and shapes).
CONFIG_CHOICES = ["preset", "official-yaml", "none"]


def _config_for(choice: str, parity_dir: Path) -> str | None:
    return {"preset": "glip-t", "official-yaml": str(parity_dir / "config" / "glip_Swin_T_O365_GoldG.yaml"),
            "none": None}[choice]


@pytest.fixture(scope="session", params=CONFIG_CHOICES)
def parity_predictor(request, parity_dir: Path, parity_checkpoint: Path) -> GLIPPredictor:
    torch.set_num_threads(2)
    return load_model(parity_checkpoint, config=_config_for(request.param, parity_dir))


def _case(parity_dir: Path, name: str) -> dict:
    cases = {c["case"]: c for c in json.loads((parity_dir / "cases.json").read_text())}
    return cases[name]


def _prompt_args(case: dict) -> dict:
    if "classes" in case:
        return {"prompt": case["classes"]}
    return {"prompt": case["caption"], "spans": [[tuple(s)] for s in case["spans"]]}


class Recorder:
    """Forward hooks that collect the tensors the fixture summarises, under the fixture's names."""

    def __init__(self, predictor: GLIPPredictor) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        model = predictor.model
        self.handles = [
            model.backbone.body.register_forward_hook(
                lambda m, i, o: self.tensors.update({f"swin.stage{j + 1}": t for j, t in enumerate(o)})),
            model.backbone.fpn.register_forward_hook(
                lambda m, i, o: self.tensors.update({f"fpn.p{j + 3}": t for j, t in enumerate(o)})),
            model.backbone.register_forward_pre_hook(
                lambda m, i: self.tensors.update({"input.image_tensor": i[0]})),
            model.language_backbone.register_forward_hook(
                lambda m, i, o: self.tensors.update({"bert.last_hidden": o.hidden, "bert.embedded": o.embedded})),
            model.rpn.head.register_forward_hook(self._head),
        ]
        for k, block in enumerate(model.rpn.head.dyhead_tower):
            self.handles.append(block.register_forward_hook(self._tower_hook(k, block)))

    def _tower_hook(self, k: int, block: torch.nn.Module):
        def hook(module, inputs, output):
            if isinstance(block, VLFuse):
                self.tensors.update({f"tower.{k:02d}.fusion.p{j + 3}": t for j, t in enumerate(output[0])})
                self.tensors[f"tower.{k:02d}.fusion.lang_hidden"] = output[1]
            elif isinstance(block, DyConv):
                self.tensors.update({f"tower.{k:02d}.dyconv.p{j + 3}": t for j, t in enumerate(output)})
            else:
                self.tensors[f"tower.{k:02d}.bert_layer.lang_hidden"] = output
        return hook

    def _head(self, module, inputs, output) -> None:
        for level, (box, ctr, logits) in enumerate(
            zip(output.box_regression, output.centerness, output.token_logits, strict=True)
        ):
            self.tensors[f"head.bbox_reg.p{level + 3}"] = box
            self.tensors[f"head.centerness.p{level + 3}"] = ctr
            self.tensors[f"head.dot_logits.p{level + 3}"] = logits

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _tolerance(name: str, std: float) -> float:
    if name.startswith("head.dot_logits"):
        return 1e-3
    if name.startswith(("input.", "swin.", "bert.", "fpn.")):
        return 1e-4 * std
    return 1e-3 * std


def _compare_intermediates(parity_dir: Path, case: str, got: dict[str, torch.Tensor], n_valid: int) -> list[str]:
    meta = json.loads((parity_dir / "cases" / case / "intermediates.json").read_text())
    samples = np.load(parity_dir / "cases" / case / "intermediates.npz")
    problems = []
    for name, info in meta.items():
        source = name
        if name.startswith("head.dot_logits_valid_tokens"):
            source = name.replace("dot_logits_valid_tokens", "dot_logits")
        if source not in got:
            problems.append(f"{name}: not produced")
            continue
        tensor = got[source].detach().float()
        idx = samples[name + "__idx"].astype(np.int64)
        expected = samples[name + "__val"]
        shape = info["shape"]
        if list(tensor.shape) != shape:
            # The fast path has only the valid prompt tokens: compare the sampled positions that fall inside them.
            text_axis = 1 if (name.startswith("bert.") or "lang_hidden" in name) else 2
            if not (name.startswith(("bert.", "head.dot_logits")) or "lang_hidden" in name):
                problems.append(f"{name}: shape {list(tensor.shape)} != {shape}")
                continue
            coords = np.stack(np.unravel_index(idx, shape), axis=1)
            keep = coords[:, text_axis] < tensor.shape[text_axis]
            if tensor.shape[text_axis] != n_valid and shape[text_axis] != tensor.shape[text_axis]:
                problems.append(f"{name}: text axis {tensor.shape[text_axis]} is neither {n_valid} nor {shape}")
                continue
            idx = np.ravel_multi_index(tuple(coords[keep].T), tuple(tensor.shape))
            expected = expected[keep]
        diff = np.abs(tensor.flatten()[torch.from_numpy(idx)].numpy() - expected).max(initial=0.0)
        if diff > _tolerance(name, info["std"]):
            problems.append(f"{name}: max |diff| {diff:.3g} > {_tolerance(name, info['std']):.3g}")
    return problems


def _match_detections(expected: dict, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[str]:
    """Greedy set matching: each official box needs one of ours with the same label, close box and score."""
    exp_boxes = np.asarray(expected["boxes_xyxy"])
    exp_scores = np.asarray(expected["scores"])
    exp_labels = np.asarray(expected["labels"]) - 1  # official labels are 1-based
    free = np.ones(len(scores), dtype=bool)
    unmatched = []
    for i in np.argsort(-exp_scores, kind="stable"):
        ok = free & (labels == exp_labels[i]) & (np.abs(scores - exp_scores[i]) <= SCORE_TOL)
        ok &= np.abs(boxes - exp_boxes[i]).max(axis=1) <= BOX_TOL
        if ok.any():
            candidates = np.flatnonzero(ok)
            free[candidates[np.argmin(np.abs(scores[candidates] - exp_scores[i]))]] = False
        else:
            unmatched.append(f"official #{i} label {exp_labels[i]} score {exp_scores[i]:.6f} box {exp_boxes[i]}")
    extra = [f"ours label {labels[j]} score {scores[j]:.6f} box {boxes[j]}" for j in np.flatnonzero(free)]
    return unmatched + extra


@pytest.mark.parametrize("case", CASES)
def test_fast_path_matches_official(parity_dir: Path, parity_predictor: GLIPPredictor, case: str):
    info = _case(parity_dir, case)
    expected = json.loads((parity_dir / "cases" / case / "predictions.json").read_text())
    n_valid = json.loads((parity_dir / "cases" / case / "tokenization.json").read_text())["n_valid_tokens"]
    recorder = Recorder(parity_predictor)
    try:
        parity_predictor._text_cache.clear()  # so the BERT hook sees this case's prompt
        det = parity_predictor.predict(parity_dir / "inputs" / info["image"], threshold=0.0, **_prompt_args(info))
    finally:
        recorder.remove()
    assert _compare_intermediates(parity_dir, case, recorder.tensors, n_valid) == []
    assert len(det) == expected["n_detections"]
    assert _match_detections(expected["predictions"], det.boxes, det.scores, det.labels) == []


def test_official_like_mode_matches_official_with_padded_prompt(parity_dir: Path, parity_checkpoint: Path):
    """The baseline mode (prompt padded to 256, re-encoded per image) reproduces all 256 token columns."""
    predictor = load_model(parity_checkpoint, config="glip-t", pad_prompt=True, cache_text=False)
    case = "coffee_det"
    info = _case(parity_dir, case)
    expected = json.loads((parity_dir / "cases" / case / "predictions.json").read_text())
    recorder = Recorder(predictor)
    try:
        det = predictor.predict(parity_dir / "inputs" / info["image"], threshold=0.0, **_prompt_args(info))
    finally:
        recorder.remove()
    assert recorder.tensors["head.dot_logits.p3"].shape[-1] == 256
    assert _compare_intermediates(parity_dir, case, recorder.tensors, 256) == []
    assert _match_detections(expected["predictions"], det.boxes, det.scores, det.labels) == []


@pytest.mark.parametrize("config_choice", CONFIG_CHOICES)
def test_checkpoint_loads_strictly_and_drops_only_known_keys(parity_dir: Path, parity_checkpoint: Path,
                                                             config_choice: str):
    from glip_label.weights import read_checkpoint

    state = read_checkpoint(parity_checkpoint)
    assert len(state) == 746 and not any(k.startswith("module.") for k in state)
    predictor = load_model(parity_checkpoint, config=_config_for(config_choice, parity_dir))
    model_keys = set(predictor.model.state_dict())
    dropped = sorted(set(state) - model_keys)
    assert dropped == sorted(
        ["language_backbone.body.model.embeddings.position_ids", "rpn.head.cls_logits.weight",
         "rpn.head.cls_logits.bias"] + [f"rpn.anchor_generator.cell_anchors.{i}" for i in range(5)]
    )
    sd = predictor.model.state_dict()
    for key in ("rpn.head.bias0", "backbone.body.layers.2.blocks.5.attn.qkv.weight",
                "rpn.head.dyhead_tower.16.output.dense.bias"):
        assert torch.equal(sd[key], state[key])
