"""Where the image of a caption item is: a file, a tar member, bytes in the record, or a dataset row.

A reference only points at the image, so a corpus of millions of pairs is never held in memory;
:func:`glip_label.data.captions.load.load_caption_image` decodes it on demand, and
:mod:`glip_label.data.image_refs` hands such references to the readers of glip-label's outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


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
