"""Checkpoint resolution, reading, strict loading, saving and conversion (the glip_label/weights package).

Small stand-in modules with official GLIP key names exercise the mechanics; the key-map tests check
the real GLIP model against the official key lists (fixture list from the official code, and the
derived lists of ../shared/docs) without loading any real weights.
"""

from __future__ import annotations

import functools
import json
import re
import socket
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from glip_label.config import PRESETS, get_preset
from glip_label.weights import (
    HUB_FILES,
    HUB_REPO,
    CheckpointError,
    CheckpointMismatchError,
    WeightsNotAvailableError,
    convert_weights,
    diff_state_shapes,
    guess_preset,
    is_ignorable_key,
    load_state_dict_strict,
    open_checkpoint,
    read_checkpoint,
    read_config_metadata,
    resolve_weights,
    save_checkpoint,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KEY_LISTS = SHARED / "docs" / "glip-state-dict-keys.txt"
DOC_SECTIONS = {"glip-t": "GLIP-T(B/C/full)", "glip-t-a": "GLIP-T(A)", "glip-l": "GLIP-L"}

Spec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]

# A few official GLIP names: float weights, an int64 Swin index buffer, the BERT position table
# (which makes save_checkpoint add position_ids) and a head scalar.
STAND_IN: Spec = {
    "backbone.body.patch_embed.proj.weight": ((8, 3, 4, 4), torch.float32),
    "backbone.body.layers.0.blocks.0.attn.relative_position_index": ((4, 4), torch.int64),
    "language_backbone.body.model.embeddings.position_embeddings.weight": ((16, 8), torch.float32),
    "rpn.head.bbox_pred.weight": ((4, 8, 1, 1), torch.float32),
    "rpn.head.bbox_pred.bias": ((4,), torch.float32),
    "rpn.head.log_scale": ((1,), torch.float32),
}


def module_from_spec(spec: Spec, seed: int = 0, device: str = "cpu") -> nn.Module:
    """An nn.Module whose state_dict has exactly `spec`'s keys, shapes and dtypes."""
    root = nn.Module()
    generator = torch.Generator().manual_seed(seed)
    for key, (shape, dtype) in spec.items():
        *path, leaf = key.split(".")
        parent = root
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        if device == "meta":
            tensor = torch.empty(shape, dtype=dtype, device="meta")
        elif dtype.is_floating_point:
            tensor = torch.randn(shape, generator=generator).to(dtype)
        else:
            tensor = torch.randint(0, 100, shape, generator=generator).to(dtype)
        if dtype.is_floating_point:
            parent.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
        else:
            parent.register_buffer(leaf, tensor)
    return root


def _parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in re.findall(r"\d+", text))


def fixture_key_list(parity_dir: Path) -> dict[str, tuple[int, ...]]:
    """glip_t_keys.txt of the parity fixture (read from the official model): key<TAB>shape<TAB>dtype."""
    shapes = {}
    for line in (parity_dir / "glip_t_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            shapes[key] = _parse_shape(shape)
    return shapes


@functools.cache
def doc_key_list(section: str) -> dict[str, tuple[int, ...]]:
    """One section ("## GLIP-L", ...) of the derived key lists: "module.key (shape)" lines."""
    if not KEY_LISTS.exists():
        pytest.skip(f"derived key lists not found at {KEY_LISTS}")
    shapes, inside = {}, False
    for line in KEY_LISTS.read_text().splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == section
        elif inside and line.startswith("module."):
            key, shape = line.split(" ", 1)
            shapes[key] = _parse_shape(shape)
    assert shapes, f"section {section!r} not found in {KEY_LISTS}"
    return shapes


def strip_module(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k.removeprefix("module."): v for k, v in shapes.items()}


def _official_dtype(key: str) -> torch.dtype:
    integer = key.endswith(("relative_position_index", "position_ids"))
    return torch.int64 if integer else torch.float32


def meta_state(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Official-shaped tensors that cost nothing: enough for every check before the copy."""
    return {k: torch.empty(s, dtype=_official_dtype(k), device="meta") for k, s in shapes.items()}


def official_spec(shapes: Mapping[str, tuple[int, ...]]) -> Spec:
    """The model side of an official key list: what the GLIP module keeps (no ignorable keys)."""
    return {k: (s, _official_dtype(k)) for k, s in strip_module(shapes).items() if not is_ignorable_key(k)}


def write_official(path: Path, state: Mapping[str, torch.Tensor], **extra) -> None:
    torch.save({"model": {"module." + k: v for k, v in state.items()}, **extra}, path)


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a socket."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert not attempts, f"tests must not reach the network: {attempts}"


def _set_offline(monkeypatch, offline: bool) -> None:
    from huggingface_hub import constants

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


# ---------------------------------------------------------------------------------------------
# resolve_weights


def test_hub_names_cover_spec_files_and_existing_presets():
    assert HUB_REPO == "GLIPModel/GLIP"
    assert HUB_FILES["glip-t"] == ("glip_tiny_model_o365_goldg_cc_sbu.pth", "glip-t")
    assert HUB_FILES["glip-t-a"] == ("glip_a_tiny_o365.pth", "glip-t-a")
    assert HUB_FILES["glip-l"] == ("glip_large_model.pth", "glip-l")
    assert {preset for _, preset in HUB_FILES.values()} <= set(PRESETS)


def test_resolve_existing_local_file_wins_over_names(tmp_path, monkeypatch, no_network):
    local = tmp_path / "glip-t"  # same text as a hub name: the file must win
    local.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("glip-t") == (Path("glip-t"), None)
    assert resolve_weights(local) == (local, None)


def test_resolve_unknown_name_lists_known_names(no_network):
    with pytest.raises(ValueError) as info:
        resolve_weights("glip-xl")
    message = str(info.value)
    assert "glip-xl" in message and all(name in message for name in HUB_FILES)


def test_resolve_missing_path_is_file_not_found(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights(tmp_path / "nope.pth")


def test_resolve_offline_and_not_cached_says_how_to_get_the_file(tmp_path, monkeypatch, no_network):
    _set_offline(monkeypatch, True)
    cache = tmp_path / "hub-cache"
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights("glip-l", cache_dir=cache)
    message = str(info.value)
    assert "glip_large_model.pth" in message and HUB_REPO in message
    assert "HF_HUB_OFFLINE" in message and "local path" in message and "hf download" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_resolve_offline_finds_a_cached_file(tmp_path, monkeypatch, no_network):
    _set_offline(monkeypatch, True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--GLIPModel--GLIP"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    cached = repo / "snapshots" / commit / "glip_tiny_model_o365.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    path, preset = resolve_weights("glip-t-b", cache_dir=tmp_path)
    assert preset == "glip-t" and path.read_bytes() == b"weights"


def test_resolve_downloads_with_revision_and_cache_dir(tmp_path, monkeypatch, no_network):
    _set_offline(monkeypatch, False)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tmp_path / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    path, preset = resolve_weights("glip-t-a", revision="abc123", cache_dir=tmp_path)
    assert (path, preset) == (tmp_path / "glip_a_tiny_o365.pth", "glip-t-a")
    ((repo_id, filename, kwargs),) = calls
    assert (repo_id, filename) == (HUB_REPO, "glip_a_tiny_o365.pth")
    assert kwargs["revision"] == "abc123" and kwargs["cache_dir"] == tmp_path
    assert kwargs["local_files_only"] is False


def _hub_http_client():
    """The HTTP client huggingface_hub uses: httpx2 (hub 2.x) or httpx (hub 1.x)."""
    for name in ("httpx2", "httpx"):
        try:
            return __import__(name)
        except ImportError:
            continue
    pytest.skip("huggingface_hub uses neither httpx2 nor httpx here")


def test_resolve_download_failure_is_one_clear_error_without_http_traceback(monkeypatch, no_network):
    http_client = _hub_http_client()
    _set_offline(monkeypatch, False)

    def failing_download(*args, **kwargs):
        raise http_client.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", failing_download)
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights("glip-t")
    message = str(info.value)
    assert "glip_tiny_model_o365_goldg_cc_sbu.pth" in message and "ConnectError" in message
    assert "local path" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------------------------------------
# read_checkpoint


def test_read_official_snapshot_takes_model_and_strips_prefix(tmp_path):
    model, ema = module_from_spec(STAND_IN, seed=1), module_from_spec(STAND_IN, seed=2)
    path = tmp_path / "snapshot.pth"
    write_official(
        path,
        model.state_dict(),
        model_ema={"module." + k: v for k, v in ema.state_dict().items()},
        optimizer={"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
        scheduler={"last_epoch": 7, "warmup_method": "linear"},
        iteration=7,
    )
    state = read_checkpoint(path)
    assert set(state) == set(STAND_IN)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    ema_state = read_checkpoint(path, prefer="model_ema")
    assert torch.equal(ema_state["rpn.head.bbox_pred.weight"], ema.rpn.head.bbox_pred.weight)
    assert not torch.equal(ema_state["rpn.head.bbox_pred.weight"], state["rpn.head.bbox_pred.weight"])


def test_prefix_stripped_only_when_every_key_has_it(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"model": {"module.a": torch.zeros(1), "b": torch.zeros(1)}}, path)
    assert set(read_checkpoint(path)) == {"module.a", "b"}


def test_bare_state_dict_and_legacy_non_zip_file_are_read(tmp_path):
    bare, legacy = tmp_path / "bare.pt", tmp_path / "legacy.pth"
    torch.save({"module.w": torch.arange(3.0)}, bare)
    torch.save({"model": {"w": torch.arange(3.0)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(bare)["w"], torch.arange(3.0))
    assert torch.equal(read_checkpoint(legacy)["w"], torch.arange(3.0))


def test_missing_model_ema_falls_back_to_model_with_a_warning(tmp_path):
    path = tmp_path / "no_ema.pth"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    with pytest.warns(UserWarning, match="model_ema"):
        state = read_checkpoint(path, prefer="model_ema")
    assert torch.equal(state["w"], torch.ones(2))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    save_checkpoint(module_from_spec(STAND_IN), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_garbage_and_empty_files_are_clear_errors(tmp_path, suffix):
    garbage, empty = tmp_path / f"garbage{suffix}", tmp_path / f"empty{suffix}"
    garbage.write_bytes(bytes(range(256)) * 20)
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt") as info:
        read_checkpoint(garbage)
    assert str(garbage) in str(info.value)
    with pytest.raises(CheckpointError, match="empty") as info:
        read_checkpoint(empty)
    assert str(empty) in str(info.value)


class NotATensor:
    """A class weights_only unpickling refuses (any arbitrary global would do)."""


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "weights_only" in message and "NotATensor" in message


def test_dict_without_state_dict_and_missing_file(tmp_path):
    path = tmp_path / "optimizer_only.pth"
    torch.save({"optimizer": {"state": {}}, "iteration": 5}, path)
    with pytest.raises(CheckpointError, match="no model state dict") as info:
        read_checkpoint(path)
    assert "'optimizer'" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does_not_exist.pth"):
        read_checkpoint(tmp_path / "does_not_exist.pth")


# ---------------------------------------------------------------------------------------------
# load_state_dict_strict and guess_preset


def test_strict_load_copies_casts_and_drops_only_ignorable_keys(tmp_path):
    source, target = module_from_spec(STAND_IN, seed=1), module_from_spec(STAND_IN, seed=2)
    state = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state.update(
        {
            "rpn.head.cls_logits.weight": torch.zeros(80, 8, 1, 1),
            "rpn.anchor_generator.cell_anchors.0": torch.zeros(1, 4),
            "language_backbone.body.model.embeddings.position_ids": torch.arange(16)[None],
            "language_backbone.body.model.pooler.dense.weight": torch.zeros(8, 8),
        }
    )
    load_state_dict_strict(target, state, "fp16.pth")
    loaded = target.state_dict()
    assert loaded["rpn.head.bbox_pred.weight"].dtype == torch.float32
    assert torch.equal(loaded["rpn.head.bbox_pred.weight"], state["rpn.head.bbox_pred.weight"].float())
    index = "backbone.body.layers.0.blocks.0.attn.relative_position_index"
    assert loaded[index].dtype == torch.int64 and torch.equal(loaded[index], source.state_dict()[index])


def test_all_problems_reported_in_one_error(tmp_path):
    model = module_from_spec(STAND_IN)
    state = dict(module_from_spec(STAND_IN).state_dict())
    del state["rpn.head.log_scale"]
    state["rpn.head.bbox_pred.weight"] = torch.zeros(5, 8, 1, 1)
    for i in range(25):
        state[f"rpn.head.extra_{i}.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        load_state_dict_strict(model, state, "my_weights.pth")
    message = str(info.value)
    assert message.startswith("my_weights.pth:")
    assert "1 missing keys" in message and "rpn.head.log_scale" in message
    assert "25 unexpected keys" in message and "... and 5 more" in message
    assert "1 shape mismatches" in message and "checkpoint [5, 8, 1, 1] vs model [4, 8, 1, 1]" in message
    assert isinstance(info.value, CheckpointMismatchError) and len(info.value.diff.unexpected) == 25
    assert torch.equal(model.state_dict()["rpn.head.log_scale"], module_from_spec(STAND_IN).rpn.head.log_scale)


def test_float_for_an_integer_buffer_is_refused_and_prefix_is_stripped():
    state = {"module." + k: v for k, v in module_from_spec(STAND_IN).state_dict().items()}
    index = "module.backbone.body.layers.0.blocks.0.attn.relative_position_index"
    state[index] = state[index].float()
    with pytest.raises(CheckpointMismatchError, match="1 dtype mismatches") as info:
        load_state_dict_strict(module_from_spec(STAND_IN), state, "float_index.pth")
    assert info.value.diff.kind_mismatched == [(index.removeprefix("module."), torch.float32, torch.int64)]


def test_ignorable_key_the_model_has_is_checked_like_any_other():
    spec = dict(STAND_IN, **{"rpn.head.cls_logits.weight": ((80, 8, 1, 1), torch.float32)})
    state = module_from_spec(STAND_IN).state_dict()
    with pytest.raises(ValueError, match="rpn.head.cls_logits.weight"):
        load_state_dict_strict(module_from_spec(spec), state, "no_cls.pth")


def test_dropping_a_tunable_prompt_warns():
    state = dict(module_from_spec(STAND_IN).state_dict(), **{"rpn.tunable_linear.weight": torch.zeros(256, 768)})
    with pytest.warns(UserWarning, match="prompt-tuned"):
        load_state_dict_strict(module_from_spec(STAND_IN), state, "tuned.pth")


def test_guess_preset_reads_the_official_key_lists(parity_dir):
    assert guess_preset(fixture_key_list(parity_dir)) == "glip-t"  # `module.` prefixes included
    for preset, section in DOC_SECTIONS.items():
        assert guess_preset(doc_key_list(section)) == preset
        assert guess_preset(meta_state(strip_module(doc_key_list(section)))) == preset
    assert guess_preset({"rpn.head.log_scale": torch.zeros(1)}) is None


@pytest.mark.parametrize(("model_preset", "checkpoint_preset"), [("glip-t", "glip-l"), ("glip-t", "glip-t-a")])
def test_wrong_preset_is_named_in_the_error(model_preset, checkpoint_preset):
    model = module_from_spec(official_spec(doc_key_list(DOC_SECTIONS[model_preset])), device="meta")
    state = meta_state(strip_module(doc_key_list(DOC_SECTIONS[checkpoint_preset])))
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(model, state, f"{checkpoint_preset}.pth")
    assert f"looks like a {checkpoint_preset} checkpoint" in str(info.value)
    assert f"config='{checkpoint_preset}'" in str(info.value)
    assert info.value.guessed_preset == checkpoint_preset


def test_full_official_key_list_loads_into_a_model_with_official_names(parity_dir):
    shapes = strip_module(fixture_key_list(parity_dir))
    model = module_from_spec(official_spec(shapes), device="meta")
    load_state_dict_strict(model, meta_state(shapes), "glip_t_dev_seed1.pth")  # meta copy: checks only


# ---------------------------------------------------------------------------------------------
# save_checkpoint, read_config_metadata


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_pth_round_trip_in_official_format(tmp_path):
    model = module_from_spec(STAND_IN, seed=3)
    config = get_preset("glip-tiny").to_dict()
    path = tmp_path / "out" / "student.pth"
    save_checkpoint(model, path, config_dict=config)
    assert _no_temporaries(path.parent)

    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "glip_label"} and raw["glip_label"]["config"] == config
    assert all(k.startswith("module.") for k in raw["model"])
    for i, stride in enumerate((8, 16, 32, 64, 128)):
        cell = raw["model"][f"module.rpn.anchor_generator.cell_anchors.{i}"]
        expected = [-3.5 * stride, -3.5 * stride, 4.5 * stride - 1, 4.5 * stride - 1]
        assert cell.shape == (1, 4) and cell.dtype == torch.float32 and cell[0].tolist() == expected
    position_ids = raw["model"]["module.language_backbone.body.model.embeddings.position_ids"]
    assert position_ids.dtype == torch.int64 and torch.equal(position_ids, torch.arange(16)[None])

    restored = module_from_spec(STAND_IN, seed=4)
    load_state_dict_strict(restored, read_checkpoint(path), str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    assert read_config_metadata(path) == config
    contents = open_checkpoint(path)  # what load_model and convert_weights read, in one pass
    assert contents.config == config and contents.source_entry == "model"
    assert contents.entries == ["model", "glip_label"] and contents.raw_state.keys() == raw["model"].keys()
    assert contents.state.keys() == read_checkpoint(path).keys()


def test_pth_anchor_cells_follow_configured_strides(tmp_path):
    path = tmp_path / "anchors.pth"
    save_checkpoint(module_from_spec(STAND_IN), path, config_dict={"anchor_strides": [4, 8], "anchor_sizes": [32, 48]})
    state = read_checkpoint(path)
    assert state["rpn.anchor_generator.cell_anchors.0"][0].tolist() == [-14.0, -14.0, 17.0, 17.0]
    assert state["rpn.anchor_generator.cell_anchors.1"][0].tolist() == [-20.0, -20.0, 27.0, 27.0]
    assert "rpn.anchor_generator.cell_anchors.2" not in state


def test_safetensors_round_trip_with_bf16_and_config(tmp_path):
    from safetensors import safe_open

    model = module_from_spec(STAND_IN, seed=5)
    config = get_preset("glip-t").to_dict()
    path = tmp_path / "student.safetensors"
    save_checkpoint(model, path, config_dict=config, dtype=torch.bfloat16)
    assert _no_temporaries(tmp_path)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["format"] == "pt"
    state = read_checkpoint(path)
    assert set(state) == set(STAND_IN)  # no official extras in the lean format
    index = "backbone.body.layers.0.blocks.0.attn.relative_position_index"
    assert state[index].dtype == torch.int64 and torch.equal(state[index], model.state_dict()[index])
    weight = "rpn.head.bbox_pred.weight"
    assert state[weight].dtype == torch.bfloat16
    assert torch.equal(state[weight], model.state_dict()[weight].bfloat16())
    assert read_config_metadata(path) == config

    restored = module_from_spec(STAND_IN, seed=6)
    load_state_dict_strict(restored, state, str(path))
    assert restored.state_dict()[weight].dtype == torch.float32


def test_safetensors_without_config_and_with_tied_weights(tmp_path):
    model = module_from_spec(STAND_IN)
    model.rpn.head.tied = model.rpn.head.bbox_pred  # same tensors under two names
    path = tmp_path / "tied.safetensors"
    save_checkpoint(model, path)
    state = read_checkpoint(path)
    assert torch.equal(state["rpn.head.tied.weight"], state["rpn.head.bbox_pred.weight"])
    assert read_config_metadata(path) is None


def test_save_refuses_unknown_suffix_and_fp16_overflow(tmp_path):
    model = module_from_spec(STAND_IN)
    with pytest.raises(ValueError, match="suffix"):
        save_checkpoint(model, tmp_path / "weights.ckpt")
    with torch.no_grad():
        model.rpn.head.log_scale.fill_(1e6)
    with pytest.raises(ValueError, match="float16 range"):
        save_checkpoint(model, tmp_path / "weights.safetensors", dtype=torch.float16)
    assert list(tmp_path.iterdir()) == []


def test_official_file_has_no_config_metadata(tmp_path):
    path = tmp_path / "official.pth"
    write_official(path, module_from_spec(STAND_IN).state_dict(), iteration=1)
    assert read_config_metadata(path) is None


# ---------------------------------------------------------------------------------------------
# convert_weights


def test_convert_snapshot_to_lean_fp16_safetensors(tmp_path):
    from safetensors.torch import load_file

    model, ema = module_from_spec(STAND_IN, seed=7), module_from_spec(STAND_IN, seed=8)
    anchor_cell = torch.tensor([[-448.0, -448.0, 575.0, 575.0]])  # stays fp32: 575 is not exact in bf16
    state = dict(model.state_dict(), **{"rpn.anchor_generator.cell_anchors.4": anchor_cell})
    src = tmp_path / "snapshot.pth"
    write_official(
        src,
        state,
        model_ema={"module." + k: v for k, v in ema.state_dict().items()},
        optimizer={"state": {0: {"exp_avg": torch.zeros(1000)}}},
        iteration=3,
        glip_label={"config": {"name": "glip-t"}},
    )
    dst = tmp_path / "lean.safetensors"
    stats = convert_weights(src, dst, dtype="fp16")
    assert stats["tensors"] == len(state) and stats["source_entry"] == "model"
    assert set(stats["skipped_entries"]) == {"model_ema", "optimizer", "iteration", "glip_label"}
    assert stats["bytes_in"] == src.stat().st_size and stats["bytes_out"] == dst.stat().st_size
    assert stats["parameters"] == sum(v.numel() for v in state.values())

    lean = load_file(dst)  # readable by the safetensors library itself
    assert set(lean) == set(state)  # ignorable keys kept; the loader drops them
    for key, value in state.items():
        expected = value.half() if value.is_floating_point() and "anchor" not in key else value
        assert lean[key].dtype == expected.dtype and torch.equal(lean[key], expected)
    assert read_config_metadata(dst) == {"name": "glip-t"}
    assert _no_temporaries(tmp_path)


def test_convert_fp32_is_exact_and_can_take_the_ema(tmp_path):
    model, ema = module_from_spec(STAND_IN, seed=9), module_from_spec(STAND_IN, seed=10)
    src = tmp_path / "snapshot.pth"
    write_official(src, model.state_dict(), model_ema={"module." + k: v for k, v in ema.state_dict().items()})
    dst = tmp_path / "ema.safetensors"
    stats = convert_weights(src, dst, prefer="model_ema", config_dict={"name": "glip-t-a"})
    assert stats["source_entry"] == "model_ema"
    lean = read_checkpoint(dst)
    for key, value in ema.state_dict().items():
        assert lean[key].dtype == value.dtype and torch.equal(lean[key], value)
    assert read_config_metadata(dst) == {"name": "glip-t-a"}
    with pytest.raises(ValueError, match="dtype"):
        convert_weights(src, tmp_path / "x.safetensors", dtype="int8")
    with pytest.raises(ValueError, match="safetensors"):
        convert_weights(src, tmp_path / "x.pth")


# ---------------------------------------------------------------------------------------------
# The real GLIP model against the official key lists


def _build_glip(preset: str) -> nn.Module:
    """GLIP on the meta device (no memory, no init) when it can be built there, else on CPU."""
    glip = pytest.importorskip("glip_label.model.glip", reason="the GLIP model has not landed yet")
    try:
        with torch.device("meta"):
            return glip.GLIP(get_preset(preset))
    except (NotImplementedError, RuntimeError):
        return glip.GLIP(get_preset(preset))


@functools.cache
def _glip_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _build_glip(preset).state_dict().items()}


def _assert_key_map(preset: str, official: Mapping[str, tuple[int, ...]]) -> None:
    model_shapes = _glip_shapes(preset)
    official = strip_module(official)
    diff = diff_state_shapes(model_shapes, official)
    assert diff.missing == [], f"model keys absent from the official list: {diff.missing[:20]}"
    assert diff.unexpected == [], f"official keys the model lacks: {diff.unexpected[:20]}"
    assert diff.mismatched == [], f"shape mismatches: {diff.mismatched[:20]}"
    assert all(is_ignorable_key(k) for k in diff.ignored)
    assert len(model_shapes) + len(diff.ignored) == len(official)
    assert guess_preset(model_shapes) == preset


def test_glip_t_key_map_matches_the_official_model(parity_dir):
    _assert_key_map("glip-t", fixture_key_list(parity_dir))


@pytest.mark.parametrize("preset", ["glip-t", "glip-t-a", "glip-l"])
def test_glip_key_map_matches_the_derived_key_lists(preset):
    _assert_key_map(preset, doc_key_list(DOC_SECTIONS[preset]))


def test_glip_l_checkpoint_into_glip_t_model_names_glip_l():
    model = _build_glip("glip-t")
    state = meta_state(strip_module(doc_key_list(DOC_SECTIONS["glip-l"])))
    with pytest.raises(ValueError, match=r"looks like a glip-l checkpoint.*config='glip-l'"):
        load_state_dict_strict(model, state, "glip_large_model.pth")


@pytest.mark.slow
def test_real_glip_t_survives_save_read_strict_load(tmp_path, parity_dir):
    glip = pytest.importorskip("glip_label.model.glip", reason="the GLIP model has not landed yet")
    config = get_preset("glip-t")
    model = glip.GLIP(config)
    path = tmp_path / "glip_t.pth"
    save_checkpoint(model, path, config_dict=config.to_dict())
    state = read_checkpoint(path)
    # Everything the official model has, except the dead cls_logits conv (its loader keeps its init).
    official = set(strip_module(fixture_key_list(parity_dir)))
    assert set(state) == official - {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"}
    restored = glip.GLIP(config)
    load_state_dict_strict(restored, state, str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert json.loads(json.dumps(read_config_metadata(path))) == config.to_dict()
