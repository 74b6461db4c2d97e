"""Which released GLIP architecture a checkpoint holds, read from its key names and shapes alone.

The layouts are those of microsoft/GLIP's released files (its model zoo: GLIP-T(A), GLIP-T(B/C/full),
GLIP-L) plus glip-tiny: the Swin embed dim (`backbone.body.patch_embed`), blocks per stage
(`backbone.body.layers.i.blocks.j`), the length of the head tower and whether it has fusion blocks
(`rpn.head.dyhead_tower.k.b_attn`), the BERT width and the head channels. Shapes may come from tensors (any
device, meta included) or from a key list read from a text file, so no weights need to be materialised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glip_label.config import PRESETS, GLIPConfig
from glip_label.weights.keys import strip_module_prefix


def shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (value.shape if hasattr(value, "shape") else value))


@dataclass(frozen=True)
class Layout:
    """The architecture facts readable from key names and shapes."""

    swin_embed_dim: int | None
    swin_depths: tuple[int, ...] | None
    tower_modules: int | None  # entries of rpn.head.dyhead_tower: 3 per block with fusion, else 1
    fusion: bool
    text_hidden_size: int | None
    channels: int | None

    def describe(self) -> str:
        depths = "/".join(map(str, self.swin_depths)) if self.swin_depths else "?"
        return (
            f"Swin embed dim {self.swin_embed_dim or '?'}, depths {depths}, "
            f"{self.tower_modules if self.tower_modules is not None else '?'} tower modules "
            f"({'with' if self.fusion else 'without'} fusion), BERT width {self.text_hidden_size or '?'}, "
            f"head channels {self.channels or '?'}"
        )


_BLOCK_KEY = re.compile(r"^backbone\.body\.layers\.(\d+)\.blocks\.(\d+)\.")
_TOWER_KEY = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.")


def layout_of_shapes(state: Mapping[str, Any]) -> Layout:
    state = strip_module_prefix(state)

    def dim(key: str, axis: int) -> int | None:
        return shape_of(state[key])[axis] if key in state else None

    blocks_per_stage: dict[int, int] = {}
    tower_indices: set[int] = set()
    fusion = False
    for key in state:
        if match := _BLOCK_KEY.match(key):
            stage, block = int(match.group(1)), int(match.group(2))
            blocks_per_stage[stage] = max(blocks_per_stage.get(stage, 0), block + 1)
        elif match := _TOWER_KEY.match(key):
            tower_indices.add(int(match.group(1)))
            fusion = fusion or ".b_attn." in key
    depths = tuple(blocks_per_stage[s] for s in sorted(blocks_per_stage)) or None
    return Layout(
        swin_embed_dim=dim("backbone.body.patch_embed.proj.weight", 0),
        swin_depths=depths,
        tower_modules=max(tower_indices) + 1 if tower_indices else None,
        fusion=fusion,
        text_hidden_size=dim("language_backbone.body.model.embeddings.word_embeddings.weight", 1),
        channels=dim("rpn.head.bbox_pred.weight", 1),
    )


def layout_of_config(config: GLIPConfig) -> Layout:
    return Layout(
        swin_embed_dim=config.swin_embed_dim,
        swin_depths=tuple(config.swin_depths),
        tower_modules=config.num_convs * (3 if config.early_fuse else 1),
        fusion=config.early_fuse,
        text_hidden_size=config.text_hidden_size,
        channels=config.channels,
    )


def preset_matching(layout: Layout) -> str | None:
    if layout.swin_embed_dim is None or layout.tower_modules is None:
        return None  # too little of the model in the state to tell
    for name, config in PRESETS.items():
        expected = layout_of_config(config)
        if all(
            getattr(layout, f) is None or getattr(layout, f) == getattr(expected, f)
            for f in ("swin_embed_dim", "swin_depths", "tower_modules", "fusion", "text_hidden_size", "channels")
        ):
            return name
    return None


def guess_preset(state: Mapping[str, Any]) -> str | None:
    """The config preset whose architecture matches a state dict (or key -> shape map), else None.

    Reads the Swin embed dim (patch_embed), blocks per stage (`backbone.body.layers.i.blocks.j`),
    the length of the head tower and whether it has fusion (`b_attn`) blocks; GLIP-T(B), (C) and the
    full GLIP-T share one layout and all give "glip-t".
    """
    return preset_matching(layout_of_shapes(state))


__all__ = [
    "Layout",
    "guess_preset",
    "layout_of_config",
    "layout_of_shapes",
    "preset_matching",
    "shape_of",
]
