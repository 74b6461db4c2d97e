"""Bring your own GLIP: the official yamls and the checkpoints of the official tools load as they are.

The four pretrain yamls of microsoft/GLIP are in tests/data/official_configs (verbatim). Each must build
exactly the official key set and shapes: the list read from the official model for GLIP-T (the parity
fixture's glip_t_keys.txt) and the lists derived from the official modules in
../shared/docs/glip-state-dict-keys.txt for every architecture, never our own model's keys.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_weights import DOC_SECTIONS, doc_key_list, fixture_key_list, meta_state, strip_module
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.config import (
    PRESETS,
    GLIPConfig,
    UnsupportedConfigError,
    from_official_yaml,
    prompt_tuning_requested,
    read_official_yaml,
    resolve_config,
)
from glip_label.model.glip import GLIP
from glip_label.predictor import load_model
from glip_label.weights import (
    PROMPT_KEY,
    describe_checkpoint,
    diff_state_shapes,
    guess_preset,
    is_ignorable_key,
    load_state_dict_strict,
    official_extra_buffers,
    save_checkpoint,
)

CONFIGS = Path(__file__).parent / "data" / "official_configs"
# official yaml -> (preset of the same architecture, section of the derived key lists)
OFFICIAL_YAMLS = {
    "glip_A_Swin_T_O365.yaml": "glip-t-a",
    "glip_Swin_T_O365.yaml": "glip-t",
    "glip_Swin_T_O365_GoldG.yaml": "glip-t",
    "glip_Swin_L.yaml": "glip-l",
}
runner = CliRunner()


def meta_glip(config: GLIPConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return GLIP(config)


def official_layout_state(model: torch.nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A model's weights as the official tools save them: floats in `dtype` (AMP runs), the anchor cells and
    position ids the official model keeps, and the dead cls_logits conv (NUM_CLASSES 81: 80 outputs)."""
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    channels = state["rpn.head.bbox_pred.weight"].shape[1]
    state["rpn.head.cls_logits.weight"] = torch.zeros(80, channels, 1, 1, dtype=dtype)
    state["rpn.head.cls_logits.bias"] = torch.zeros(80, dtype=dtype)
    for key, value in official_extra_buffers(state, None).items():
        state.setdefault(key, value)
    return state


def write_training_snapshot(path: Path, state: dict[str, torch.Tensor]) -> None:
    """What the official trainer writes: model, model_ema, optimizer, scheduler, iteration; DDP prefixes."""
    model = {"module." + k: v for k, v in state.items()}
    torch.save({"model": model, "model_ema": model, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 7}, "iteration": 7}, path)


# ---------------------------------------------------------------------------------------------
# yacs semantics


def test_yaml_values_are_decoded_as_yacs_does(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "MODEL:\n  RPN:\n    ANCHOR_STRIDE: (8, 16, 32, 64, 128)\n    ASPECT_RATIOS: (1.0,)\n"
        "  LANGUAGE_BACKBONE:\n    MODEL_TYPE: \"bert-base-uncased\"\n"
        "DATASETS:\n  OVERRIDE_CATEGORY: '[{\"id\": 1, \"name\": \"rabbit\"}]'\n  TRAIN: (\"train\",)\n"
        "INPUT:\n  PIXEL_MEAN: [ 103.530, 116.280, 123.675 ]\n"
    )
    tree = read_official_yaml(path)
    assert tree["MODEL"]["RPN"]["ANCHOR_STRIDE"] == (8, 16, 32, 64, 128)
    assert tree["MODEL"]["RPN"]["ASPECT_RATIOS"] == (1.0,)
    assert tree["MODEL"]["LANGUAGE_BACKBONE"]["MODEL_TYPE"] == "bert-base-uncased"
    assert tree["DATASETS"]["OVERRIDE_CATEGORY"] == [{"id": 1, "name": "rabbit"}]
    assert tree["DATASETS"]["TRAIN"] == ("train",)
    assert tree["INPUT"]["PIXEL_MEAN"] == [103.53, 116.28, 123.675]


@pytest.mark.parametrize(("name", "preset"), OFFICIAL_YAMLS.items())
def test_official_pretrain_yaml_maps_onto_the_released_architecture(name, preset):
    config = from_official_yaml(CONFIGS / name)
    assert config == PRESETS[preset].replace(name=Path(name).stem)
    assert not prompt_tuning_requested(read_official_yaml(CONFIGS / name))


def test_fixture_yaml_is_the_parity_config(parity_dir):
    fixture_yaml = parity_dir / "config" / "glip_Swin_T_O365_GoldG.yaml"
    assert from_official_yaml(fixture_yaml) == PRESETS["glip-t"].replace(name="glip_Swin_T_O365_GoldG")


def test_a_resolved_preset_is_a_copy_that_callers_may_change():
    """A predictor that changes its config (a test shrinking the input, a user tuning min_size_test) must not
    change the preset for every later load in the process: CI once failed 11 tests that ran after one did."""
    for name in ("glip-t", ["glip-t"]):
        config = resolve_config(name)
        config.min_size_test = 123
    assert PRESETS["glip-t"].min_size_test == 800
    assert resolve_config("glip-t").min_size_test == 800


def test_keys_a_yaml_leaves_out_take_the_official_defaults(tmp_path):
    # glip_Swin_L.yaml sets no FREEZE_CONV_BODY_AT: the official default (2) freezes patch_embed and stage 0.
    assert from_official_yaml(CONFIGS / "glip_Swin_L.yaml").freeze_backbone_at == 2
    bare = tmp_path / "bare.yaml"
    bare.write_text("MODEL:\n  META_ARCHITECTURE: \"GeneralizedVLRCNN\"\n")
    # defaults.py builds an R-50-C4 RPN, not GLIP: refused by name.
    with pytest.raises(UnsupportedConfigError, match=r"MODEL\.RPN_ARCHITECTURE = 'RPN'.*CONV_BODY = 'R-50-C4'"):
        from_official_yaml(bare)


# ---------------------------------------------------------------------------------------------
# Exactly the official key set and shapes


def _assert_official_layout(model: torch.nn.Module, official: dict[str, tuple[int, ...]]) -> None:
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = strip_module(official)
    diff = diff_state_shapes(model_shapes, official)
    assert diff.missing == [], diff.missing[:20]
    assert diff.unexpected == [], diff.unexpected[:20]
    assert diff.mismatched == [], diff.mismatched[:20]
    assert diff.ignored and all(is_ignorable_key(k) for k in diff.ignored)
    assert set(model_shapes) | set(diff.ignored) == set(official)


@pytest.mark.parametrize(("name", "preset"), OFFICIAL_YAMLS.items())
def test_model_from_official_yaml_has_the_official_keys_and_shapes(name, preset):
    _assert_official_layout(meta_glip(from_official_yaml(CONFIGS / name)), doc_key_list(DOC_SECTIONS[preset]))


def test_glip_t_yaml_matches_the_keys_read_from_the_official_model(parity_dir):
    config = from_official_yaml(parity_dir / "config" / "glip_Swin_T_O365_GoldG.yaml")
    _assert_official_layout(meta_glip(config), fixture_key_list(parity_dir))


@pytest.mark.parametrize(("name", "preset"), OFFICIAL_YAMLS.items())
def test_official_key_layout_loads_strictly_with_the_yaml_and_is_recognised_without(name, preset):
    official = meta_state(strip_module(doc_key_list(DOC_SECTIONS[preset])))  # shapes only: costs nothing
    load_state_dict_strict(meta_glip(from_official_yaml(CONFIGS / name)), official, name)
    recognised = guess_preset(official)
    assert recognised == preset
    load_state_dict_strict(meta_glip(resolve_config(recognised)), official, name)


# ---------------------------------------------------------------------------------------------
# Task configs merged over a base, unsupported keys

TASK_YAML = """\
DATALOADER:
  ASPECT_RATIO_GROUPING: false
  SIZE_DIVISIBILITY: 32
DATASETS:
  OVERRIDE_CATEGORY: '[{"id": 1, "name": "Cottontail-Rabbit", "supercategory": "Cottontail-Rabbit"}]'
  TEST: ("val",)
  TRAIN: ("train",)
INPUT:
  MAX_SIZE_TEST: 1000
  MIN_SIZE_TEST: 600
MODEL:
  ATSS:
    NUM_CLASSES: 2
    INFERENCE_TH: 0.1
  DYHEAD:
    NUM_CLASSES: 2
  FCOS:
    NUM_CLASSES: 2
  ROI_BOX_HEAD:
    NUM_CLASSES: 2
SOLVER:
  CHECKPOINT_PERIOD: 100
TEST:
  IMS_PER_BATCH: 8
"""


def test_task_yaml_merges_over_its_base(tmp_path):
    task = tmp_path / "CottontailRabbits.yaml"  # the shape of configs/odinw_13/*.yaml
    task.write_text(TASK_YAML)
    merged = resolve_config([CONFIGS / "glip_Swin_T_O365_GoldG.yaml", task])
    expected = PRESETS["glip-t"].replace(
        name="CottontailRabbits", min_size_test=600, max_size_test=1000, num_classes=2, pre_nms_thresh=0.1
    )
    assert merged == expected
    # the base alone keeps its own values; the order matters as in the official tools
    assert resolve_config([str(CONFIGS / "glip_Swin_T_O365_GoldG.yaml")]).min_size_test == 800


def test_unsupported_network_keys_are_named(tmp_path):
    task = tmp_path / "other.yaml"
    task.write_text(
        "MODEL:\n  SWINT:\n    VERSION: \"v2\"\n  LANGUAGE_BACKBONE:\n    MODEL_TYPE: \"roberta-base\"\n"
        "  DYHEAD:\n    USE_DFCONV: False\n"
    )
    with pytest.raises(UnsupportedConfigError) as info:
        from_official_yaml([CONFIGS / "glip_Swin_T_O365.yaml", task])
    message = str(info.value)
    for key in ("MODEL.SWINT.VERSION = 'v2'", "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE = 'roberta-base'",
                "MODEL.DYHEAD.USE_DFCONV = False"):
        assert key in message
    assert "\n" not in message


def test_cli_unsupported_config_is_one_line_and_non_zero(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  BACKBONE:\n    CONV_BODY: \"R-50-FPN-RETINANET\"\n")
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    result = runner.invoke(app, ["annotate", str(tmp_path / "img"), "--prompt", "x.", "--model", str(tiny_checkpoint),
                                 "--config", str(CONFIGS / "glip_Swin_T_O365.yaml"), "--config", str(bad),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "MODEL.BACKBONE.CONV_BODY = 'R-50-FPN-RETINANET'" in " ".join(result.output.split())
    assert not (tmp_path / "out" / "annotations.coco.json").exists()


# ---------------------------------------------------------------------------------------------
# Official training checkpoints, no config


@pytest.fixture(scope="module")
def tiny_snapshot(tmp_path_factory) -> tuple[Path, GLIP]:
    """A glip-tiny as the official trainer saves it (fp16, model + model_ema + optimizer, module.)."""
    torch.manual_seed(0)
    model = GLIP(PRESETS["glip-tiny"]).eval()
    with torch.no_grad():
        model.rpn.head.bias0.fill_(0.0)  # propose boxes (the 0.01 prior is under the 0.05 threshold)
    path = tmp_path_factory.mktemp("official") / "glip_tiny_official.pth"
    write_training_snapshot(path, official_layout_state(model))
    return path, model


def test_official_snapshot_loads_with_no_config_and_logs_the_choice(tiny_snapshot, caplog, monkeypatch):
    from glip_label.weights import reading

    path, model = tiny_snapshot
    unpickled = []
    load_torch_file = reading.load_torch_file
    monkeypatch.setattr(reading, "load_torch_file", lambda p: unpickled.append(p) or load_torch_file(p))
    with caplog.at_level(logging.INFO, logger="glip_label.predictor"):
        predictor = load_model(path)
    assert unpickled == [path]  # the snapshot (4x the model for a real one) is unpickled once, state and config
    assert predictor.model.config == PRESETS["glip-tiny"]
    assert "glip-tiny" in caplog.text
    for key, value in model.state_dict().items():  # fp16-saved floats arrive as the fp16 values, in fp32
        loaded = predictor.model.state_dict()[key]
        expected = value.half().float() if value.is_floating_point() else value
        assert loaded.dtype == value.dtype and torch.equal(loaded, expected), key


def test_annotate_official_snapshot_without_config(tiny_snapshot, tmp_path):
    path, _ = tiny_snapshot
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(images / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["annotate", str(images), "--prompt", "red square.", "--model", str(path),
                                 "--out", str(out), "--format", "coco"])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / "annotations.coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png"]
    assert coco["annotations"], "the token bias at 0 scores 0.5: boxes expected"


def test_prompt_tuned_checkpoint_loads_with_its_prompt(tiny_snapshot, tmp_path):
    path, model = tiny_snapshot
    state = official_layout_state(model, torch.float32)
    plain = tmp_path / "plain.pth"
    write_training_snapshot(plain, state)
    generator = torch.Generator().manual_seed(3)
    tuned_state = dict(state, **{PROMPT_KEY: torch.randn(1000, 128, generator=generator)})
    tuned = tmp_path / "tuned.pth"
    write_training_snapshot(tuned, tuned_state)

    tuned_predictor = load_model(tuned)
    assert torch.equal(tuned_predictor.model.tunable_linear.weight, tuned_state[PROMPT_KEY])
    # the text features the predictor feeds the head carry the prompt rows (what PromptTunedGLIP adds)
    input_ids, attention = torch.tensor([[101, 2665, 2518, 1012, 102]]), torch.ones(1, 5, dtype=torch.long)
    with torch.no_grad():
        plain_text = load_model(plain).model.encode_text(input_ids, attention)
        tuned_text = tuned_predictor.model.encode_text(input_ids, attention)
    torch.testing.assert_close(tuned_text.hidden, plain_text.hidden + tuned_state[PROMPT_KEY][:5], rtol=0, atol=1e-6)

    facts = describe_checkpoint(tuned)
    assert facts["prompt_tuning"] == {"rows": 1000, "width": 128, "nonzero_rows": 1000}
    assert facts["architecture"] == "glip-tiny" and facts["architecture_source"] == "keys and shapes"


def test_info_reports_architecture_size_dtype_and_metadata(tiny_snapshot, tmp_path):
    path, model = tiny_snapshot
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    expected_parameters = sum(p.numel() for p in model.parameters())
    assert facts["architecture"] == "glip-tiny"
    assert facts["parameters"] == expected_parameters + 80 * 64 + 80  # + the dead cls_logits conv
    assert facts["dtypes"] == {"float16": facts["parameters"]}
    assert facts["entries"] == ["model", "model_ema", "optimizer", "scheduler", "iteration"]
    assert facts["module_prefix"] is True and facts["prompt_tuning"] is None and facts["stored_config"] is None

    own = tmp_path / "own.safetensors"
    save_checkpoint(model, own, config_dict=PRESETS["glip-tiny"].to_dict())
    facts = describe_checkpoint(own)
    assert facts["stored_config"]["name"] == "glip-tiny" and facts["architecture_source"] == "stored config"
    result = runner.invoke(app, ["info", str(own)])
    assert result.exit_code == 0 and "glip-tiny (stored config)" in result.output

    missing = runner.invoke(app, ["info", str(tmp_path / "nope.pth")])
    assert missing.exit_code != 0 and "does not exist" in " ".join(missing.output.split())


def test_unknown_layout_gets_the_clear_error(tmp_path):
    odd = GLIP(PRESETS["glip-tiny"].replace(num_convs=3))
    path = tmp_path / "odd.pth"
    write_training_snapshot(path, official_layout_state(odd))
    with pytest.raises(ValueError, match="matches no preset"):
        load_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["glip-t-a", "glip-t", "glip-l"])
def test_annotate_released_architecture_without_config(preset, tmp_path):
    """`glip-label annotate --model OFFICIAL.pth`, no --config, for each released architecture."""
    torch.manual_seed(0)
    model = GLIP(PRESETS[preset])
    path = tmp_path / f"{preset}.pth"
    state = official_layout_state(model)
    assert {k: tuple(v.shape) for k, v in state.items()} == strip_module(doc_key_list(DOC_SECTIONS[preset]))
    write_training_snapshot(path, state)
    del model, state
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (30, 30, 200)).save(images / "b.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["annotate", str(images), "--prompt", "blue square.", "--model", str(path),
                                 "--out", str(out), "--format", "coco", "--verbose"])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / "annotations.coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["b.png"]
