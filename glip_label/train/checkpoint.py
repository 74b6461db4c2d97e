"""Where a run's checkpoints are, and the pieces of one that are not model weights: RNG states, safe writes.

A checkpoint (`out_dir/checkpoints/ckpt-{step}.pt`, written by `glip_label.train.trainer.Trainer`) holds
everything the next step depends on, including the RNG states of python/numpy/torch of every rank, so
that a resumed run draws the same random numbers as an uninterrupted one. It plays the part of the
official `maskrcnn_benchmark/utils/checkpoint.py`, `Checkpointer.save` (which keeps the model, optimizer,
scheduler and the iteration, but no RNG state).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glip_label.io import atomic_open

CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """RNG states in types `torch.load(weights_only=True)` accepts (no numpy objects)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (a fresh run, or a resume whose saved RNG states do not fit)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename: a kill never leaves half a file."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of out_dir/checkpoints/ckpt-{step}.pt, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((int(match.group(1)), path) for path in folder.iterdir()
                  if (match := CHECKPOINT_PATTERN.match(path.name)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1][1] if checkpoints else None


__all__ = [
    "CHECKPOINT_PATTERN",
    "CHECKPOINT_VERSION",
    "atomic_torch_save",
    "latest_checkpoint",
    "list_checkpoints",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]
