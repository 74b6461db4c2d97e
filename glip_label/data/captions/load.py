"""Decoding the image of a caption item, wherever it is: a file, a tar member, in-record bytes or a dataset row.

Images are decoded only here, typically in prefetch threads, with the rules of
:func:`glip_label.data.images.load_image` (pixel limit, EXIF, RGB, error reasons): a bad image is an
``ImageError``, never an exception.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from glip_label.data.captions.hf import hf_image_ref, import_datasets, open_hf
from glip_label.data.captions.items import BadRecord, CaptionItem
from glip_label.data.captions.refs import DatasetRow, ImageBytes, ImageFile, ImageRef, TarMember
from glip_label.data.images import DEFAULT_MAX_PIXELS, ImageError, LoadedImage, decode_image, load_image


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
            data = read_tar_member(ref)
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
def rows_of(source: str, split: str, column: str) -> tuple[Any, str]:
    """A random-access dataset (its image column left undecoded) and its image root; one per process."""
    datasets = import_datasets()
    ds, local_root = open_hf(source, split, streaming=False)
    if isinstance(ds.features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds, local_root or os.getcwd()


def _load_dataset_row(ref: DatasetRow, max_pixels: int | None) -> LoadedImage | ImageError:
    name = ref.display_name
    try:
        ds, root = rows_of(ref.source, ref.split, ref.column)
        value = ds[ref.index][ref.column]
        inner = hf_image_ref(value, root, name)
    except BadRecord as exc:
        return ImageError(name, str(exc), "missing")
    except (OSError, IndexError, KeyError, ValueError, RuntimeError) as exc:
        return ImageError(name, f"cannot read row {ref.index} of {ref.source} ({exc})", "missing")
    return load_caption_image(inner, max_pixels)


def read_tar_member(ref: TarMember) -> bytes:
    """The member's bytes as stored: one seek + read at the recorded offset, or by name through tarfile."""
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
    return decode_image(io.BytesIO(data), name, max_pixels)
