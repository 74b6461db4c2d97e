"""GLIP model configuration: one dataclass, the presets built from it, and a reader for the official yaml files.

The official code builds its model from a yacs tree of several hundred keys; only a few dozen shape
the network or its inference. `GLIPConfig` keeps exactly those, with the official values as
defaults (GLIP-T, deep fusion), so that a preset is a handful of overrides (glip_label/presets.py's
table) and an official yaml maps onto it key by key (see `from_official_yaml`).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip_label.presets import PRESET_TABLE


@dataclass
class GLIPConfig:
    name: str = "glip-t"

    # Swin v1 backbone (MODEL.SWINT.*)
    swin_embed_dim: int = 96
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)
    swin_num_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window_size: int = 7
    swin_mlp_ratio: float = 4.0
    swin_drop_path_rate: float = 0.2
    swin_patch_size: int = 4
    # 2 freezes patch_embed and stage 0 when training (GLIP-L's default); -1 freezes nothing.
    freeze_backbone_at: int = -1
    # A timm model name (e.g. "resnet50") replaces Swin by that network's stride-8/16/32 features
    # (students only: the official code has no such backbone). None: Swin as above.
    timm_backbone: str | None = None

    # FPN and head width (MODEL.BACKBONE.OUT_CHANNELS == MODEL.DYHEAD.CHANNELS)
    channels: int = 256

    # Language backbone: BERT (MODEL.LANGUAGE_BACKBONE.*); shapes of bert-base-uncased by default.
    text_vocab_size: int = 30522
    text_hidden_size: int = 768
    text_num_layers: int = 12
    text_num_heads: int = 12
    text_intermediate_size: int = 3072
    text_max_positions: int = 512
    max_query_len: int = 256

    # VLDyHead tower (MODEL.DYHEAD.*, MODEL.DYHEAD.FUSE_CONFIG.*)
    num_convs: int = 6
    early_fuse: bool = True  # VLFuse + head BERT layers; False is GLIP-T(A)
    fused_features_dot_product: bool = True  # final text feature = tower output (else BERT output)
    fusion_embed_dim: int = 2048  # hard-coded in the official VLFuse
    fusion_num_heads: int = 8
    gn_groups: int = 16
    num_classes: int = 81  # sizes the dead cls_logits conv, and so the class-score matrix (K = 80)
    prior_prob: float = 0.01
    log_scale_init: float = 0.0

    # Anchors (MODEL.RPN.*): one square anchor per location, size 8 * stride
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)

    # Inference (MODEL.ATSS.*, INPUT.*, DATALOADER.SIZE_DIVISIBILITY)
    pre_nms_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)  # BGR, x255
    pixel_std: tuple[float, float, float] = (57.375, 57.120, 58.395)

    # Training-time values read by the losses (MODEL.ATSS.*, MODEL.DYHEAD.FUSE_CONFIG.*)
    atss_topk: int = 9
    reg_loss_weight: float = 2.0
    token_alpha: float = 0.25
    token_gamma: float = 2.0

    @property
    def swin_stage_channels(self) -> tuple[int, ...]:
        return tuple(self.swin_embed_dim * 2**i for i in range(len(self.swin_depths)))

    @property
    def num_class_columns(self) -> int:
        """Width K of the post-processing class-score matrix (labels 1..K)."""
        return self.num_classes - 1

    @property
    def text_head_dim(self) -> int:
        return self.text_hidden_size // self.text_num_heads

    def replace(self, **changes: Any) -> GLIPConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GLIPConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown GLIPConfig fields: {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


# The architectures of glip_label/presets.py's table, built (name -> GLIPConfig), in the table's order.
PRESETS: dict[str, GLIPConfig] = {
    preset.name: GLIPConfig(name=preset.name, **preset.config_fields)
    for preset in PRESET_TABLE
    if preset.is_architecture
}


def get_preset(name: str) -> GLIPConfig:
    try:
        return PRESETS[name].replace()  # a copy: callers (a predictor, a test) may change their config's fields
    except KeyError:
        raise ValueError(f"unknown GLIP preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def resolve_config(
    config: GLIPConfig | str | Path | Sequence[str | Path] | None, default: str = "glip-t"
) -> GLIPConfig:
    """A GLIPConfig from a config object, a preset name, an official yaml path, a list of yaml paths
    (task configs merged over their base, as the official tools do), or None (the default)."""
    if config is None:
        return get_preset(default)
    if isinstance(config, GLIPConfig):
        return config
    if isinstance(config, (list, tuple)):
        if not config:
            return get_preset(default)
        if len(config) == 1:
            return resolve_config(config[0], default)
        not_yaml = [str(c) for c in config if Path(str(c)).suffix not in {".yaml", ".yml"}]
        if not_yaml:
            raise ValueError(f"several configs are merged only when all are .yaml files; got {', '.join(not_yaml)}")
        return from_official_yaml(list(config))
    text = str(config)
    if text in PRESETS:
        return get_preset(text)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"}:
        return from_official_yaml(path)
    raise ValueError(f"unknown config {text!r}: give a preset ({', '.join(PRESETS)}) or a .yaml file")


# (yaml path, GLIPConfig field, converter). Only keys that shape the model or its inference.
_YAML_MAP: list[tuple[tuple[str, ...], str, Any]] = [
    (("MODEL", "SWINT", "EMBED_DIM"), "swin_embed_dim", int),
    (("MODEL", "SWINT", "DEPTHS"), "swin_depths", tuple),
    (("MODEL", "SWINT", "NUM_HEADS"), "swin_num_heads", tuple),
    (("MODEL", "SWINT", "WINDOW_SIZE"), "swin_window_size", int),
    (("MODEL", "SWINT", "MLP_RATIO"), "swin_mlp_ratio", float),
    (("MODEL", "SWINT", "DROP_PATH_RATE"), "swin_drop_path_rate", float),
    (("MODEL", "BACKBONE", "FREEZE_CONV_BODY_AT"), "freeze_backbone_at", int),
    (("MODEL", "BACKBONE", "OUT_CHANNELS"), "channels", int),
    (("MODEL", "LANGUAGE_BACKBONE", "MAX_QUERY_LEN"), "max_query_len", int),
    (("MODEL", "LANGUAGE_BACKBONE", "LANG_DIM"), "text_hidden_size", int),
    (("MODEL", "DYHEAD", "CHANNELS"), "channels", int),
    (("MODEL", "DYHEAD", "NUM_CONVS"), "num_convs", int),
    (("MODEL", "DYHEAD", "NUM_CLASSES"), "num_classes", int),
    (("MODEL", "DYHEAD", "PRIOR_PROB"), "prior_prob", float),
    (("MODEL", "DYHEAD", "LOG_SCALE"), "log_scale_init", float),
    (("MODEL", "GROUP_NORM", "NUM_GROUPS"), "gn_groups", int),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "EARLY_FUSE_ON"), "early_fuse", bool),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_FUSED_FEATURES_DOT_PRODUCT"), "fused_features_dot_product", bool),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "TOKEN_ALPHA"), "token_alpha", float),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "TOKEN_GAMMA"), "token_gamma", float),
    (("MODEL", "ATSS", "TOPK"), "atss_topk", int),
    (("MODEL", "ATSS", "INFERENCE_TH"), "pre_nms_thresh", float),
    (("MODEL", "ATSS", "PRE_NMS_TOP_N"), "pre_nms_top_n", int),
    (("MODEL", "ATSS", "NMS_TH"), "nms_thresh", float),
    (("MODEL", "ATSS", "DETECTIONS_PER_IMG"), "detections_per_img", int),
    (("MODEL", "ATSS", "REG_LOSS_WEIGHT"), "reg_loss_weight", float),
    (("MODEL", "RPN", "ANCHOR_SIZES"), "anchor_sizes", tuple),
    (("MODEL", "RPN", "ANCHOR_STRIDE"), "anchor_strides", tuple),
    (("INPUT", "MIN_SIZE_TEST"), "min_size_test", int),
    (("INPUT", "MAX_SIZE_TEST"), "max_size_test", int),
    (("INPUT", "PIXEL_MEAN"), "pixel_mean", tuple),
    (("INPUT", "PIXEL_STD"), "pixel_std", tuple),
    (("DATALOADER", "SIZE_DIVISIBILITY"), "size_divisibility", int),
]

# Keys that change the network (or its inference) in ways this implementation does not have: their
# official default / the value every released GLIP uses is the only one accepted. (yaml path, accepted
# values). A yaml that leaves a key out gets the official default, which is accepted.
_FIXED_KEYS: list[tuple[tuple[str, ...], tuple[Any, ...]]] = [
    (("MODEL", "META_ARCHITECTURE"), ("GeneralizedVLRCNN",)),
    (("MODEL", "RPN_ARCHITECTURE"), ("VLDYHEAD",)),
    (("MODEL", "BACKBONE", "CONV_BODY"), ("SWINT-FPN-RETINANET",)),
    (("MODEL", "LANGUAGE_BACKBONE", "MODEL_TYPE"), ("bert-base-uncased",)),
    (("MODEL", "LANGUAGE_BACKBONE", "TOKENIZER_TYPE"), ("bert-base-uncased",)),
    (("MODEL", "SWINT", "VERSION"), ("v1",)),
    (("MODEL", "SWINT", "APE"), (False,)),
    (("MODEL", "SWINT", "OUT_NORM"), (True,)),
    (("MODEL", "SWINT", "LAYER_SCALE"), (0,)),
    (("MODEL", "RPN", "USE_FPN"), (True,)),
    (("MODEL", "RPN", "ASPECT_RATIOS"), ((1.0,), [1.0], 1.0)),
    (("MODEL", "RPN", "SCALES_PER_OCTAVE"), (1,)),
    (("MODEL", "DYHEAD", "USE_GN"), (True,)),
    (("MODEL", "DYHEAD", "USE_DYRELU"), (True,)),
    (("MODEL", "DYHEAD", "USE_DFCONV"), (True,)),
    (("MODEL", "DYHEAD", "USE_DYFUSE"), (True,)),
    (("MODEL", "DYHEAD", "COSINE_SCALE"), (-1.0, -1)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_LAYER_SCALE"), (True,)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_CLASSIFICATION_LOSS"), (False,)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_TOKEN_LOSS"), (False,)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_CONTRASTIVE_ALIGN_LOSS"), (False,)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_DOT_PRODUCT_TOKEN_LOSS"), (True,)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "SEPARATE_BIDIRECTIONAL"), (False,)),
    (("MODEL", "DYHEAD", "FUSE_CONFIG", "STABLE_SOFTMAX_2D"), (False,)),
    (("MODEL", "MASK_ON"), (False,)),
    (("MODEL", "KEYPOINT_ON"), (False,)),
    (("TEST", "USE_MULTISCALE"), (False,)),
    (("TEST", "SPECIAL_NMS"), ("none",)),
]

# The official defaults (maskrcnn_benchmark/config/defaults.py of microsoft/GLIP) of every key read here:
# the official tools merge a yaml over that tree, so a key a yaml leaves out has this value, which is
# not always GLIPConfig's (GLIPConfig's defaults are those of the released GLIP-T).
_OFFICIAL_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("MODEL", "META_ARCHITECTURE"): "GeneralizedRCNN",
    ("MODEL", "RPN_ARCHITECTURE"): "RPN",
    ("MODEL", "MASK_ON"): False,
    ("MODEL", "KEYPOINT_ON"): False,
    ("MODEL", "BACKBONE", "CONV_BODY"): "R-50-C4",
    ("MODEL", "BACKBONE", "FREEZE_CONV_BODY_AT"): 2,
    ("MODEL", "BACKBONE", "OUT_CHANNELS"): 256 * 4,
    ("MODEL", "LANGUAGE_BACKBONE", "TOKENIZER_TYPE"): "bert-base-uncased",
    ("MODEL", "LANGUAGE_BACKBONE", "MODEL_TYPE"): "bert-base-uncased",
    ("MODEL", "LANGUAGE_BACKBONE", "LANG_DIM"): 768,
    ("MODEL", "LANGUAGE_BACKBONE", "MAX_QUERY_LEN"): 256,
    ("MODEL", "GROUP_NORM", "NUM_GROUPS"): 16,
    ("MODEL", "ATSS", "PRIOR_PROB"): 0.01,
    ("MODEL", "ATSS", "INFERENCE_TH"): 0.05,
    ("MODEL", "ATSS", "NMS_TH"): 0.6,
    ("MODEL", "ATSS", "PRE_NMS_TOP_N"): 1000,
    ("MODEL", "ATSS", "TOPK"): 9,
    ("MODEL", "ATSS", "REG_LOSS_WEIGHT"): 2.0,
    ("MODEL", "ATSS", "DETECTIONS_PER_IMG"): 100,
    ("MODEL", "DYHEAD", "NUM_CLASSES"): 81,
    ("MODEL", "DYHEAD", "PRIOR_PROB"): 0.01,
    ("MODEL", "DYHEAD", "NUM_CONVS"): 4,
    ("MODEL", "DYHEAD", "CHANNELS"): 128,
    ("MODEL", "DYHEAD", "USE_DFCONV"): False,
    ("MODEL", "DYHEAD", "LOG_SCALE"): 0.0,
    ("MODEL", "DYHEAD", "USE_GN"): False,
    ("MODEL", "DYHEAD", "USE_DYFUSE"): False,
    ("MODEL", "DYHEAD", "USE_DYRELU"): False,
    ("MODEL", "DYHEAD", "COSINE_SCALE"): -1.0,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "EARLY_FUSE_ON"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "TYPE"): "",
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_CLASSIFICATION_LOSS"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_TOKEN_LOSS"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "TOKEN_GAMMA"): 2.0,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "TOKEN_ALPHA"): 0.25,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_DOT_PRODUCT_TOKEN_LOSS"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_CONTRASTIVE_ALIGN_LOSS"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_LAYER_SCALE"): True,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "SEPARATE_BIDIRECTIONAL"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "STABLE_SOFTMAX_2D"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "USE_FUSED_FEATURES_DOT_PRODUCT"): False,
    ("MODEL", "DYHEAD", "FUSE_CONFIG", "ADD_LINEAR_LAYER"): False,
    ("MODEL", "RPN", "USE_FPN"): False,
    ("MODEL", "RPN", "ANCHOR_SIZES"): (32, 64, 128, 256, 512),
    ("MODEL", "RPN", "ANCHOR_STRIDE"): (16,),
    ("MODEL", "RPN", "ASPECT_RATIOS"): (0.5, 1.0, 2.0),
    ("MODEL", "RPN", "SCALES_PER_OCTAVE"): 3,
    ("MODEL", "SWINT", "EMBED_DIM"): 96,
    ("MODEL", "SWINT", "OUT_CHANNELS"): (96, 192, 384, 768),
    ("MODEL", "SWINT", "DEPTHS"): (2, 2, 6, 2),
    ("MODEL", "SWINT", "NUM_HEADS"): (3, 6, 12, 24),
    ("MODEL", "SWINT", "WINDOW_SIZE"): 7,
    ("MODEL", "SWINT", "MLP_RATIO"): 4,
    ("MODEL", "SWINT", "DROP_PATH_RATE"): 0.2,
    ("MODEL", "SWINT", "APE"): False,
    ("MODEL", "SWINT", "VERSION"): "v1",
    ("MODEL", "SWINT", "OUT_NORM"): True,
    ("MODEL", "SWINT", "LAYER_SCALE"): 0,
    ("INPUT", "MIN_SIZE_TEST"): 800,
    ("INPUT", "MAX_SIZE_TEST"): 1333,
    ("INPUT", "PIXEL_MEAN"): [102.9801, 115.9465, 122.7717],
    ("INPUT", "PIXEL_STD"): [1.0, 1.0, 1.0],
    ("DATALOADER", "SIZE_DIVISIBILITY"): 0,
    ("SOLVER", "TUNING_HIGHLEVEL_OVERRIDE"): None,
    ("TEST", "USE_MULTISCALE"): False,
    ("TEST", "SPECIAL_NMS"): "none",
}


def _official_defaults_tree() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for keys, value in _OFFICIAL_DEFAULTS.items():
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return tree


# Prompt tuning: the official model adds `rpn.tunable_linear` when MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER is
# set (maskrcnn_benchmark/modeling/rpn/vldyhead.py, `VLDyHeadModule.__init__`), which tools/finetune.py's
# `tuning_highlevel_override` sets for SOLVER.TUNING_HIGHLEVEL_OVERRIDE "language_prompt_v2" and "v4" (its "v3"
# turns the layer off and the language backbone on; it is listed here all the same, as it always was).
_PROMPT_TUNING_OVERRIDES = {"language_prompt_v2", "language_prompt_v3", "language_prompt_v4"}


class UnsupportedConfigError(ValueError):
    """An official yaml asks for a network this implementation does not build."""


def _decode_value(value: Any) -> Any:
    """yacs' `_decode_cfg_value` (yacs/config.py): a string that is a Python literal becomes that value.

    yacs runs `ast.literal_eval` on every string of a merged yaml and keeps the string when that raises
    ValueError or SyntaxError, so `ANCHOR_STRIDE: (8, 16, 32, 64, 128)` is a tuple and
    `MODEL_TYPE: "bert-base-uncased"` stays a string. Nested mappings are decoded key by key.
    """
    if isinstance(value, dict):
        return {key: _decode_value(item) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _merge_trees(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into `base` key by key, as yacs' merge_from_file merges a config over another."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_official_yaml(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """The yacs tree of one official yaml, or of several merged in order (base first, task configs after).

    Values are decoded as yacs decodes them (`_decode_value`). Unlike yacs no defaults tree is merged
    under it, so keys the files leave out are simply absent (GLIPConfig's defaults are the official ones).
    """
    import yaml

    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not path_list:
        raise ValueError("no yaml file given")
    tree: dict[str, Any] = {}
    for item in path_list:
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not a valid yaml file ({' '.join(str(exc).split())})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: an official GLIP config is a mapping, this file holds a {type(loaded).__name__}")
        tree = _merge_trees(tree, _decode_value(loaded))
    return tree


def _lookup(tree: dict[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _convert(value: Any, convert: Any, dotted: str, source: str) -> Any:
    try:
        if convert is tuple:
            return tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if convert is bool and not isinstance(value, bool):
            raise TypeError(f"expected True or False, got {value!r}")
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {dotted} = {value!r} is not a valid value ({exc})") from None


def prompt_tuning_requested(tree: dict[str, Any]) -> bool:
    """Whether an official config builds the tunable prompt (`rpn.tunable_linear`)."""
    _, add_linear = _lookup(tree, ("MODEL", "DYHEAD", "FUSE_CONFIG", "ADD_LINEAR_LAYER"))
    _, override = _lookup(tree, ("SOLVER", "TUNING_HIGHLEVEL_OVERRIDE"))
    return add_linear is True or override in _PROMPT_TUNING_OVERRIDES


def from_official_yaml(paths: str | Path | Sequence[str | Path]) -> GLIPConfig:
    """Map official GLIP yaml(s) (e.g. configs/pretrain/glip_Swin_T_O365_GoldG.yaml, optionally followed by
    task configs merged over it) onto GLIPConfig.

    As in the official tools the yaml is merged over the official defaults (`_OFFICIAL_DEFAULTS`). Keys that
    would change the network into one this implementation does not build are refused, all named in one
    UnsupportedConfigError, rather than silently approximated. Whether the config asks for prompt
    tuning is not part of GLIPConfig: `load_model` builds the prompt from the checkpoint's
    `rpn.tunable_linear.weight` (see `prompt_tuning_requested`).
    """
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    source = " + ".join(str(p) for p in path_list)
    tree = _merge_trees(_official_defaults_tree(), read_official_yaml(path_list))
    problems: list[str] = []
    _, early_fuse = _lookup(tree, ("MODEL", "DYHEAD", "FUSE_CONFIG", "EARLY_FUSE_ON"))
    _, fuse_type = _lookup(tree, ("MODEL", "DYHEAD", "FUSE_CONFIG", "TYPE"))
    if early_fuse is True and fuse_type != "MHA-B":
        problems.append(f"MODEL.DYHEAD.FUSE_CONFIG.TYPE = {fuse_type!r} (supported: 'MHA-B')")
    for keys, accepted in _FIXED_KEYS:
        found, value = _lookup(tree, keys)
        if found and value not in accepted:
            problems.append(f"{'.'.join(keys)} = {value!r} (supported: {' or '.join(repr(a) for a in accepted)})")
    values: dict[str, Any] = {}
    for keys, field_name, convert in _YAML_MAP:
        found, value = _lookup(tree, keys)
        if found:
            values[field_name] = _convert(value, convert, ".".join(keys), source)
    name = Path(path_list[-1]).stem
    config = GLIPConfig(name=name, **values)
    found, swin_out = _lookup(tree, ("MODEL", "SWINT", "OUT_CHANNELS"))
    if found and tuple(swin_out) != config.swin_stage_channels:
        problems.append(
            f"MODEL.SWINT.OUT_CHANNELS = {tuple(swin_out)!r} (the Swin stages of EMBED_DIM "
            f"{config.swin_embed_dim} give {config.swin_stage_channels})"
        )
    if len(config.swin_num_heads) != len(config.swin_depths):
        problems.append(
            f"MODEL.SWINT.NUM_HEADS {config.swin_num_heads} and DEPTHS {config.swin_depths} differ in length"
        )
    if len(config.anchor_sizes) != len(config.anchor_strides):
        problems.append(f"MODEL.RPN.ANCHOR_SIZES {config.anchor_sizes} and ANCHOR_STRIDE {config.anchor_strides} "
                        "differ in length")
    if config.text_hidden_size != 768:
        problems.append(f"MODEL.LANGUAGE_BACKBONE.LANG_DIM = {config.text_hidden_size} (bert-base-uncased has 768)")
    if problems:
        raise UnsupportedConfigError(
            f"{source}: unsupported GLIP configuration: {'; '.join(problems)}. glip-label builds the released "
            "architectures (Swin-FPN + VLDyHead, BERT-base, optional MHA-B fusion) only."
        )
    return config


__all__ = [
    "GLIPConfig",
    "PRESETS",
    "UnsupportedConfigError",
    "get_preset",
    "resolve_config",
    "read_official_yaml",
    "prompt_tuning_requested",
    "from_official_yaml",
]
