"""GLIP model configuration: one dataclass, named presets, and a reader for the official yaml files.

The official code builds its model from a yacs tree of several hundred keys; only a few dozen shape
the network or its inference. `GLIPConfig` keeps exactly those, with the official values as
defaults (GLIP-T, deep fusion), so that a preset is a handful of overrides and an official yaml maps
onto it key by key (see `from_official_yaml`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


PRESETS: dict[str, GLIPConfig] = {
    # GLIP-T (B), (C) and the released "full" GLIP-T share one layout.
    "glip-t": GLIPConfig(name="glip-t"),
    # GLIP-T (A): plain DyHead, no language fusion and no head BERT layers.
    "glip-t-a": GLIPConfig(name="glip-t-a", early_fuse=False, fused_features_dot_product=False),
    "glip-l": GLIPConfig(
        name="glip-l",
        swin_embed_dim=192,
        swin_depths=(2, 2, 18, 2),
        swin_num_heads=(6, 12, 24, 48),
        swin_window_size=12,
        swin_drop_path_rate=0.4,
        freeze_backbone_at=2,
        num_convs=8,
    ),
    # Same code at toy widths: for tests, benchmarks, the offline demo and students trained from scratch.
    "glip-tiny": GLIPConfig(
        name="glip-tiny",
        swin_embed_dim=32,
        swin_depths=(1, 1, 2, 1),
        swin_num_heads=(1, 2, 4, 8),
        swin_window_size=7,
        swin_drop_path_rate=0.0,
        channels=64,
        text_hidden_size=128,
        text_num_layers=2,
        text_num_heads=2,
        text_intermediate_size=256,
        num_convs=2,
        fusion_embed_dim=256,
        fusion_num_heads=4,
        gn_groups=16,
        min_size_test=320,
        max_size_test=512,
    ),
}


def get_preset(name: str) -> GLIPConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown GLIP preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def resolve_config(config: GLIPConfig | str | Path | None, default: str = "glip-t") -> GLIPConfig:
    """A GLIPConfig from a config object, a preset name, an official yaml path, or None (the default)."""
    if config is None:
        return get_preset(default)
    if isinstance(config, GLIPConfig):
        return config
    text = str(config)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix in {".yaml", ".yml"}:
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
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
    (("MODEL", "DYHEAD", "CHANNELS"), "channels", int),
    (("MODEL", "DYHEAD", "NUM_CONVS"), "num_convs", int),
    (("MODEL", "DYHEAD", "NUM_CLASSES"), "num_classes", int),
    (("MODEL", "DYHEAD", "PRIOR_PROB"), "prior_prob", float),
    (("MODEL", "DYHEAD", "LOG_SCALE"), "log_scale_init", float),
    (("MODEL", "DYHEAD", "GROUP_NORM", "NUM_GROUPS"), "gn_groups", int),
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

_SUPPORTED_BODIES = {"SWINT-FPN-RETINANET"}


def from_official_yaml(path: str | Path) -> GLIPConfig:
    """Map an official GLIP yaml (e.g. configs/pretrain/glip_Swin_T_O365_GoldG.yaml) onto GLIPConfig.

    Keys the yaml leaves out keep the official defaults, which are this dataclass's defaults.
    Unsupported architectures are refused rather than silently approximated.
    """
    import yaml

    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        tree = yaml.safe_load(fh) or {}
    model = tree.get("MODEL", {})
    body = model.get("BACKBONE", {}).get("CONV_BODY", "SWINT-FPN-RETINANET")
    if body not in _SUPPORTED_BODIES:
        raise ValueError(f"{path}: backbone {body!r} is not supported (only {sorted(_SUPPORTED_BODIES)})")
    head = model.get("RPN_ARCHITECTURE", "VLDYHEAD")
    if head != "VLDYHEAD":
        raise ValueError(f"{path}: RPN_ARCHITECTURE {head!r} is not supported (only VLDYHEAD)")
    values: dict[str, Any] = {}
    for keys, field_name, convert in _YAML_MAP:
        node: Any = tree
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            values[field_name] = tuple(node) if convert is tuple else convert(node)
    return GLIPConfig(name=path.stem, **values)


__all__ = ["GLIPConfig", "PRESETS", "get_preset", "resolve_config", "from_official_yaml"]
