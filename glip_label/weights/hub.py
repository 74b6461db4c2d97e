"""Where named GLIP weights come from: a file of the Hugging Face repo GLIPModel/GLIP, through the hub's cache.

A short name ("glip-t") resolves to the file glip_label/presets.py's table gives it, or a local path is taken
as is; offline machines get an error that says how to bring the file over, not a network stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path

from glip_label.presets import HUB_REPO, PRESET_TABLE
from glip_label.weights.reading import TORCH_SUFFIXES, CheckpointError, first_line

# weight name -> (file in HUB_REPO, config preset that builds the matching model), from the preset table.
HUB_FILES: dict[str, tuple[str, str]] = {
    preset.name: (preset.hub_file, preset.architecture) for preset in PRESET_TABLE if preset.hub_file is not None
}


class WeightsNotAvailableError(FileNotFoundError):
    """Named weights are neither local nor downloadable from here (offline, no access, no such file)."""


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
    return "/" in text or os.sep in text or Path(text).suffix in TORCH_SUFFIXES | {".safetensors"}


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
        else f"the download failed ({type(exc).__name__}: {first_line(str(exc))})"
    )
    online_hint = "; or, if this machine may reach the hub, unset HF_HUB_OFFLINE and retry" if offline else ""
    return (
        f"cannot get GLIP weights {name!r} = {filename} of the Hugging Face repo {HUB_REPO}{at_revision}: "
        f"{reason}.\nTo fix it, download the file on a machine with access, e.g.\n"
        f"    hf download {HUB_REPO} {filename} --local-dir <folder>\n"
        f"and pass the local path <folder>/{filename} instead of {name!r} (or copy that machine's "
        f"Hugging Face cache here){online_hint}."
    )


__all__ = [
    "HUB_FILES",
    "HUB_REPO",
    "WeightsNotAvailableError",
    "resolve_weights",
]
