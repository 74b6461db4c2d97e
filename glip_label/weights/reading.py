"""Reading a checkpoint file: the model's state dict out of an official snapshot, a glip-label .pth or a .safetensors.

The released GLIP files are DDP training snapshots (microsoft/GLIP `maskrcnn_benchmark/utils/checkpoint.py`,
`Checkpointer.save`): one pickle holding the model, an EMA copy, the optimizer and scheduler state (about 4x
the model). Reading memory-maps the file and unpickles with `weights_only=True`, so neither the 3.7 GB
snapshot is copied into RAM nor any pickled code runs; only the model part is kept, as the official loader
(`Checkpointer._load_file`, then `maskrcnn_benchmark/utils/model_serialization.py` `load_state_dict` with
`strip_prefix_if_present`) keeps it. A damaged or foreign file gives a CheckpointError that says what is wrong.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glip_label.weights.keys import strip_module_prefix

SAFETENSORS_CONFIG_KEY = "glip_label_config"
TORCH_SUFFIXES = {".pth", ".pt", ".bin"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose contents do not fit the model."""


@dataclass
class CheckpointContents:
    """One read of a checkpoint file: its model state, the config glip-label stored in it, and for an official
    snapshot which top-level entry the state came from and what else the file holds."""

    raw_state: dict[str, Tensor]  # as stored (a DDP snapshot's keys start with `module.`)
    state: dict[str, Tensor]  # keys without the DDP prefix: what the model loads
    config: dict[str, Any] | None  # GLIPConfig.to_dict() saved by glip-label; None in official files
    source_entry: str | None  # "model" / "model_ema" / "state_dict"; None for a bare state dict or safetensors
    entries: list[str]  # the snapshot's top-level keys ([] when source_entry is None)


def open_checkpoint(path: str | Path, prefer: str = "model") -> CheckpointContents:
    """Read `path` once (.safetensors, or a torch file memory-mapped) for everything its readers need.

    Official snapshots also hold `model_ema`, `optimizer`, `scheduler` and `iteration`; only the
    state named by `prefer` ("model", as the official loader does, or "model_ema") is kept.
    Torch files are memory-mapped, so the tensors page in from disk as they are used.
    """
    path = Path(path)
    if prefer not in ("model", "model_ema"):
        raise ValueError(f"prefer must be 'model' or 'model_ema', not {prefer!r}")
    if path.suffix == ".safetensors":
        raw_state, config, source_entry, entries = load_safetensors(path), read_config_metadata(path), None, []
    else:
        snapshot = load_torch_file(path)
        raw_state, source_entry = extract_state_dict(snapshot, path, prefer)
        config = torch_config_metadata(snapshot)
        entries = [str(k) for k in snapshot] if source_entry is not None else []
    return CheckpointContents(raw_state, strip_module_prefix(raw_state), config, source_entry, entries)


def read_checkpoint(path: str | Path, prefer: str = "model") -> dict[str, Tensor]:
    """The model state dict stored in `path`, keys without the DDP `module.` prefix (see open_checkpoint)."""
    return open_checkpoint(path, prefer).state


def check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint file (it is a directory or a device)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); an interrupted download or copy?")


def load_torch_file(path: Path) -> Any:
    """torch.load with weights_only, memory-mapped when the file is in the zip format."""
    check_readable(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    is_zip = magic == b"PK\x03\x04"  # torch >= 1.6 format; mmap works only on it
    is_legacy_pickle = magic[:1] == b"\x80"  # pickle protocol marker of the old non-zip format
    if not (is_zip or is_legacy_pickle):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (starts with neither a zip nor a pickle header); "
            "the file is corrupt or in another format"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(str(exc))
        if "Unsupported global" in detail:
            raise CheckpointError(
                f"{path}: the checkpoint contains Python objects other than tensors and plain containers "
                f"({detail}). glip-label loads with torch.load(weights_only=True) and does not run pickled "
                "code; if you trust the file, load it yourself and re-save only its state dict, "
                "e.g. torch.save({'model': checkpoint['model']}, path)."
            ) from exc
        raise CheckpointError(
            f"{path}: cannot unpickle the checkpoint ({size} bytes): the file is corrupt or truncated ({detail})"
        ) from exc
    except Exception as exc:  # torch raises OSError, RuntimeError, EOFError, KeyError... for bad bytes
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({size} bytes): the file is truncated or corrupt "
            f"({type(exc).__name__}: {first_line(str(exc))})"
        ) from exc


def _weights_only_detail(message: str) -> str:
    """The useful sentence of torch's long weights_only error (it names the refused global)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, flags=re.S)
    return " ".join((match.group(1) if match else first_line(message)).split())


def load_safetensors(path: Path) -> dict[str, Tensor]:
    import safetensors
    from safetensors.torch import load_file

    check_readable(path)
    try:
        return load_file(path, device="cpu")
    except safetensors.SafetensorError as exc:
        raise CheckpointError(
            f"{path}: cannot read the safetensors file ({path.stat().st_size} bytes): the file is "
            f"truncated or corrupt ({exc})"
        ) from exc


def extract_state_dict(obj: Any, path: Path, prefer: str) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, top-level key it came from; None for a bare state dict)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict with a model state dict")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj), None
    chosen: str | None = None
    for key in (prefer, "model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            chosen = key
            break
    if chosen is None:
        keys = ", ".join(repr(k) for k in list(obj)[:20]) or "none"
        raise CheckpointError(
            f"{path}: no model state dict in this checkpoint (expected a 'model' entry or a bare state "
            f"dict; top-level keys: {keys})"
        )
    if prefer == "model_ema" and chosen != prefer:
        warnings.warn(f"{path}: has no {prefer!r} entry; using {chosen!r}", stacklevel=3)
    state = obj[chosen]
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not state or not_tensors:
        problem = "is empty" if not state else f"has non-tensor entries, e.g. {not_tensors[:5]}"
        raise CheckpointError(f"{path}: the {chosen!r} entry {problem}; it is not a model state dict")
    return dict(state), chosen


def read_config_metadata(path: str | Path) -> dict[str, Any] | None:
    """The config dict stored by save_checkpoint / convert_weights, or None (e.g. official files)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        import safetensors
        from safetensors import safe_open

        check_readable(path)
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
        except safetensors.SafetensorError as exc:
            raise CheckpointError(f"{path}: cannot read the safetensors header: truncated or corrupt ({exc})") from exc
        text = metadata.get(SAFETENSORS_CONFIG_KEY)
        return json.loads(text) if text else None
    return torch_config_metadata(load_torch_file(path))


def torch_config_metadata(obj: Any) -> dict[str, Any] | None:
    block = obj.get("glip_label") if isinstance(obj, Mapping) else None
    config = block.get("config") if isinstance(block, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else None


def first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


__all__ = [
    "SAFETENSORS_CONFIG_KEY",
    "TORCH_SUFFIXES",
    "CheckpointError",
    "check_readable",
    "extract_state_dict",
    "first_line",
    "load_safetensors",
    "load_torch_file",
    "read_checkpoint",
    "read_config_metadata",
    "torch_config_metadata",
]
