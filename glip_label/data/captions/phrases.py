"""Given noun phrases of a caption record -> validated (phrases, character spans).

Sources such as GRIT carry the phrases already grounded in the caption (its ``noun_chunks`` are
``[char_start, char_end, x1/W, y1/H, x2/W, y2/H, score]``, the layout Open-GroundingDino's
``tools/grit2odvg.py`` reads); when a record gives them, no chunker runs. They are checked against
the caption here, so a bad list makes one bad record, never a wrong span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from glip_label.data.captions.items import BadRecord


@dataclass(frozen=True)
class Unparsable:
    """A phrases cell of a csv/tsv table that is not valid JSON; reported when the record's phrases are read."""

    text: str


def parse_phrases(value: Any, caption: str) -> tuple[list[str] | None, list[list[tuple[int, int]]] | None]:
    """Given phrases of a record → (phrases, spans), validated against the caption.

    Accepts GRIT-style lists [[start, end, x1, y1, x2, y2, score], ...] (only the span is used),
    [[start, end], ...], or phrase strings, each located in the caption at its first occurrence after
    the previous phrase (falling back to the first anywhere, then to a case-insensitive match).
    None means "not given". Raises BadRecord (a ValueError) for anything that does not fit the caption.
    """
    if value is None:
        return None, None
    if isinstance(value, Unparsable):
        raise BadRecord(f"phrases are not valid JSON: {value.text[:60]!r}")
    if hasattr(value, "tolist"):  # numpy / pyarrow arrays from parquet-backed sources
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise BadRecord(f"phrases must be a list, got {type(value).__name__}")
    phrases: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    cursor = 0
    for j, entry in enumerate(value):
        if isinstance(entry, str):
            start = _locate(caption, entry, cursor)
            if start is None:
                raise BadRecord(f"phrase {j} ({entry!r}) does not occur in the caption")
            end = start + len(entry)
            cursor = end
        else:
            if hasattr(entry, "tolist"):
                entry = entry.tolist()
            if not isinstance(entry, (list, tuple)) or len(entry) < 2:
                raise BadRecord(f"phrase {j}: expected [start, end, ...] or a string, got {entry!r}")
            start, end = _as_index(entry[0], j), _as_index(entry[1], j)
        if not 0 <= start < end <= len(caption):
            raise BadRecord(f"phrase {j}: span ({start}, {end}) does not fit a caption of {len(caption)} characters")
        phrases.append(caption[start:end])
        spans.append([(start, end)])
    return phrases, spans


def _as_index(value: Any, j: int) -> int:
    if isinstance(value, bool):
        raise BadRecord(f"phrase {j}: span bound {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # parquet stores GRIT's mixed lists as doubles
    raise BadRecord(f"phrase {j}: span bound {value!r} is not an integer")


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
