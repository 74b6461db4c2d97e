"""The one table of GLIP presets: which names exist, which network each builds, and which released file it loads.

Two kinds of names share the table. An architecture (`glip-t`, `glip-t-a`, `glip-l`, `glip-tiny`) is what
`--config` / `config=` take: a set of GLIPConfig fields (`config_fields`, changes from GLIPConfig's defaults,
which are GLIP-T's). A hub preset (`glip-t`, `glip-t-c`, `glip-t-b`, `glip-t-a`, `glip-l`) is what `--model` /
`load_model(weights)` take: a file of the Hugging Face repo `HUB_REPO` and the architecture that reads it.
`glip-t` is both. glip_label/config.py (`PRESETS`), glip_label/weights (`HUB_FILES`), the CLI's help
(`ARCHITECTURE_NAMES`, `HUB_PRESET_NAMES`) and README.md's weights table all come from `PRESET_TABLE`, and
tests/test_presets.py checks that README names every hub preset.

The variants, their files and their pre-training data are those of the official model zoo (microsoft/GLIP
README.md, "Model Zoo") and of the hub repo's listing; their networks are those of the official yamls
(`configs/pretrain/glip_A_Swin_T_O365.yaml`, `glip_Swin_T_O365_GoldG.yaml`, `glip_Swin_L.yaml`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The Hugging Face repo that holds the released GLIP files.
HUB_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class Preset:
    """One name of the table.

    architecture: the preset whose `config_fields` build this preset's network (its own name for an
                  architecture: GLIP-T (B), (C) and the full GLIP-T share one network)
    hub_file:     the released file in `HUB_REPO`, or None for an architecture without released weights
    network:      the network in a few words (README's "architecture" column)
    data:         what the released weights were pre-trained on (README's "pre-training data" column)
    """

    name: str
    architecture: str
    network: str
    data: str = ""
    hub_file: str | None = None
    config_fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_architecture(self) -> bool:
        return self.architecture == self.name


def swin_fields(embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int,
                drop_path: float) -> dict[str, Any]:
    """The Swin v1 backbone's shape (MODEL.SWINT.EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE, DROP_PATH_RATE)."""
    return {"swin_embed_dim": embed_dim, "swin_depths": depths, "swin_num_heads": heads, "swin_window_size": window,
            "swin_drop_path_rate": drop_path}


# BERT, tower and fusion at toy widths, and a small test size: glip-tiny runs the same code in seconds on a CPU.
_TOY_WIDTHS: dict[str, Any] = {
    "channels": 64, "text_hidden_size": 128, "text_num_layers": 2, "text_num_heads": 2, "text_intermediate_size": 256,
    "num_convs": 2, "fusion_embed_dim": 256, "fusion_num_heads": 4, "gn_groups": 16,
    "min_size_test": 320, "max_size_test": 512,
}

PRESET_TABLE: tuple[Preset, ...] = (
    # GLIP-T (B), (C) and the released "full" GLIP-T share one network (configs/pretrain/glip_Swin_T_O365_GoldG.yaml).
    Preset("glip-t", "glip-t", "Swin-T, deep fusion", "O365, GoldG, CC3M, SBU",
           hub_file="glip_tiny_model_o365_goldg_cc_sbu.pth"),
    Preset("glip-t-c", "glip-t", "Swin-T, deep fusion", "O365, GoldG", hub_file="glip_tiny_model_o365_goldg.pth"),
    Preset("glip-t-b", "glip-t", "Swin-T, deep fusion", "O365", hub_file="glip_tiny_model_o365.pth"),
    # GLIP-T (A): plain DyHead, no language fusion and no head BERT layers.
    Preset("glip-t-a", "glip-t-a", "Swin-T, no fusion", "O365", hub_file="glip_a_tiny_o365.pth",
           config_fields={"early_fuse": False, "fused_features_dot_product": False}),
    Preset("glip-l", "glip-l", "Swin-L, deep fusion", "FourODs, GoldG, CC3M, CC12M, SBU",
           hub_file="glip_large_model.pth",
           config_fields={**swin_fields(192, (2, 2, 18, 2), (6, 12, 24, 48), window=12, drop_path=0.4),
                          "freeze_backbone_at": 2, "num_convs": 8}),
    # Same code at toy widths: for tests, benchmarks, the offline demo and students trained from scratch.
    Preset("glip-tiny", "glip-tiny", "Swin at toy widths (no released weights)",
           config_fields={**swin_fields(32, (1, 1, 2, 1), (1, 2, 4, 8), window=7, drop_path=0.0), **_TOY_WIDTHS}),
)

# What `--config` / `config=` take, in the table's order.
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(p.name for p in PRESET_TABLE if p.is_architecture)
# What `--model` / `load_model(weights)` take besides a local file, in the table's order.
HUB_PRESET_NAMES: tuple[str, ...] = tuple(p.name for p in PRESET_TABLE if p.hub_file is not None)

__all__ = ["ARCHITECTURE_NAMES", "HUB_PRESET_NAMES", "HUB_REPO", "PRESET_TABLE", "Preset",
           "swin_fields"]
