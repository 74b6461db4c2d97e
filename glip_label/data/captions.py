"""Caption corpora, streamed: image-caption pairs from every layout people keep them in.

`glip-label pseudo-caption` labels corpora of millions of web image-caption pairs (CC3M/CC12M/SBU
as img2dataset downloads them, GRIT, COCO captions, Hugging Face datasets). Such corpora are never
held in memory here: every reader yields one :class:`CaptionItem` at a time, and images are decoded
only when :func:`load_caption_image` is called (typically in prefetch threads).

As with image folders (:mod:`glip_label.data.images`), one bad record must never end a run: a missing
or empty caption, caption bytes that are not UTF-8, a row without an image, a repeated id, a bad
phrase list all become a :class:`CaptionError` with a short reason, and iteration goes on. Only a
source that cannot be read at all (does not exist, unknown layout, a CSV header without the caption
column, a JSON file that is not COCO captions) raises, because nothing useful could follow.

Supported layouts (:func:`detect_source_kind`):

* ``folder``: img2dataset "files" output, ``00000/000000012.jpg`` + ``000000012.txt`` (+ ``.json``);
* ``webdataset``: ``.tar`` shards (a folder of them, a glob, or one file) holding ``key.jpg`` +
  ``key.txt`` (+ ``key.json``), members of one sample next to each other;
* ``jsonl`` / ``csv`` / ``tsv``: one record per line/row with ``image`` and ``caption`` columns;
* ``coco``: a COCO captions json (``images`` + ``annotations[].caption``), one item per caption;
* ``hf``: a Hugging Face ``datasets`` source (``save_to_disk`` folder, a folder or file of
  parquet/arrow data, or a hub name such as ``user/name``), imported lazily.

Ids are stable across runs, because the run journal resumes by id: the image path relative to the
source folder (folder, and jsonl/csv without an id column), the member key (webdataset),
``"imageid:annid"`` (COCO), the ``id``/``key`` column or else the row number (HF, jsonl, csv).
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glip_label.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    LoadedImage,
    _decode,
    discover_images,
    is_image_name,
    load_image,
)

logger = logging.getLogger(__name__)

SOURCE_KINDS: tuple[str, ...] = ("folder", "webdataset", "jsonl", "csv", "tsv", "coco", "hf")
DATASETS_EXTRA_HINT = "pip install datasets"

# Files that mark a folder written by `datasets` (`save_to_disk` of a Dataset / a DatasetDict).
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HF_DATA_SUFFIXES = (".parquet", ".arrow")
_HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ID_COLUMNS = ("id", "key")
# Image member preference inside one webdataset sample (img2dataset writes jpg; others png/webp).
_WDS_IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class ImageFile:
    """An image on disk: ``root / file_name`` (``file_name`` may be absolute)."""

    root: str
    file_name: str

    @property
    def display_name(self) -> str:
        return self.file_name


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed tar shard.

    ``offset``/``size`` locate the member's bytes in the shard (recorded while iterating), so loading
    one image is an open + seek + read: no tar index has to be rebuilt per image and no handle stays
    open between items. ``offset`` is -1 for the rare members whose data is not contiguous (sparse
    members); those are read through :mod:`tarfile` by name.
    """

    tar_path: str
    member: str
    offset: int = -1
    size: int = 0

    @property
    def display_name(self) -> str:
        return f"{os.path.basename(self.tar_path)}/{self.member}"


@dataclass(frozen=True)
class ImageBytes:
    """Encoded image bytes carried by the record itself (a Hugging Face ``Image`` column)."""

    data: bytes = field(repr=False)
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name


@dataclass(frozen=True)
class DatasetRow:
    """The image of row ``index`` of a Hugging Face dataset, read only when it is loaded.

    Readers of pseudo-caption outputs (`glip_label.data.image_refs`) point at rows this way, so a
    corpus is never copied or held in memory: ``save_to_disk`` data is memory-mapped on first use.
    """

    source: str
    split: str
    column: str
    index: int
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name or f"{os.path.basename(self.source.rstrip('/'))}[{self.index}]"


ImageRef = ImageFile | TarMember | ImageBytes | DatasetRow


@dataclass
class CaptionItem:
    """One image-caption pair.

    id:       unique and stable within the source (see the module docstring)
    caption:  the caption exactly as stored (a trailing line break of a .txt file removed)
    image_ref: where the image is; decode it with :func:`load_caption_image`
    phrases / spans: given by the source (``phrases_column``), else None and a chunker finds them;
             spans[j] is a list of [start, end) character spans into ``caption``, and
             ``phrases[j] == caption[spans[j][0][0]:spans[j][0][1]]``
    meta:     the record's other fields (sidecar json, other columns), passed through to outputs
    """

    id: str
    caption: str
    image_ref: ImageRef
    phrases: list[str] | None = None
    spans: list[list[tuple[int, int]]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaptionError:
    """Why one record could not be used; ``reason`` is a short sentence for the run report."""

    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason}


class _BadRecord(ValueError):
    """Raised inside a reader for one bad record; turned into a CaptionError by the caller."""


# ------------------------------------------------------------------------------------------------ detection


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
    if any(ch in text for ch in "*?["):
        matches = _glob_tars(text)
        if matches:
            return "webdataset"
        raise FileNotFoundError(f"caption source glob {text!r} matches no .tar shard")
    if _looks_like_hub_name(text):
        return "hf"
    raise FileNotFoundError(
        f"caption source {text!r} does not exist (expected a folder of images with .txt captions, .tar "
        "shards, a .jsonl/.csv/.tsv/COCO captions .json file, a datasets folder, or a hub name 'user/name')"
    )


def _looks_like_hub_name(text: str) -> bool:
    """'user/name', but not a mistyped local file such as 'data/captions.jsonl'."""
    if not _HUB_NAME_RE.match(text):
        return False
    suffix = os.path.splitext(text)[1].lower()
    known = {".jsonl", ".json", ".csv", ".tsv", ".tar", ".txt", *_HF_DATA_SUFFIXES, *IMAGE_EXTENSIONS}
    return suffix not in known


def _detect_file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return "webdataset"
    if suffix in (".jsonl", ".csv", ".tsv"):
        return suffix[1:]
    if suffix == ".json":
        return "coco"  # the structure is checked when it is read (the whole file has to be parsed anyway)
    if suffix in _HF_DATA_SUFFIXES:
        return "hf"
    raise ValueError(
        f"unsupported caption file {str(path)!r}: expected .jsonl, .csv, .tsv, a COCO captions .json, "
        ".tar (webdataset) or .parquet/.arrow (Hugging Face datasets)"
    )


def _detect_folder_kind(root: Path) -> str:
    names = {entry.name for entry in os.scandir(root)}
    if any(marker in names for marker in _HF_MARKERS):
        return "hf"
    if any(name.lower().endswith(".tar") and (root / name).is_file() for name in names):
        return "webdataset"
    if _has_captioned_image(root):
        return "folder"
    if _find_files(root, _HF_DATA_SUFFIXES, limit=1):
        return "hf"
    found = _describe_folder(root)
    raise ValueError(
        f"caption folder {str(root)!r} has neither images with .txt captions beside them "
        f"(img2dataset layout 00000/000000012.jpg + 000000012.txt) nor .tar shards nor Hugging Face data; "
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


def _glob_tars(pattern: str) -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if p.lower().endswith(".tar")]


# ------------------------------------------------------------------------------------------------ iteration


def iter_captions(
    source: str | Path,
    image_column: str = "image",
    caption_column: str = "caption",
    phrases_column: str | None = None,
    split: str = "train",
    streaming: bool = True,
    *,
    image_root: str | Path | None = None,
) -> Iterator[CaptionItem | CaptionError]:
    """Stream the items of a caption source, in a deterministic order.

    ``image_column``/``caption_column`` name the fields of jsonl/csv/tsv/HF records (and the caption
    key looked up in a sidecar json when a sample has no .txt). ``phrases_column`` names a field with
    given noun phrases: GRIT ``noun_chunks`` ([[start, end, x1, y1, x2, y2, score], ...]), plain
    [[start, end], ...] spans, or phrase strings located in the caption; a record without it gets
    ``phrases=None``. For folder/webdataset sources it is a key of the sidecar json.
    ``split``/``streaming`` apply to Hugging Face sources only. ``image_root`` is the folder relative
    image paths are resolved against: by default the caption file's folder (jsonl/csv/tsv/COCO) or
    the dataset folder (HF); COCO caption files usually live in ``annotations/`` apart from the
    images, so pass it there.

    The source kind is detected (and a missing source raised) at call time; structural errors of the
    file itself raise on the first ``next()``.
    """
    kind = detect_source_kind(source)
    text = os.path.expanduser(str(source))
    root_override = None if image_root is None else os.path.abspath(os.path.expanduser(str(image_root)))
    columns = _Columns(image_column, caption_column, phrases_column)
    logger.info("caption source %s: %s", text, kind)
    if kind == "folder":
        return _iter_folder(Path(text), columns)
    if kind == "webdataset":
        return _dedup(_iter_webdataset(_tar_shards(text), columns))
    if kind == "jsonl":
        return _dedup(_iter_jsonl(Path(text), columns, root_override))
    if kind in ("csv", "tsv"):
        return _dedup(_iter_delimited(Path(text), columns, root_override, delimiter="\t" if kind == "tsv" else ","))
    if kind == "coco":
        return _dedup(_iter_coco(Path(text), columns, root_override))
    return _dedup(_iter_hf(text, columns, split, streaming, root_override))


@dataclass(frozen=True)
class _Columns:
    image: str
    caption: str
    phrases: str | None


def _dedup(items: Iterable[CaptionItem | CaptionError]) -> Iterator[CaptionItem | CaptionError]:
    """Report every repeat of an id as an error (the first occurrence wins).

    Silently dropping a repeat would lose a caption without trace, and keeping it would make two
    outputs with one key that the journal could not tell apart. The set of seen ids is the only
    per-item state kept for the whole corpus (about 100 bytes per id).
    """
    seen: set[str] = set()
    for item in items:
        if isinstance(item, CaptionItem):
            if item.id in seen:
                yield CaptionError(
                    item.id,
                    "duplicate id: an earlier record has the same id (give each record a unique 'id' column "
                    "to keep several captions of one image)",
                )
                continue
            seen.add(item.id)
        yield item


def _check_caption(value: Any) -> str:
    if value is None:
        raise _BadRecord("missing caption")
    if not isinstance(value, str):
        raise _BadRecord(f"caption is a {type(value).__name__}, expected text")
    if _has_surrogates(value):
        raise _BadRecord("caption is not valid UTF-8")
    if not value.strip():
        raise _BadRecord("empty caption")
    return value


def _has_surrogates(text: str) -> bool:
    """Undecodable bytes read with errors='surrogateescape' show up as lone surrogates."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _decode_caption_bytes(data: bytes) -> str:
    """A .txt caption: strict UTF-8, BOM and trailing line break removed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord(f"caption is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    return _check_caption(text.rstrip("\r\n"))


def _record_id(record: Mapping[str, Any], fallback: str) -> str:
    for column in _ID_COLUMNS:
        value = record.get(column)
        if value is not None and str(value) != "":
            return str(value)
    return fallback


def _meta(record: Mapping[str, Any], columns: _Columns) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in (columns.image, columns.caption)}


def _phrases_of(record: Mapping[str, Any], columns: _Columns, caption: str):
    if columns.phrases is None:
        return None, None
    return parse_phrases(record.get(columns.phrases), caption)


def _path_ref(value: Any, root: str) -> ImageFile:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _BadRecord("missing image")
    if not isinstance(value, str):
        raise _BadRecord(f"image is a {type(value).__name__}, expected a path")
    if _URL_RE.match(value):
        raise _BadRecord(
            f"image is a URL ({value[:80]}); glip-label does not download images (fetch them first, e.g. with "
            "img2dataset, and point at the result)"
        )
    return ImageFile(root, value)


# -- folder (img2dataset "files") ----------------------------------------------------------------


def _iter_folder(root: Path, columns: _Columns) -> Iterator[CaptionItem | CaptionError]:
    """Images found as `glip-label annotate` finds them (sorted, loop-safe), each with its sidecar .txt.

    Relative paths are unique by construction, so no duplicate check is needed. A .txt without an image
    beside it is not a sample (it may be a README) and is ignored.
    """
    root_abs, names = discover_images(root)
    for rel in names:
        stem = os.path.splitext(rel)[0]
        try:
            txt_path = root_abs / f"{stem}.txt"
            try:
                data = txt_path.read_bytes()
            except FileNotFoundError:
                raise _BadRecord(f"no caption: {Path(stem).name}.txt is missing beside the image") from None
            except OSError as exc:
                raise _BadRecord(f"cannot read caption file ({exc.strerror or exc})") from None
            caption = _decode_caption_bytes(data)
            meta = _read_sidecar_json(root_abs / f"{stem}.json")
            meta.pop(columns.caption, None)
            phrases, spans = _phrases_of(meta, columns, caption)
        except _BadRecord as exc:
            yield CaptionError(rel, str(exc))
            continue
        yield CaptionItem(rel, caption, ImageFile(str(root_abs), rel), phrases, spans, meta)


def _read_sidecar_json(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _BadRecord(f"cannot read {path.name} ({exc.strerror or exc})") from None
    return _parse_sidecar(data, path.name)


def _parse_sidecar(data: bytes, name: str) -> dict[str, Any]:
    """The metadata img2dataset writes beside each sample. It is needed when phrases come from it,
    so a broken one makes the record bad rather than silently losing its phrases."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRecord(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _BadRecord(f"{name} holds a {type(value).__name__}, expected a JSON object")
    return value


# -- webdataset ----------------------------------------------------------------------------------


def _tar_shards(text: str) -> list[Path]:
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
    return _glob_tars(text)


def _split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's rule: the key is the path up to the first '.' of the last component."""
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _iter_webdataset(shards: list[Path], columns: _Columns) -> Iterator[CaptionItem | CaptionError]:
    for shard in shards:
        try:
            # "r:" = uncompressed only: member offsets must be file offsets for the seek-and-read loader.
            tar = tarfile.open(shard, mode="r:")  # noqa: SIM115 - closed by the with-block just below
        except (tarfile.TarError, OSError) as exc:
            yield CaptionError(shard.name, f"cannot read tar shard (not an uncompressed tar?): {exc}")
            continue
        with tar:
            for key, group, problem in _shard_samples(tar, os.fstat(tar.fileobj.fileno()).st_size):
                if group:
                    yield _webdataset_item(tar, shard, key, group, columns)
                if problem:
                    yield CaptionError(shard.name, problem)


def _shard_samples(
    tar: tarfile.TarFile, shard_size: int
) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], str | None]]:
    """(key, {ext: member}, problem) per sample, in shard order; members of a sample are consecutive.

    :mod:`tarfile` reads a shard cut inside member data or inside a header as if it ended cleanly, so
    member ends are checked against the file size and the end-of-archive marker is checked at the
    end: the samples before the cut are kept and the shard is reported (the last tuple's ``problem``).
    """
    key, group, samples = "", {}, 0
    problem: str | None = None
    try:
        for info in tar:
            if not info.isfile():
                continue
            parts = _split_member_name(info.name)
            if parts is None:
                continue
            if parts[0] != key:
                if group:
                    yield key, group, None
                    samples += 1
                key, group = parts[0], {}
            group.setdefault(parts[1], info)
            if info.offset_data + info.size > shard_size:
                problem = f"tar shard is truncated: member {info.name} is cut off (after {samples} samples)"
            if problem:
                break
    except (tarfile.TarError, OSError, EOFError) as exc:
        problem = f"tar shard is truncated or corrupt after {samples} samples: {exc}"
    if problem is None and not _ends_with_eof_marker(tar):
        problem = (
            f"tar shard is truncated or corrupt after {samples + bool(group)} samples: no end-of-archive "
            f"marker at byte {tar.offset} (a cut-off or invalid header)"
        )
    yield key, group, problem


def _ends_with_eof_marker(tar: tarfile.TarFile) -> bool:
    """tarfile stops silently at a truncated or invalid header; a complete tar ends with zero blocks there."""
    fileobj = tar.fileobj
    position = fileobj.tell()
    try:
        fileobj.seek(tar.offset)
        tail = fileobj.read(2 * tarfile.BLOCKSIZE)
    finally:
        fileobj.seek(position)
    return len(tail) >= tarfile.BLOCKSIZE and not tail.strip(b"\0")


def _webdataset_item(
    tar: tarfile.TarFile, shard: Path, key: str, group: dict[str, tarfile.TarInfo], columns: _Columns
) -> CaptionItem | CaptionError:
    try:
        image_info = next((group[ext] for ext in _WDS_IMAGE_EXTS if ext in group), None)
        if image_info is None:
            raise _BadRecord(f"sample has no image member (found: {', '.join(sorted(group)) or 'nothing'})")
        meta = _parse_sidecar(_read_member(tar, group["json"]), f"{key}.json") if "json" in group else {}
        if "txt" in group:
            caption = _decode_caption_bytes(_read_member(tar, group["txt"]))
        elif columns.caption in meta:
            caption = _check_caption(meta[columns.caption])
        else:
            raise _BadRecord(f"no caption: {key}.txt is missing from the shard")
        meta.pop(columns.caption, None)
        phrases, spans = _phrases_of(meta, columns, caption)
    except _BadRecord as exc:
        return CaptionError(key, str(exc))
    offset = -1 if image_info.issparse() else image_info.offset_data
    ref = TarMember(str(shard.resolve()), image_info.name, offset, image_info.size)
    return CaptionItem(key, caption, ref, phrases, spans, meta)


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    try:
        handle = tar.extractfile(info)
        if handle is None:
            raise _BadRecord(f"{info.name} is not a regular file")
        with handle:
            data = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _BadRecord(f"cannot read {info.name} from the shard ({exc})") from None
    if len(data) != info.size:
        raise _BadRecord(f"{info.name} is truncated in the shard ({len(data)} of {info.size} bytes)")
    return data


# -- jsonl / csv / tsv ---------------------------------------------------------------------------


def _iter_jsonl(path: Path, columns: _Columns, root_override: str | None) -> Iterator[CaptionItem | CaptionError]:
    root = root_override or str(path.resolve().parent)
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            where = f"{path.name}:{line_no}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield CaptionError(where, "line is not valid UTF-8")
                continue
            try:
                record = json.loads(text.removeprefix("\ufeff"))
            except json.JSONDecodeError as exc:
                yield CaptionError(where, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield CaptionError(where, f"line holds a JSON {type(record).__name__}, expected an object")
                continue
            yield _table_item(record, columns, root, where)


def _iter_delimited(
    path: Path, columns: _Columns, root_override: str | None, delimiter: str
) -> Iterator[CaptionItem | CaptionError]:
    root = root_override or str(path.resolve().parent)
    # surrogateescape: a row with bad bytes becomes one CaptionError instead of a UnicodeDecodeError
    # that would end the whole file (quoted fields may span lines, so rows cannot be decoded alone).
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        if any(_has_surrogates(name) for name in header):
            raise ValueError(f"{path.name}: the header row is not valid UTF-8")
        missing = [c for c in (columns.image, columns.caption) if c not in header]
        if missing:
            raise ValueError(
                f"{path.name}: no column {' or '.join(repr(c) for c in missing)} in the header "
                f"(columns: {', '.join(repr(h) for h in header) or 'none'}); set image_column/caption_column"
            )
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield CaptionError(f"{path.name}:{reader.line_num}", f"malformed row ({exc})")
                continue
            where = f"{path.name}:{reader.line_num}"
            bad_column = _invalid_utf8_column(row)
            if bad_column is not None:
                reason = "caption" if bad_column == columns.caption else f"column {bad_column!r}"
                yield CaptionError(_record_id(row, where), f"{reason} is not valid UTF-8")
                continue
            row.pop(None, None)  # extra fields beyond the header
            if columns.phrases is not None and isinstance(row.get(columns.phrases), str):
                row[columns.phrases] = _json_cell(row[columns.phrases])
            yield _table_item(row, columns, root, where)


def _invalid_utf8_column(row: dict[str | None, Any]) -> str | None:
    """The first column holding undecodable bytes ("extra fields" for cells beyond the header)."""
    for column, value in row.items():
        cells = value if isinstance(value, list) else [value]  # DictReader puts extra cells in a list
        if any(isinstance(cell, str) and _has_surrogates(cell) for cell in cells):
            return column if column is not None else "extra fields"
    return None


def _json_cell(text: str) -> Any:
    """A phrases cell holds JSON ([[0, 5], ...] or ["a dog", ...]); an empty cell means no phrases given."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _Unparsable(text)


@dataclass(frozen=True)
class _Unparsable:
    text: str


def _table_item(record: dict[str, Any], columns: _Columns, root: str, where: str) -> CaptionItem | CaptionError:
    image_value = record.get(columns.image)
    item_id = _record_id(record, image_value if isinstance(image_value, str) and image_value.strip() else where)
    try:
        if columns.image not in record:
            raise _BadRecord(f"no {columns.image!r} field")
        ref = _path_ref(image_value, root)
        caption = _check_caption(record.get(columns.caption))
        phrases, spans = _phrases_of(record, columns, caption)
    except _BadRecord as exc:
        return CaptionError(item_id, str(exc))
    return CaptionItem(item_id, caption, ref, phrases, spans, _meta(record, columns))


# -- COCO captions -------------------------------------------------------------------------------


def _iter_coco(path: Path, columns: _Columns, root_override: str | None) -> Iterator[CaptionItem | CaptionError]:
    """One item per caption annotation, in file order.

    A COCO json is a single document, so it is parsed whole (about 90 MB for captions_train2017); the
    items are still produced one at a time.
    """
    root = root_override or str(path.resolve().parent)
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path.name} is not a COCO captions file: no 'images' list")
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise ValueError(f"{path.name} is not a COCO captions file: no 'annotations' list")
    if annotations and not any(isinstance(a, dict) and "caption" in a for a in annotations[:100]):
        raise ValueError(
            f"{path.name} has annotations without 'caption' (a detection file?); expected COCO captions "
            "(annotations[].caption)"
        )
    images: dict[Any, dict[str, Any]] = {}
    for image in data["images"]:
        if isinstance(image, dict) and "id" in image:
            images[image["id"]] = image
    del data
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            yield CaptionError(f"annotation#{index}", f"annotation is a {type(ann).__name__}, expected an object")
            continue
        ann_id = ann.get("id", f"#{index}")
        item_id = f"{ann.get('image_id')}:{ann_id}"
        try:
            image = images.get(ann.get("image_id"))
            if image is None:
                raise _BadRecord(f"image_id {ann.get('image_id')!r} is not in 'images'")
            ref = _path_ref(image.get("file_name"), root)
            caption = _check_caption(ann.get(columns.caption))
            phrases, spans = _phrases_of(ann, columns, caption)
        except _BadRecord as exc:
            yield CaptionError(item_id, str(exc))
            continue
        meta = {"image_id": ann.get("image_id"), "annotation_id": ann.get("id")}
        meta.update({k: image[k] for k in ("width", "height") if k in image})
        yield CaptionItem(item_id, caption, ref, phrases, spans, meta)


# -- Hugging Face datasets -----------------------------------------------------------------------


def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"reading Hugging Face datasets needs the 'datasets' package: {DATASETS_EXTRA_HINT}") from exc
    return datasets


def _open_hf(text: str, split: str, streaming: bool):
    """The dataset object and the folder relative image paths resolve against (None for the hub)."""
    datasets = _import_datasets()
    path = Path(text)
    if path.is_dir():
        names = {entry.name for entry in os.scandir(path)}
        if any(marker in names for marker in _HF_MARKERS):
            # save_to_disk output cannot be streamed; load_from_disk memory-maps the arrow files instead.
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"split {split!r} not in {text!r} (splits: {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded, str(path.resolve())
        return datasets.load_dataset(str(path), split=split, streaming=streaming), str(path.resolve())
    if path.is_file():
        builder = "parquet" if path.suffix.lower() == ".parquet" else "arrow"
        # a single data file is one split, always called "train"
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
        return ds, str(path.resolve().parent)
    try:
        return datasets.load_dataset(text, split=split, streaming=streaming), None
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        raise RuntimeError(
            f"{text!r} is not a local path and could not be loaded from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _iter_hf(
    text: str, columns: _Columns, split: str, streaming: bool, root_override: str | None
) -> Iterator[CaptionItem | CaptionError]:
    datasets = _import_datasets()
    ds, local_root = _open_hf(text, split, streaming)
    features = getattr(ds, "features", None)
    if features is not None:
        missing = [c for c in (columns.image, columns.caption) if c not in features]
        if missing:
            raise ValueError(
                f"{text!r}: no column {' or '.join(repr(c) for c in missing)} "
                f"(columns: {', '.join(features)}); set image_column/caption_column"
            )
        if isinstance(features[columns.image], datasets.Image):
            # Undecoded bytes/paths: we decode ourselves, with our pixel limit, EXIF and RGB rules, and a
            # corrupt image becomes an ImageError at load time instead of an exception inside iteration.
            ds = ds.cast_column(columns.image, datasets.Image(decode=False))
    root = root_override or local_root or os.getcwd()
    for index, record in enumerate(ds):
        item_id = _record_id(record, str(index))
        try:
            ref = _hf_image_ref(record.get(columns.image), root, item_id)
            caption = _check_caption(record.get(columns.caption))
            phrases, spans = _phrases_of(record, columns, caption)
        except _BadRecord as exc:
            yield CaptionError(item_id, str(exc))
            continue
        yield CaptionItem(item_id, caption, ref, phrases, spans, _meta(record, columns))


def _hf_image_ref(value: Any, root: str, item_id: str) -> ImageRef:
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
        if data:
            return ImageBytes(bytes(data), path or item_id)
        return _path_ref(path, root)
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise _BadRecord("image bytes are empty")
        return ImageBytes(bytes(value), item_id)
    if value is not None and hasattr(value, "save") and hasattr(value, "mode"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImageBytes(buffer.getvalue(), item_id)
    return _path_ref(value, root)


# ------------------------------------------------------------------------------------------------ phrases


def parse_phrases(value: Any, caption: str) -> tuple[list[str] | None, list[list[tuple[int, int]]] | None]:
    """Given phrases of a record → (phrases, spans), validated against the caption.

    Accepts GRIT-style lists [[start, end, x1, y1, x2, y2, score], ...] (only the span is used),
    [[start, end], ...], or phrase strings, each located in the caption at its first occurrence after
    the previous phrase (falling back to the first anywhere, then to a case-insensitive match).
    None means "not given". Raises _BadRecord (a ValueError) for anything that does not fit the caption.
    """
    if value is None:
        return None, None
    if isinstance(value, _Unparsable):
        raise _BadRecord(f"phrases are not valid JSON: {value.text[:60]!r}")
    if hasattr(value, "tolist"):  # numpy / pyarrow arrays from parquet-backed sources
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise _BadRecord(f"phrases must be a list, got {type(value).__name__}")
    phrases: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    cursor = 0
    for j, entry in enumerate(value):
        if isinstance(entry, str):
            start = _locate(caption, entry, cursor)
            if start is None:
                raise _BadRecord(f"phrase {j} ({entry!r}) does not occur in the caption")
            end = start + len(entry)
            cursor = end
        else:
            if hasattr(entry, "tolist"):
                entry = entry.tolist()
            if not isinstance(entry, (list, tuple)) or len(entry) < 2:
                raise _BadRecord(f"phrase {j}: expected [start, end, ...] or a string, got {entry!r}")
            start, end = _as_index(entry[0], j), _as_index(entry[1], j)
        if not 0 <= start < end <= len(caption):
            raise _BadRecord(f"phrase {j}: span ({start}, {end}) does not fit a caption of {len(caption)} characters")
        phrases.append(caption[start:end])
        spans.append([(start, end)])
    return phrases, spans


def _as_index(value: Any, j: int) -> int:
    if isinstance(value, bool):
        raise _BadRecord(f"phrase {j}: span bound {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # parquet stores GRIT's mixed lists as doubles
    raise _BadRecord(f"phrase {j}: span bound {value!r} is not an integer")


def _locate(caption: str, phrase: str, cursor: int) -> int | None:
    if not phrase:
        return None
    for haystack, needle in ((caption, phrase), (caption.lower(), phrase.lower())):
        # lower() can change lengths for a few scripts; only trust the case-insensitive pass when it doesn't
        if len(haystack) != len(caption) or len(needle) != len(phrase):
            continue
        found = haystack.find(needle, cursor)
        if found < 0:
            found = haystack.find(needle)
        if found >= 0:
            return found
    return None


# ------------------------------------------------------------------------------------------------ images


def load_caption_image(
    item: CaptionItem | ImageRef, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LoadedImage | ImageError:
    """Decode an item's image like :func:`glip_label.data.images.load_image` (same pixel limit, EXIF,
    RGB conversion and error reasons); never raises for bad data.

    ``file_name`` of the result is the image's display name: the path for files, ``shard.tar/member``
    for webdataset members, the stored path or the item id for in-record bytes. Thread-safe: nothing
    is shared between calls, and no file handle outlives a call.
    """
    ref = item.image_ref if isinstance(item, CaptionItem) else item
    if isinstance(ref, ImageFile):
        return load_image(Path(ref.root), ref.file_name, max_pixels)
    if isinstance(ref, TarMember):
        name = ref.display_name
        try:
            data = _read_tar_member(ref)
        except FileNotFoundError:
            return ImageError(name, "tar shard not found", "missing")
        except PermissionError:
            return ImageError(name, "permission denied", "permission")
        except (OSError, tarfile.TarError, KeyError) as exc:
            return ImageError(name, f"cannot read tar member ({exc})", "corrupt")
        if len(data) < ref.size:
            return ImageError(name, f"tar member truncated ({len(data)} of {ref.size} bytes)", "corrupt")
        return _decode_bytes(data, name, max_pixels)
    if isinstance(ref, ImageBytes):
        return _decode_bytes(ref.data, ref.display_name, max_pixels)
    if isinstance(ref, DatasetRow):
        return _load_dataset_row(ref, max_pixels)
    raise TypeError(f"unsupported image reference {type(ref).__name__}")


@functools.lru_cache(maxsize=4)
def _rows_of(source: str, split: str, column: str) -> tuple[Any, str]:
    """A random-access dataset (its image column left undecoded) and its image root; one per process."""
    datasets = _import_datasets()
    ds, local_root = _open_hf(source, split, streaming=False)
    if isinstance(ds.features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds, local_root or os.getcwd()


def _load_dataset_row(ref: DatasetRow, max_pixels: int | None) -> LoadedImage | ImageError:
    name = ref.display_name
    try:
        ds, root = _rows_of(ref.source, ref.split, ref.column)
        value = ds[ref.index][ref.column]
        inner = _hf_image_ref(value, root, name)
    except _BadRecord as exc:
        return ImageError(name, str(exc), "missing")
    except (OSError, IndexError, KeyError, ValueError, RuntimeError) as exc:
        return ImageError(name, f"cannot read row {ref.index} of {ref.source} ({exc})", "missing")
    return load_caption_image(inner, max_pixels)


def _read_tar_member(ref: TarMember) -> bytes:
    if ref.offset >= 0:
        with open(ref.tar_path, "rb") as fh:
            fh.seek(ref.offset)
            return fh.read(ref.size)
    with tarfile.open(ref.tar_path, mode="r:") as tar:
        handle = tar.extractfile(ref.member)
        if handle is None:
            raise OSError(f"{ref.member} is not a regular file")
        with handle:
            return handle.read()


def _decode_bytes(data: bytes, name: str, max_pixels: int | None) -> LoadedImage | ImageError:
    if not data:
        return ImageError(name, "zero-byte file", "empty")
    return _decode(io.BytesIO(data), name, max_pixels)
