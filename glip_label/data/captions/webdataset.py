"""Reader of webdataset ``.tar`` shards: ``key.jpg`` + ``key.txt`` (+ ``key.json``) per sample.

The layout is webdataset's (its README, "The WebDataset Format"): the members of one sample lie next to each
other and share a key, the member path up to the first ``.`` of its last component; img2dataset writes
it with ``--output_format webdataset``. The id of an item is its key. Image members are not read here:
their offset and size in the shard are recorded, so
:func:`glip_label.data.captions.load.load_caption_image` reads one with a seek.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from glip_label.data.captions.detect import match_tars
from glip_label.data.captions.items import BadRecord, CaptionError, CaptionItem
from glip_label.data.captions.records import (
    Columns,
    SourceOptions,
    check_caption,
    decode_caption_bytes,
    parse_sidecar,
    phrases_of,
)
from glip_label.data.captions.refs import TarMember

# Image member preference inside one webdataset sample (img2dataset writes jpg; others png/webp).
_WDS_IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


def iter_webdataset(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """The items of every shard of ``source`` (one .tar, a folder of them, a glob or webdataset's brace
    pattern), shard by shard.

    The shards are listed now, the shards themselves read as the items are consumed.
    """
    return _iter_shards(_tar_shards(source), options.columns)


def _tar_shards(text: str) -> list[Path]:
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
    return match_tars(text)


def _split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's rule: the key is the path up to the first '.' of the last component."""
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _iter_shards(shards: list[Path], columns: Columns) -> Iterator[CaptionItem | CaptionError]:
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
    tar: tarfile.TarFile, shard: Path, key: str, group: dict[str, tarfile.TarInfo], columns: Columns
) -> CaptionItem | CaptionError:
    try:
        image_info = next((group[ext] for ext in _WDS_IMAGE_EXTS if ext in group), None)
        if image_info is None:
            raise BadRecord(f"sample has no image member (found: {', '.join(sorted(group)) or 'nothing'})")
        meta = parse_sidecar(_read_member(tar, group["json"]), f"{key}.json") if "json" in group else {}
        if "txt" in group:
            caption = decode_caption_bytes(_read_member(tar, group["txt"]))
        elif columns.caption in meta:
            caption = check_caption(meta[columns.caption])
        else:
            raise BadRecord(f"no caption: {key}.txt is missing from the shard")
        meta.pop(columns.caption, None)
        phrases, spans = phrases_of(meta, columns, caption)
    except BadRecord as exc:
        return CaptionError(key, str(exc))
    offset = -1 if image_info.issparse() else image_info.offset_data
    ref = TarMember(str(shard.resolve()), image_info.name, offset, image_info.size)
    return CaptionItem(key, caption, ref, phrases, spans, meta)


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    try:
        handle = tar.extractfile(info)
        if handle is None:
            raise BadRecord(f"{info.name} is not a regular file")
        with handle:
            data = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadRecord(f"cannot read {info.name} from the shard ({exc})") from None
    if len(data) != info.size:
        raise BadRecord(f"{info.name} is truncated in the shard ({len(data)} of {info.size} bytes)")
    return data
