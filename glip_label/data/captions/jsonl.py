"""Reader of a JSON Lines caption file: one object per line with ``image`` and ``caption`` fields.

Image paths are relative to the file's folder unless ``image_root`` is given; the id of a record is
its ``id`` or ``key`` field, else its image path. A line that is not a JSON object is one bad record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from glip_label.data.captions.items import CaptionError, CaptionItem
from glip_label.data.captions.records import SourceOptions, table_item


def iter_jsonl(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """One item per non-blank line, in file order; ids of bad lines are ``file:line``."""
    path, columns = Path(source), options.columns
    root = options.image_root or str(path.resolve().parent)
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
            yield table_item(record, columns, root, where)
