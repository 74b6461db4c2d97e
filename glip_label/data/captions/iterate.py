"""Streaming the items of any caption source: detect its kind, hand it to that kind's reader, check ids.

:data:`READERS` maps each source kind to its reader; every reader takes the source text and the
:class:`~glip_label.data.captions.records.SourceOptions` and yields items one at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from glip_label.data.captions.coco import iter_coco
from glip_label.data.captions.delimited import iter_csv, iter_tsv
from glip_label.data.captions.detect import detect_source_kind
from glip_label.data.captions.folder import iter_folder
from glip_label.data.captions.hf import iter_hf
from glip_label.data.captions.imagefolder import iter_imagefolder
from glip_label.data.captions.items import CaptionError, CaptionItem
from glip_label.data.captions.jsonl import iter_jsonl
from glip_label.data.captions.records import Columns, SourceOptions
from glip_label.data.captions.webdataset import iter_webdataset

logger = logging.getLogger(__name__)

Reader = Callable[[str, SourceOptions], Iterator[CaptionItem | CaptionError]]

READERS: dict[str, Reader] = {
    "folder": iter_folder,
    "imagefolder": iter_imagefolder,
    "webdataset": iter_webdataset,
    "jsonl": iter_jsonl,
    "csv": iter_csv,
    "tsv": iter_tsv,
    "coco": iter_coco,
    "hf": iter_hf,
}
"""Source kind (:data:`~glip_label.data.captions.detect.SOURCE_KINDS`) -> its reader."""

# Relative image paths are unique by construction in a folder, so its ids need no duplicate check.
_UNIQUE_IDS = frozenset({"folder"})


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
    ``split`` picks the split of Hugging Face sources and ImageFolders; ``streaming`` applies to Hugging Face
    sources only. ``image_root`` is the folder relative
    image paths are resolved against: by default the caption file's folder (jsonl/csv/tsv/COCO) or
    the dataset folder (HF); COCO caption files usually live in ``annotations/`` apart from the
    images, so pass it there.

    The source kind is detected (and a missing source raised) at call time; structural errors of the
    file itself raise on the first ``next()``.
    """
    kind = detect_source_kind(source)
    text = os.path.expanduser(str(source))
    root_override = None if image_root is None else os.path.abspath(os.path.expanduser(str(image_root)))
    options = SourceOptions(Columns(image_column, caption_column, phrases_column), root_override, split, streaming)
    logger.info("caption source %s: %s", text, kind)
    items = READERS[kind](text, options)
    return items if kind in _UNIQUE_IDS else _dedup(items)


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
