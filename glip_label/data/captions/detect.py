"""Which reader handles a caption source: detection of the source kind from what is on disk (or a hub name).

Detection looks at names only, and stops at the first hit, so it stays cheap on a folder of millions of
files; the structure of a file is checked when its reader reads it.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from glip_label.data.captions.imagefolder import has_metadata
from glip_label.data.image_discovery import IMAGE_EXTENSIONS, is_image_name

SOURCE_KINDS: tuple[str, ...] = ("folder", "imagefolder", "webdataset", "jsonl", "csv", "tsv", "coco", "hf")

# Files that mark a folder written by `datasets` (`save_to_disk` of a Dataset / a DatasetDict).
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
HF_DATA_SUFFIXES = (".parquet", ".arrow")
_HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def detect_source_kind(source: str | Path) -> str:
    """Which reader handles ``source``; one of :data:`SOURCE_KINDS`.

    Raises FileNotFoundError for a path that does not exist (and is not a hub name) and ValueError
    for a path whose layout is not recognised, with what was found there.
    """
    text = os.path.expanduser(str(source))
    path = Path(text)
    if path.is_file():
        return _detect_file_kind(path)
    if path.is_dir():
        return _detect_folder_kind(path)
    if is_shard_pattern(text):
        if match_tars(text):
            return "webdataset"
        raise FileNotFoundError(f"caption source pattern {text!r} matches no .tar shard")
    if _looks_like_hub_name(text):
        return "hf"
    raise FileNotFoundError(
        f"caption source {text!r} does not exist (expected a folder of images with .txt captions or with a "
        "metadata.jsonl, .tar shards, a .jsonl/.csv/.tsv/COCO captions .json file, a datasets folder, or a hub name "
        "'user/name')"
    )


def _looks_like_hub_name(text: str) -> bool:
    """'user/name', but not a mistyped local file such as 'data/captions.jsonl'."""
    if not _HUB_NAME_RE.match(text):
        return False
    suffix = os.path.splitext(text)[1].lower()
    known = {".jsonl", ".json", ".csv", ".tsv", ".tar", ".txt", *HF_DATA_SUFFIXES, *IMAGE_EXTENSIONS}
    return suffix not in known


def _detect_file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return "webdataset"
    if suffix in (".jsonl", ".csv", ".tsv"):
        return suffix[1:]
    if suffix == ".json":
        return "coco"  # the structure is checked when it is read (the whole file has to be parsed anyway)
    if suffix in HF_DATA_SUFFIXES:
        return "hf"
    raise ValueError(
        f"unsupported caption file {str(path)!r}: expected .jsonl, .csv, .tsv, a COCO captions .json, "
        ".tar (webdataset) or .parquet/.arrow (Hugging Face datasets)"
    )


def is_saved_dataset(folder: Path) -> bool:
    """Whether `datasets` wrote this folder (`save_to_disk`): it is loaded with load_from_disk, not load_dataset."""
    return any((folder / marker).is_file() for marker in HF_MARKERS)


def _detect_folder_kind(root: Path) -> str:
    if is_saved_dataset(root):
        return "hf"
    if has_metadata(root):
        return "imagefolder"
    names = {entry.name for entry in os.scandir(root)}
    if any(name.lower().endswith(".tar") and (root / name).is_file() for name in names):
        return "webdataset"
    if _has_captioned_image(root):
        return "folder"
    if _find_files(root, HF_DATA_SUFFIXES, limit=1):
        return "hf"
    found = _describe_folder(root)
    raise ValueError(
        f"caption folder {str(root)!r} has neither images with .txt captions beside them "
        f"(img2dataset layout 00000/000000012.jpg + 000000012.txt), nor a metadata.jsonl/.csv (Hugging Face "
        f"ImageFolder), nor .tar shards nor Hugging Face data; "
        f"found {found}. Pass a .jsonl/.csv/.tsv/.json caption file directly; to label images without "
        "captions use `glip-label annotate`."
    )


def _walk_sorted(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted file names) depth-first in sorted order, hidden names skipped, links not followed."""
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield folder, sorted(f for f in filenames if not f.startswith("."))


def _has_captioned_image(root: Path) -> bool:
    """Stops at the first image with a sidecar .txt, so detection on a huge folder stays cheap."""
    for _, filenames in _walk_sorted(root):
        stems_with_txt = {os.path.splitext(f)[0] for f in filenames if f.lower().endswith(".txt")}
        if stems_with_txt and any(is_image_name(f) and os.path.splitext(f)[0] in stems_with_txt for f in filenames):
            return True
    return False


def _find_files(root: Path, suffixes: Sequence[str], limit: int | None = None) -> list[Path]:
    found: list[Path] = []
    for folder, filenames in _walk_sorted(root):
        for name in filenames:
            if name.lower().endswith(tuple(suffixes)):
                found.append(Path(folder) / name)
                if limit is not None and len(found) >= limit:
                    return found
    return found


def _describe_folder(root: Path, max_files: int = 100_000) -> str:
    counts: dict[str, int] = {}
    seen = 0
    for _, filenames in _walk_sorted(root):
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower() or "(no extension)"
            counts[suffix] = counts.get(suffix, 0) + 1
            seen += 1
        if seen >= max_files:
            break
    if not counts:
        return "no files"
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {suffix}" for suffix, n in ranked[:8]) + (", ..." if len(ranked) > 8 else "")


SHARD_PATTERN_CHARS = "*?[{"


def is_shard_pattern(text: str) -> bool:
    """Whether a source names its shards by a pattern (glob wildcards or webdataset's braces)."""
    return any(ch in text for ch in SHARD_PATTERN_CHARS)


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard notation, ``shards-{000000..000099}.tar`` or ``{train,val}-{0..3}.tar``: expanded by
    `braceexpand`, the package webdataset expands its URLs with, so a pattern names the same shards here as in
    the user's webdataset pipeline (bash's rules: zero-padded ranges, nesting, a brace without ``..`` or ``,``
    kept as it is). Users quote the pattern so that the shell leaves it to us."""
    from braceexpand import UnbalancedBracesError, braceexpand

    try:
        return list(braceexpand(pattern))
    except UnbalancedBracesError as exc:
        raise ValueError(f"caption source pattern {pattern!r}: {exc}") from None


def match_tars(pattern: str) -> list[Path]:
    """The ``.tar`` shards a pattern names, in its order: webdataset's braces are expanded first
    (:func:`expand_braces`), then each name is globbed (sorted; ``**`` spans folders). A shard that the braces
    name outright but that is not there raises FileNotFoundError before any is read (webdataset would stop at
    it halfway through a run)."""
    found: dict[Path, None] = {}
    missing = []
    for name in expand_braces(pattern):
        if any(ch in name for ch in "*?["):
            found.update(dict.fromkeys(Path(p) for p in sorted(glob.glob(name, recursive=True))
                                       if p.lower().endswith(".tar")))
        elif Path(name).is_file():
            if name.lower().endswith(".tar"):
                found[Path(name)] = None
        else:
            missing.append(name)
    if missing and found:
        raise FileNotFoundError(f"{len(missing)} of the shards {pattern!r} names do not exist, first {missing[0]!r}")
    return list(found)
