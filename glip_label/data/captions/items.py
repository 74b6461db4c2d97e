"""What a caption source yields: an image-caption pair, or why one record could not be used.

Every reader of :mod:`glip_label.data.captions` produces these; nothing here reads a file. Where the
image is, is an :data:`~glip_label.data.captions.refs.ImageRef`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glip_label.data.captions.refs import ImageRef


@dataclass
class CaptionItem:
    """One image-caption pair.

    id:       unique and stable within the source (how each kind makes it: :mod:`glip_label.data.captions`)
    caption:  the caption exactly as stored (a trailing line break of a .txt file removed)
    image_ref: where the image is; decode it with :func:`glip_label.data.captions.load.load_caption_image`
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


class BadRecord(ValueError):
    """Raised inside a reader for one bad record; turned into a CaptionError by the caller."""

