"""What a checkpoint file holds, for `glip-label info`: architecture, size, dtypes, prompt tuning, metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glip_label.weights.keys import ANCHOR_PREFIX, MODULE_PREFIX, PROMPT_KEY
from glip_label.weights.layouts import layout_of_shapes, preset_matching
from glip_label.weights.reading import open_checkpoint


def describe_checkpoint(path: str | Path, prefer: str = "model") -> dict[str, Any]:
    """What a checkpoint holds, for `glip-label info`: architecture, size, dtypes, prompt, metadata.

    The architecture is the stored glip-label config when there is one, else the released layout the
    keys and shapes match (`guess_preset`), else None with the layout spelled out. Tensors stay
    memory-mapped: only shapes and dtypes are read, except the prompt rows of a prompt-tuned file.
    """
    path = Path(path)
    contents = open_checkpoint(path, prefer)
    state, raw_state, stored_config = contents.state, contents.raw_state, contents.config
    floats = {k: v for k, v in state.items() if v.is_floating_point() and not k.startswith(ANCHOR_PREFIX)}
    dtypes: dict[str, int] = {}
    for tensor in floats.values():
        name = str(tensor.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + tensor.numel()
    prompt = state.get(PROMPT_KEY)
    prompt_info: dict[str, Any] | None = None
    if prompt is not None:
        rows_used = int((prompt.float().abs().sum(dim=1) > 0).sum())  # [rows, D] -> rows not all zero
        prompt_info = {"rows": int(prompt.shape[0]), "width": int(prompt.shape[1]), "nonzero_rows": rows_used}
    layout = layout_of_shapes(state)
    recognised = preset_matching(layout)
    return {
        "path": str(path),
        "architecture": (stored_config or {}).get("name") or recognised,
        "architecture_source": "stored config" if stored_config else ("keys and shapes" if recognised else None),
        "layout": layout.describe(),
        "tensors": len(state),
        "parameters": sum(t.numel() for t in floats.values()),
        "dtypes": dtypes,
        "module_prefix": bool(raw_state) and all(k.startswith(MODULE_PREFIX) for k in raw_state),
        "entries": contents.entries,
        "source_entry": contents.source_entry,
        "prompt_tuning": prompt_info,
        "stored_config": stored_config,
        "bytes": path.stat().st_size,
    }


__all__ = [
    "describe_checkpoint",
]
