"""Where GLIP weights come from, and how they get into and out of a model.

The released GLIP files are DDP training snapshots: one pickle holding the model, an EMA copy, the
optimizer and scheduler state (about 4x the model), every model key prefixed `module.`. So:

- a short name ("glip-t") resolves to a file of the Hugging Face repo GLIPModel/GLIP, or a local path
  is taken as is; offline machines get an error that says how to bring the file over, not a network
  stack trace;
- reading memory-maps the file and unpickles with `weights_only=True`, so neither the 3.7 GB
  snapshot is copied into RAM nor any pickled code runs; only the model part is kept;
- loading is strict, because a silently half-loaded detector still produces boxes, just wrong ones.
  The only exceptions are keys known to be dead or recomputed (spec §3.2, `IGNORABLE_KEY_PATTERNS`).
  All problems are reported in one error, with a guess of which preset the file belongs to;
- saving writes the official layout (`.pth`, readable by the official loader) or lean safetensors,
  always to a temporary name first, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip_label.config import PRESETS, GLIPConfig
from glip_label.io import mkstemp_like_open, plain_file_mode
from glip_label.precision import parse_dtype

HUB_REPO = "GLIPModel/GLIP"

# weight name -> (file in HUB_REPO, config preset that builds the matching model); spec §1.1.
HUB_FILES: dict[str, tuple[str, str]] = {
    "glip-t": ("glip_tiny_model_o365_goldg_cc_sbu.pth", "glip-t"),
    "glip-t-c": ("glip_tiny_model_o365_goldg.pth", "glip-t"),
    "glip-t-b": ("glip_tiny_model_o365.pth", "glip-t"),
    "glip-t-a": ("glip_a_tiny_o365.pth", "glip-t-a"),
    "glip-l": ("glip_large_model.pth", "glip-l"),
}

# Checkpoint keys (without `module.`) that may be present in official files but carry nothing a
# model needs: the dead `cls_logits` conv, anchor cells (recomputed from the config), BERT's
# position ids (a non-persistent buffer in current transformers), the unused BERT pooler, and heads
# of training-only losses. They are dropped only when the model has no such key; a model that does
# have one gets it loaded and checked like any other key.
IGNORABLE_KEY_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"^rpn\.head\.cls_logits\.(weight|bias)$",
        r"^rpn\.anchor_generator\.",
        r"(^|\.)embeddings\.position_ids$",
        r"^language_backbone\.body\.model\.pooler\.",
        r"^rpn\.resizer\.",
        r"^rpn\.head\.mlm_head\.",
        r"^rpn\.loss_evaluator\.shallow_",
        r"^rpn\.tunable_linear\.",
    )
)
# Of the ignorable keys, these change inference results when dropped (prompt-tuned models), so
# dropping them is worth a warning.
_BEHAVIOUR_CHANGING_PATTERN = re.compile(r"^rpn\.tunable_linear\.")

# The official prompt-tuning parameter (ADD_LINEAR_LAYER, glip-spec §6.6): one row added per text token.
PROMPT_KEY = "rpn.tunable_linear.weight"
MODULE_PREFIX = "module."
_ANCHOR_PREFIX = "rpn.anchor_generator."
SAFETENSORS_CONFIG_KEY = "glip_label_config"
_TORCH_SUFFIXES = {".pth", ".pt", ".bin"}
_MAX_EXAMPLES = 20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose contents do not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """Keys or shapes of a checkpoint do not match the model; `diff` holds the details."""

    def __init__(self, message: str, diff: StateDiff, guessed_preset: str | None) -> None:
        super().__init__(message)
        self.diff = diff
        self.guessed_preset = guessed_preset


class WeightsNotAvailableError(FileNotFoundError):
    """Named weights are neither local nor downloadable from here (offline, no access, no such file)."""


# --------------------------------------------------------------------------------------------------
# Resolving a name or path to a local file


def resolve_weights(
    name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, str | None]:
    """A local checkpoint file for `name_or_path`, and the config preset it needs (None for paths).

    An existing file always wins over a weight name, so a local copy can shadow the hub. Hub files
    go through the normal Hugging Face cache, so a file fetched once (or copied into the cache of an
    offline machine) is reused. HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are honoured even when set
    after huggingface_hub was imported, by asking for cached files only.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None
    name = str(name_or_path)
    known = ", ".join(HUB_FILES)
    if name not in HUB_FILES:
        if path.exists():
            raise CheckpointError(f"{path} is not a checkpoint file (it is a directory)")
        if _looks_like_path(name):
            raise FileNotFoundError(f"checkpoint file {path} does not exist (known weight names: {known})")
        raise ValueError(f"unknown GLIP weights {name!r}: give a local checkpoint file or one of: {known}")

    filename, preset = HUB_FILES[name]
    offline = _hub_offline_requested()
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(HUB_REPO, filename, revision=revision, cache_dir=cache_dir, local_files_only=offline)
    except _download_errors() as exc:
        # `from None`: the cause is summarised in the message; an httpx traceback helps nobody here.
        raise WeightsNotAvailableError(
            _not_available_message(name, filename, revision, cache_dir, offline, exc)
        ) from None
    return Path(local), preset


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or Path(text).suffix in _TORCH_SUFFIXES | {".safetensors"}


def _hub_offline_requested() -> bool:
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _download_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "could not get the file", across huggingface_hub and HTTP client versions."""
    errors: list[type[BaseException]] = [OSError]  # hub HTTP errors, offline mode, cache misses, disk
    try:
        from huggingface_hub import errors as hub_errors

        for name in ("EntryNotFoundError", "HFValidationError", "LocalEntryNotFoundError", "HfHubHTTPError"):
            if hasattr(hub_errors, name):
                errors.append(getattr(hub_errors, name))
    except ImportError:  # very old huggingface_hub: everything it raises here is an OSError
        pass
    # The hub's HTTP client: httpx2 (huggingface_hub 2.x), httpx (1.x) or requests (0.x).
    for module_name, class_name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            module = __import__(module_name)
            errors.append(getattr(module, class_name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _not_available_message(
    name: str, filename: str, revision: str | None, cache_dir: str | Path | None, offline: bool, exc: BaseException
) -> str:
    where = f"the Hugging Face cache {cache_dir}" if cache_dir is not None else "the Hugging Face cache"
    at_revision = f" at revision {revision}" if revision else ""
    reason = (
        f"offline mode is on (HF_HUB_OFFLINE) and the file is not in {where}"
        if offline
        else f"the download failed ({type(exc).__name__}: {_first_line(str(exc))})"
    )
    online_hint = "; or, if this machine may reach the hub, unset HF_HUB_OFFLINE and retry" if offline else ""
    return (
        f"cannot get GLIP weights {name!r} = {filename} of the Hugging Face repo {HUB_REPO}{at_revision}: "
        f"{reason}.\nTo fix it, download the file on a machine with access, e.g.\n"
        f"    hf download {HUB_REPO} {filename} --local-dir <folder>\n"
        f"and pass the local path <folder>/{filename} instead of {name!r} (or copy that machine's "
        f"Hugging Face cache here){online_hint}."
    )


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


# --------------------------------------------------------------------------------------------------
# Reading checkpoints


def read_checkpoint(path: str | Path, prefer: str = "model") -> dict[str, Tensor]:
    """The model state dict stored in `path`, keys without the DDP `module.` prefix.

    Official snapshots also hold `model_ema`, `optimizer`, `scheduler` and `iteration`; only the
    state named by `prefer` ("model", as the official loader does, or "model_ema") is returned.
    Torch files are memory-mapped, so the returned tensors page in from disk as they are used.
    """
    path = Path(path)
    if prefer not in ("model", "model_ema"):
        raise ValueError(f"prefer must be 'model' or 'model_ema', not {prefer!r}")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        state, _ = _extract_state_dict(_load_torch_file(path), path, prefer)
    return _strip_module_prefix(state)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint file (it is a directory or a device)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); an interrupted download or copy?")


def _load_torch_file(path: Path) -> Any:
    """torch.load with weights_only, memory-mapped when the file is in the zip format."""
    _check_readable(path)
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
            f"({type(exc).__name__}: {_first_line(str(exc))})"
        ) from exc


def _weights_only_detail(message: str) -> str:
    """The useful sentence of torch's long weights_only error (it names the refused global)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, flags=re.S)
    return " ".join((match.group(1) if match else _first_line(message)).split())


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    import safetensors
    from safetensors.torch import load_file

    _check_readable(path)
    try:
        return load_file(path, device="cpu")
    except safetensors.SafetensorError as exc:
        raise CheckpointError(
            f"{path}: cannot read the safetensors file ({path.stat().st_size} bytes): the file is "
            f"truncated or corrupt ({exc})"
        ) from exc


def _extract_state_dict(obj: Any, path: Path, prefer: str) -> tuple[dict[str, Tensor], str | None]:
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


def _strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip `module.` only when every key has it, like the official strip_prefix_if_present."""
    if state and all(k.startswith(MODULE_PREFIX) for k in state):
        return {k[len(MODULE_PREFIX) :]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------------
# Comparing a checkpoint with a model, and guessing the preset of a checkpoint


def is_ignorable_key(key: str) -> bool:
    return any(p.search(key) for p in IGNORABLE_KEY_PATTERNS)


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
        checkpoint_shape, model_shape = _shape_of(value), _shape_of(target)
        if checkpoint_shape != model_shape:
            diff.mismatched.append((key, checkpoint_shape, model_shape))
        elif _is_float(value) is not None and _is_float(target) is not None and _is_float(value) != _is_float(target):
            diff.kind_mismatched.append((key, value.dtype, target.dtype))
    diff.missing = [k for k in model_shapes if k not in checkpoint_shapes]
    return diff


def _is_float(value: Any) -> bool | None:
    """Whether a tensor holds floats; None for a bare shape, which carries no dtype."""
    return value.is_floating_point() if isinstance(value, Tensor) else None


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (value.shape if hasattr(value, "shape") else value))


@dataclass(frozen=True)
class _Layout:
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


def _layout_of_shapes(state: Mapping[str, Any]) -> _Layout:
    keys = list(state)
    if keys and all(k.startswith(MODULE_PREFIX) for k in keys):
        state = {k[len(MODULE_PREFIX) :]: v for k, v in state.items()}

    def dim(key: str, axis: int) -> int | None:
        return _shape_of(state[key])[axis] if key in state else None

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
    return _Layout(
        swin_embed_dim=dim("backbone.body.patch_embed.proj.weight", 0),
        swin_depths=depths,
        tower_modules=max(tower_indices) + 1 if tower_indices else None,
        fusion=fusion,
        text_hidden_size=dim("language_backbone.body.model.embeddings.word_embeddings.weight", 1),
        channels=dim("rpn.head.bbox_pred.weight", 1),
    )


def _layout_of_config(config: GLIPConfig) -> _Layout:
    return _Layout(
        swin_embed_dim=config.swin_embed_dim,
        swin_depths=tuple(config.swin_depths),
        tower_modules=config.num_convs * (3 if config.early_fuse else 1),
        fusion=config.early_fuse,
        text_hidden_size=config.text_hidden_size,
        channels=config.channels,
    )


def _preset_matching(layout: _Layout) -> str | None:
    if layout.swin_embed_dim is None or layout.tower_modules is None:
        return None  # too little of the model in the state to tell
    for name, config in PRESETS.items():
        expected = _layout_of_config(config)
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
    return _preset_matching(_layout_of_shapes(state))


# --------------------------------------------------------------------------------------------------
# Loading into a model


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Load `state` into `model`, refusing any missing, unexpected or mis-shaped key.

    Known-ignorable checkpoint keys the model lacks are dropped first (spec §3.2). All problems are
    collected into one CheckpointMismatchError (a ValueError) naming `source`, so a user sees the
    whole picture at once, including which preset the checkpoint seems to belong to. Floats are cast
    to the dtype of the model tensor they replace by load_state_dict's in-place copy, one tensor at a
    time (an up-front cast of an fp16 file would hold a second full copy of the model); a float for
    an integer buffer, or the reverse, is refused. A `module.` prefix on every key is stripped.
    """
    state = _strip_module_prefix(dict(state))
    model_state = model.state_dict()
    diff = diff_state_shapes(model_state, state)
    if not diff.ok:
        guessed = guess_preset(state)
        raise CheckpointMismatchError(_mismatch_message(diff, source, state, model_state), diff, guessed)
    dropped_behaviour = [k for k in diff.ignored if _BEHAVIOUR_CHANGING_PATTERN.search(k)]
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
    checkpoint_layout, model_layout = _layout_of_shapes(state), _layout_of_shapes(model_state)
    checkpoint_preset, model_preset = _preset_matching(checkpoint_layout), _preset_matching(model_layout)
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


# --------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    config_dict: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the model's weights, atomically, in the format the suffix names.

    `.pth` / `.pt` / `.bin`: the official layout `{"model": {"module." + key: tensor}}`, plus the
    buffers the official code keeps but this model recomputes (anchor cells, BERT position ids), so
    the official loader accepts the file as is. `.safetensors`: the state dict only. Either way
    `config_dict` (GLIPConfig.to_dict()) is stored, so `read_config_metadata` can rebuild the
    architecture. `dtype` casts floating tensors (e.g. torch.bfloat16); integer buffers are kept.
    """
    path = Path(path)
    fmt = _format_for_writing(path)
    state = {k: _cast_float(v.detach().cpu(), dtype, k) for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = _contiguous_unshared(state)
        metadata = {"format": "pt"}
        if config_dict is not None:
            metadata[SAFETENSORS_CONFIG_KEY] = json.dumps(config_dict)
        _atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return
    full_state = dict(state)
    for key, value in official_extra_buffers(state, config_dict).items():
        full_state.setdefault(key, value)
    payload: dict[str, Any] = {"model": {MODULE_PREFIX + k: v for k, v in full_state.items()}}
    if config_dict is not None:
        payload["glip_label"] = {"config": config_dict}
    _atomic_save(path, lambda tmp: torch.save(payload, tmp))


def official_extra_buffers(state: Mapping[str, Tensor], config_dict: Mapping[str, Any] | None) -> dict[str, Tensor]:
    """Buffers the official model has and this one recomputes: anchor cells and BERT position ids.

    Anchor cell of level i (legacy "+1" boxes, spec §2.6): base window (0, 0, s-1, s-1) with stride
    s, square of side `size` around its centre (s-1)/2. With size = 8s this is
    [-3.5s, -3.5s, 4.5s-1, 4.5s-1].
    """
    defaults = GLIPConfig()
    config = dict(config_dict or {})
    strides = [float(s) for s in config.get("anchor_strides") or defaults.anchor_strides]
    sizes = [float(s) for s in config.get("anchor_sizes") or [8 * s for s in strides]]
    if len(sizes) != len(strides):
        raise ValueError(f"anchor_sizes {sizes} and anchor_strides {strides} differ in length")
    extras: dict[str, Tensor] = {}
    for level, (stride, size) in enumerate(zip(strides, sizes, strict=True)):
        centre, half = (stride - 1) / 2, (size - 1) / 2
        cell = [centre - half, centre - half, centre + half, centre + half]
        extras[f"rpn.anchor_generator.cell_anchors.{level}"] = torch.tensor([cell], dtype=torch.float32)  # [1, 4]
    position_table = state.get("language_backbone.body.model.embeddings.position_embeddings.weight")
    if position_table is not None:
        max_positions = position_table.shape[0]
        extras["language_backbone.body.model.embeddings.position_ids"] = torch.arange(
            max_positions, dtype=torch.int64
        ).unsqueeze(0)  # [1, max_positions]
    return extras


def read_config_metadata(path: str | Path) -> dict[str, Any] | None:
    """The config dict stored by save_checkpoint / convert_weights, or None (e.g. official files)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        import safetensors
        from safetensors import safe_open

        _check_readable(path)
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
        except safetensors.SafetensorError as exc:
            raise CheckpointError(f"{path}: cannot read the safetensors header: truncated or corrupt ({exc})") from exc
        text = metadata.get(SAFETENSORS_CONFIG_KEY)
        return json.loads(text) if text else None
    return _torch_config_metadata(_load_torch_file(path))


def _torch_config_metadata(obj: Any) -> dict[str, Any] | None:
    block = obj.get("glip_label") if isinstance(obj, Mapping) else None
    config = block.get("config") if isinstance(block, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else None


def describe_checkpoint(path: str | Path, prefer: str = "model") -> dict[str, Any]:
    """What a checkpoint holds, for `glip-label info`: architecture, size, dtypes, prompt, metadata.

    The architecture is the stored glip-label config when there is one, else the released layout the
    keys and shapes match (`guess_preset`), else None with the layout spelled out. Tensors stay
    memory-mapped: only shapes and dtypes are read, except the prompt rows of a prompt-tuned file.
    """
    path = Path(path)
    entries: list[str] = []
    source_entry: str | None = None
    if path.suffix == ".safetensors":
        raw_state = _load_safetensors(path)
        stored_config = read_config_metadata(path)
    else:
        snapshot = _load_torch_file(path)
        raw_state, source_entry = _extract_state_dict(snapshot, path, prefer)
        entries = [str(k) for k in snapshot] if source_entry is not None else []
        stored_config = _torch_config_metadata(snapshot)
    state = _strip_module_prefix(raw_state)
    floats = {k: v for k, v in state.items() if v.is_floating_point() and not k.startswith(_ANCHOR_PREFIX)}
    dtypes: dict[str, int] = {}
    for tensor in floats.values():
        name = str(tensor.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + tensor.numel()
    prompt = state.get(PROMPT_KEY)
    prompt_info: dict[str, Any] | None = None
    if prompt is not None:
        rows_used = int((prompt.float().abs().sum(dim=1) > 0).sum())  # [rows, D] -> rows not all zero
        prompt_info = {"rows": int(prompt.shape[0]), "width": int(prompt.shape[1]), "nonzero_rows": rows_used}
    layout = _layout_of_shapes(state)
    recognised = _preset_matching(layout)
    return {
        "path": str(path),
        "architecture": (stored_config or {}).get("name") or recognised,
        "architecture_source": "stored config" if stored_config else ("keys and shapes" if recognised else None),
        "layout": layout.describe(),
        "tensors": len(state),
        "parameters": sum(t.numel() for t in floats.values()),
        "dtypes": dtypes,
        "module_prefix": bool(raw_state) and all(k.startswith(MODULE_PREFIX) for k in raw_state),
        "entries": entries,
        "source_entry": source_entry,
        "prompt_tuning": prompt_info,
        "stored_config": stored_config,
        "bytes": path.stat().st_size,
    }


def convert_weights(
    src: str | Path,
    dst: str | Path,
    dtype: str = "fp32",
    prefer: str = "model",
    *,
    config_dict: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn an official snapshot into a lean .safetensors holding only the model state.

    Every model key is kept, the known-ignorable ones included (the loader drops them), so the
    conversion loses nothing of the model. Floats are cast to `dtype` ("fp32", "fp16", "bf16");
    integer buffers are kept. The source is memory-mapped and written one tensor at a time, so peak
    memory is about one (cast) tensor, not the model and certainly not the 4x snapshot. The config
    stored in the file is `config_dict`, else the one a glip-label .pth carries, else none.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"convert_weights writes .safetensors; got {dst}")
    target_dtype = parse_dtype(dtype)
    if prefer not in ("model", "model_ema"):
        raise ValueError(f"prefer must be 'model' or 'model_ema', not {prefer!r}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"source and destination are the same file: {src}")
    skipped: list[str] = []
    source_entry: str | None = None
    if src.suffix == ".safetensors":
        state = _strip_module_prefix(_load_safetensors(src))
        carried_config = read_config_metadata(src)
    else:
        snapshot = _load_torch_file(src)
        raw_state, source_entry = _extract_state_dict(snapshot, src, prefer)
        state = _strip_module_prefix(raw_state)
        carried_config = _torch_config_metadata(snapshot)
        if source_entry is not None:
            skipped = [str(k) for k in snapshot if k != source_entry]
    config = config_dict if config_dict is not None else carried_config
    metadata = {"format": "pt", "glip_label_source": src.name}
    if config is not None:
        metadata[SAFETENSORS_CONFIG_KEY] = json.dumps(config)
    _atomic_save(dst, lambda tmp: _write_safetensors_streaming(state, tmp, target_dtype, metadata))
    return {
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
        "bytes_in": src.stat().st_size,
        "bytes_out": dst.stat().st_size,
        "dtype": dtype,
        "source_entry": source_entry,
        "skipped_entries": skipped,
    }


def _format_for_writing(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in _TORCH_SUFFIXES:
        return "torch"
    raise ValueError(f"cannot tell the checkpoint format of {path}: use a .pth or .safetensors suffix")


def _stored_dtype(name: str, tensor: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype `tensor` is written in: `dtype` for float weights; integer buffers and anchor cells
    keep theirs (bf16 would turn the anchor corner 575 into 576)."""
    if dtype is None or not tensor.is_floating_point() or name.startswith(_ANCHOR_PREFIX):
        return tensor.dtype
    return dtype


def _cast_float(tensor: Tensor, dtype: torch.dtype | None, name: str) -> Tensor:
    dtype = _stored_dtype(name, tensor, dtype)
    if tensor.dtype == dtype:
        return tensor
    cast = tensor.to(dtype)
    if dtype == torch.float16 and tensor.numel() and _overflows_float16(tensor, cast):
        raise ValueError(
            f"{name}: values beyond the float16 range (max |x| = {tensor.abs().max().item():.4g}); use bf16 or fp32"
        )
    return cast


def _overflows_float16(tensor: Tensor, cast: Tensor) -> bool:
    """Finite values that became inf. One aminmax pass first: isfinite over a model costs 3x more."""
    low, high = torch.aminmax(tensor)
    limit = torch.finfo(torch.float16).max
    if high.item() <= limit and low.item() >= -limit:
        return False
    return bool((torch.isinf(cast) & torch.isfinite(tensor)).any())


def _contiguous_unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): give each its own, contiguous."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() and pointer in seen:
            tensor = tensor.clone()
        seen.add(pointer)
        out[key] = tensor
    return out


def _atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(temporary_path)` in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = mkstemp_like_open(path)  # the mode open() would give, not mkstemp's 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, plain_file_mode())  # writers that replace the file (safetensors) lose the mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_SAFETENSORS_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_safetensors_streaming(
    state: Mapping[str, Tensor], path: Path, float_dtype: torch.dtype | None, metadata: Mapping[str, str]
) -> None:
    """A safetensors file written tensor by tensor (safetensors' save_file builds it all in memory).

    Layout: 8-byte little-endian header length, a JSON header (padded with spaces to a multiple of
    8) giving dtype, shape and byte range of each tensor, then the raw little-endian tensor bytes.
    """
    if sys.byteorder != "little":  # the format is little-endian; keep it simple on exotic machines
        from safetensors.torch import save_file

        cast = {k: _cast_float(v, float_dtype, k) for k, v in state.items()}
        save_file(_contiguous_unshared(cast), str(path), metadata=dict(metadata))
        return
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for key, tensor in state.items():
        out_dtype = _stored_dtype(key, tensor, float_dtype)
        if out_dtype not in _SAFETENSORS_DTYPE_NAMES:
            raise ValueError(f"{key}: dtype {out_dtype} cannot be stored in safetensors here")
        nbytes = tensor.numel() * torch.empty((), dtype=out_dtype).element_size()
        header[key] = {
            "dtype": _SAFETENSORS_DTYPE_NAMES[out_dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        for chunk in _tensor_bytes(state, float_dtype):
            fh.write(chunk)


def _tensor_bytes(state: Mapping[str, Tensor], float_dtype: torch.dtype | None) -> Iterable[memoryview]:
    for key, tensor in state.items():
        flat = _cast_float(tensor, float_dtype, key).contiguous().reshape(-1)
        # A byte view, no copy: for memory-mapped sources the kernel reads pages straight from disk.
        yield memoryview(flat.view(torch.uint8).numpy())


__all__ = [
    "HUB_REPO",
    "HUB_FILES",
    "IGNORABLE_KEY_PATTERNS",
    "PROMPT_KEY",
    "CheckpointError",
    "CheckpointMismatchError",
    "WeightsNotAvailableError",
    "StateDiff",
    "resolve_weights",
    "read_checkpoint",
    "is_ignorable_key",
    "diff_state_shapes",
    "guess_preset",
    "load_state_dict_strict",
    "save_checkpoint",
    "official_extra_buffers",
    "read_config_metadata",
    "convert_weights",
    "describe_checkpoint",
]
