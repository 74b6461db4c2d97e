"""The fields of one caption record: its id, caption, image path, phrases and metadata, checked.

Every reader turns its records into a :class:`~glip_label.data.captions.items.CaptionItem` through these
helpers, so a missing caption, caption bytes that are not UTF-8 or an image given as a URL read the same
whatever the source kind. A bad field raises :class:`~glip_label.data.captions.items.BadRecord`, which
the reader turns into a ``CaptionError`` for that record alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glip_label.data.captions.items import BadRecord, CaptionError, CaptionItem
from glip_label.data.captions.phrases import parse_phrases
from glip_label.data.captions.refs import ImageFile

_ID_COLUMNS = ("id", "key")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class Columns:
    """The record fields (columns, json keys) holding the image, the caption and the given phrases (optional)."""

    image: str
    caption: str
    phrases: str | None


@dataclass(frozen=True)
class SourceOptions:
    """What every reader is handed besides the source: which fields to read, the folder relative image
    paths resolve against when the user overrides it, and the split / streaming choice of Hugging Face sources."""

    columns: Columns
    image_root: str | None = None
    split: str = "train"
    streaming: bool = True


def check_caption(value: Any) -> str:
    """The caption itself, or BadRecord when it is missing, not text, not UTF-8 or blank."""
    if value is None:
        raise BadRecord("missing caption")
    if not isinstance(value, str):
        raise BadRecord(f"caption is a {type(value).__name__}, expected text")
    if has_surrogates(value):
        raise BadRecord("caption is not valid UTF-8")
    if not value.strip():
        raise BadRecord("empty caption")
    return value


def has_surrogates(text: str) -> bool:
    """Undecodable bytes read with errors='surrogateescape' show up as lone surrogates."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def decode_caption_bytes(data: bytes) -> str:
    """A .txt caption: strict UTF-8, BOM and trailing line break removed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"caption is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    return check_caption(text.rstrip("\r\n"))


def record_id(record: Mapping[str, Any], fallback: str) -> str:
    """The record's ``id`` (else ``key``) field as text; ``fallback`` when it has neither."""
    for column in _ID_COLUMNS:
        value = record.get(column)
        if value is not None and str(value) != "":
            return str(value)
    return fallback


def record_meta(record: Mapping[str, Any], columns: Columns) -> dict[str, Any]:
    """The fields passed through to the outputs: all but the image and the caption."""
    return {k: v for k, v in record.items() if k not in (columns.image, columns.caption)}


def phrases_of(record: Mapping[str, Any], columns: Columns, caption: str):
    """(phrases, spans) given by the record, or (None, None) when no phrases column was asked for."""
    if columns.phrases is None:
        return None, None
    return parse_phrases(record.get(columns.phrases), caption)


def path_ref(value: Any, root: str) -> ImageFile:
    """An image path field -> a file under ``root``; URLs are refused, as nothing is downloaded here."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRecord("missing image")
    if not isinstance(value, str):
        raise BadRecord(f"image is a {type(value).__name__}, expected a path")
    if _URL_RE.match(value):
        raise BadRecord(
            f"image is a URL ({value[:80]}); glip-label does not download images (fetch them first, e.g. with "
            "img2dataset, and point at the result)"
        )
    return ImageFile(root, value)


def parse_sidecar(data: bytes, name: str) -> dict[str, Any]:
    """The metadata img2dataset writes beside each sample (``key.json``, see img2dataset's README, "Output
    format"). It is needed when phrases come from it,
    so a broken one makes the record bad rather than silently losing its phrases."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRecord(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadRecord(f"{name} holds a {type(value).__name__}, expected a JSON object")
    return value


def table_item(record: dict[str, Any], columns: Columns, root: str, where: str) -> CaptionItem | CaptionError:
    """One jsonl line or csv/tsv row -> an item; ``where`` (``file:line``) is its id if it has no id and no image."""
    image_value = record.get(columns.image)
    item_id = record_id(record, image_value if isinstance(image_value, str) and image_value.strip() else where)
    try:
        if columns.image not in record:
            raise BadRecord(f"no {columns.image!r} field (it has {', '.join(map(repr, record)) or 'none'}: "
                            "--image-column names the one to use)")
        ref = path_ref(image_value, root)
        caption = check_caption(record.get(columns.caption))
        phrases, spans = phrases_of(record, columns, caption)
    except BadRecord as exc:
        return CaptionError(item_id, str(exc))
    return CaptionItem(item_id, caption, ref, phrases, spans, record_meta(record, columns))
