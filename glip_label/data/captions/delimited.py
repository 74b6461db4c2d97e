"""Reader of csv / tsv caption tables: a header naming the ``image`` and ``caption`` columns, a record per row.

Image paths are relative to the table's folder unless ``image_root`` is given; the id of a row is its
``id`` or ``key`` column, else its image path. A phrases cell holds JSON. A row with bytes that are not
UTF-8, or one the csv module cannot parse, is one bad record; a header without the image or caption
column raises.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glip_label.data.captions.items import CaptionError, CaptionItem
from glip_label.data.captions.phrases import Unparsable
from glip_label.data.captions.records import Columns, SourceOptions, has_surrogates, record_id, table_item


def iter_csv(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """One item per row of a comma-separated table."""
    return _iter_delimited(Path(source), options.columns, options.image_root, delimiter=",")


def iter_tsv(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """One item per row of a tab-separated table."""
    return _iter_delimited(Path(source), options.columns, options.image_root, delimiter="\t")


def _iter_delimited(
    path: Path, columns: Columns, root_override: str | None, delimiter: str
) -> Iterator[CaptionItem | CaptionError]:
    root = root_override or str(path.resolve().parent)
    # surrogateescape: a row with bad bytes becomes one CaptionError instead of a UnicodeDecodeError
    # that would end the whole file (quoted fields may span lines, so rows cannot be decoded alone).
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        if any(has_surrogates(name) for name in header):
            raise ValueError(f"{path.name}: the header row is not valid UTF-8")
        missing = [c for c in (columns.image, columns.caption) if c not in header]
        if missing:
            raise ValueError(
                f"{path.name}: no column {' or '.join(repr(c) for c in missing)} in the header "
                f"(columns: {', '.join(repr(h) for h in header) or 'none'}); name them with --image-column / "
                "--caption-column"
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
                yield CaptionError(record_id(row, where), f"{reason} is not valid UTF-8")
                continue
            row.pop(None, None)  # extra fields beyond the header
            if columns.phrases is not None and isinstance(row.get(columns.phrases), str):
                row[columns.phrases] = _json_cell(row[columns.phrases])
            yield table_item(row, columns, root, where)


def _invalid_utf8_column(row: dict[str | None, Any]) -> str | None:
    """The first column holding undecodable bytes ("extra fields" for cells beyond the header)."""
    for column, value in row.items():
        cells = value if isinstance(value, list) else [value]  # DictReader puts extra cells in a list
        if any(isinstance(cell, str) and has_surrogates(cell) for cell in cells):
            return column if column is not None else "extra fields"
    return None


def _json_cell(text: str) -> Any:
    """A phrases cell holds JSON ([[0, 5], ...] or ["a dog", ...]); an empty cell means no phrases given."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return Unparsable(text)
