"""Reader of Hugging Face ``datasets`` sources: a ``save_to_disk`` folder, parquet/arrow data, or a hub name.

``datasets`` is imported only when such a source is read. An ``Image`` column is read undecoded
(``datasets.Image(decode=False)``, see the datasets docs, "Image" feature), so images are decoded by
:func:`glip_label.data.captions.load.load_caption_image` with glip-label's pixel limit and RGB rules. The
id of a row is its ``id`` or ``key`` column, else its row number.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glip_label.data.captions.detect import is_saved_dataset
from glip_label.data.captions.items import BadRecord, CaptionError, CaptionItem
from glip_label.data.captions.records import SourceOptions, check_caption, path_ref, phrases_of, record_id, record_meta
from glip_label.data.captions.refs import ImageBytes, ImageRef

DATASETS_EXTRA_HINT = "pip install datasets"


def import_datasets():
    """The ``datasets`` module, imported on first use so that other sources never need it installed."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"reading Hugging Face datasets needs the 'datasets' package: {DATASETS_EXTRA_HINT}") from exc
    return datasets


def open_hf(text: str, split: str, streaming: bool):
    """The dataset object and the folder relative image paths resolve against (None for the hub)."""
    datasets = import_datasets()
    path = Path(text)
    if path.is_dir():
        if is_saved_dataset(path):
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


def iter_hf(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """One item per row of the split, in row order; a missing image or caption column raises."""
    text, columns = source, options.columns
    datasets = import_datasets()
    ds, local_root = open_hf(text, options.split, options.streaming)
    features = getattr(ds, "features", None)
    if features is not None:
        missing = [c for c in (columns.image, columns.caption) if c not in features]
        if missing:
            raise ValueError(
                f"{text!r}: no column {' or '.join(repr(c) for c in missing)} "
                f"(columns: {', '.join(features)}); name them with --image-column / --caption-column"
            )
        if isinstance(features[columns.image], datasets.Image):
            # Undecoded bytes/paths: we decode ourselves, with our pixel limit, EXIF and RGB rules, and a
            # corrupt image becomes an ImageError at load time instead of an exception inside iteration.
            ds = ds.cast_column(columns.image, datasets.Image(decode=False))
    root = options.image_root or local_root or os.getcwd()
    for index, record in enumerate(ds):
        item_id = record_id(record, str(index))
        try:
            ref = hf_image_ref(record.get(columns.image), root, item_id)
            caption = check_caption(record.get(columns.caption))
            phrases, spans = phrases_of(record, columns, caption)
        except BadRecord as exc:
            yield CaptionError(item_id, str(exc))
            continue
        yield CaptionItem(item_id, caption, ref, phrases, spans, record_meta(record, columns))


def hf_image_ref(value: Any, root: str, item_id: str) -> ImageRef:
    """An image cell (undecoded ``Image`` dict, raw bytes, a PIL image or a path) -> where its image is."""
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
        if data:
            return ImageBytes(bytes(data), path or item_id)
        return path_ref(path, root)
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise BadRecord("image bytes are empty")
        return ImageBytes(bytes(value), item_id)
    if value is not None and hasattr(value, "save") and hasattr(value, "mode"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImageBytes(buffer.getvalue(), item_id)
    return path_ref(value, root)
