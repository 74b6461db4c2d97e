"""Loading a state dict into a model strictly: every key and shape must fit, and every misfit is named at once.

The official loader (microsoft/GLIP `maskrcnn_benchmark/utils/model_serialization.py`, `load_state_dict` /
`align_and_update_state_dicts`) matches keys by suffix and skips what does not fit with a log line. Here
loading is strict, because a silently half-loaded detector still produces boxes, just wrong ones; the only
exceptions are keys known to be dead or recomputed (glip_label/weights/keys.py, `IGNORABLE_KEY_PATTERNS`).
All problems are reported in one error, with a guess of which preset the file belongs to.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip_label.config import PRESETS
from glip_label.weights.keys import BEHAVIOUR_CHANGING_PATTERN, is_ignorable_key, strip_module_prefix
from glip_label.weights.layouts import guess_preset, layout_of_shapes, preset_matching, shape_of
from glip_label.weights.reading import CheckpointError

_MAX_EXAMPLES = 20


@dataclass
class StateDiff:
    """How a checkpoint's keys and shapes differ from a model's (checkpoint keys without `module.`)."""

    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    # float where the model has an integer buffer or the reverse (only when values carry a dtype)
    kind_mismatched: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # known-ignorable checkpoint keys dropped

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.kind_mismatched)


class CheckpointMismatchError(CheckpointError):
    """Keys or shapes of a checkpoint do not match the model; `diff` holds the details."""

    def __init__(self, message: str, diff: StateDiff, guessed_preset: str | None) -> None:
        super().__init__(message)
        self.diff = diff
        self.guessed_preset = guessed_preset


def diff_state_shapes(model_shapes: Mapping[str, Any], checkpoint_shapes: Mapping[str, Any]) -> StateDiff:
    """Compare key sets and shapes, after dropping the ignorable checkpoint keys the model lacks.

    Values may be tensors (any device, meta included) or shape sequences, so a key list read from a
    text file can be checked against a model without materialising any weights.
    """
    diff = StateDiff()
    for key, value in checkpoint_shapes.items():
        if key not in model_shapes:
            (diff.ignored if is_ignorable_key(key) else diff.unexpected).append(key)
            continue
        target = model_shapes[key]
        checkpoint_shape, model_shape = shape_of(value), shape_of(target)
        if checkpoint_shape != model_shape:
            diff.mismatched.append((key, checkpoint_shape, model_shape))
        elif _is_float(value) is not None and _is_float(target) is not None and _is_float(value) != _is_float(target):
            diff.kind_mismatched.append((key, value.dtype, target.dtype))
    diff.missing = [k for k in model_shapes if k not in checkpoint_shapes]
    return diff


def _is_float(value: Any) -> bool | None:
    """Whether a tensor holds floats; None for a bare shape, which carries no dtype."""
    return value.is_floating_point() if isinstance(value, Tensor) else None


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Load `state` into `model`, refusing any missing, unexpected or mis-shaped key.

    Known-ignorable checkpoint keys the model lacks are dropped first (`IGNORABLE_KEY_PATTERNS`). All problems are
    collected into one CheckpointMismatchError (a ValueError) naming `source`, so a user sees the
    whole picture at once, including which preset the checkpoint seems to belong to. Floats are cast
    to the dtype of the model tensor they replace by load_state_dict's in-place copy, one tensor at a
    time (an up-front cast of an fp16 file would hold a second full copy of the model); a float for
    an integer buffer, or the reverse, is refused. A `module.` prefix on every key is stripped.
    """
    state = strip_module_prefix(dict(state))
    model_state = model.state_dict()
    diff = diff_state_shapes(model_state, state)
    if not diff.ok:
        guessed = guess_preset(state)
        raise CheckpointMismatchError(_mismatch_message(diff, source, state, model_state), diff, guessed)
    dropped_behaviour = [k for k in diff.ignored if BEHAVIOUR_CHANGING_PATTERN.search(k)]
    if dropped_behaviour:
        warnings.warn(
            f"{source}: ignoring {', '.join(dropped_behaviour)}: this looks like a prompt-tuned checkpoint, "
            "and the model has no tunable prompt, so its outputs will differ from the tuned model's",
            stacklevel=2,
        )
    ignored = set(diff.ignored)
    model.load_state_dict({k: v for k, v in state.items() if k not in ignored}, strict=True)


def _mismatch_message(
    diff: StateDiff, source: str | Path, state: Mapping[str, Any], model_state: Mapping[str, Any]
) -> str:
    lines = [f"{source}: the checkpoint does not fit the model:"]

    def section(items: Sequence[str], title: str) -> None:
        if not items:
            return
        lines.append(f"  {len(items)} {title}:")
        lines.extend(f"    {item}" for item in items[:_MAX_EXAMPLES])
        if len(items) > _MAX_EXAMPLES:
            lines.append(f"    ... and {len(items) - _MAX_EXAMPLES} more")

    section(diff.missing, "missing keys (in the model, not in the checkpoint)")
    section(diff.unexpected, "unexpected keys (in the checkpoint, not in the model)")
    section(
        [f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in diff.mismatched],
        "shape mismatches",
    )
    section(
        [f"{k}: checkpoint {c} vs model {m}" for k, c, m in diff.kind_mismatched],
        "dtype mismatches (float vs integer)",
    )
    checkpoint_layout, model_layout = layout_of_shapes(state), layout_of_shapes(model_state)
    checkpoint_preset, model_preset = preset_matching(checkpoint_layout), preset_matching(model_layout)
    if checkpoint_preset is not None and checkpoint_preset != model_preset:
        built_as = model_preset or f"another layout ({model_layout.describe()})"
        lines.append(
            f"This looks like a {checkpoint_preset} checkpoint ({checkpoint_layout.describe()}), but the "
            f"model was built as {built_as}; pass config='{checkpoint_preset}'."
        )
    elif checkpoint_preset is None:
        lines.append(
            f"The checkpoint's layout ({checkpoint_layout.describe()}) matches no preset "
            f"({', '.join(PRESETS)}); the model's is {model_layout.describe()}. Build the model from the "
            "official .yaml the checkpoint was trained with."
        )
    else:
        lines.append(
            f"The layout matches the model's preset ({model_preset}), so the file is incomplete or was "
            "written by different code."
        )
    return "\n".join(lines)


__all__ = [
    "CheckpointMismatchError",
    "StateDiff",
    "diff_state_shapes",
    "load_state_dict_strict",
]
