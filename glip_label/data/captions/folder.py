"""Reader of a caption folder in img2dataset's "files" layout: ``00000/000000012.jpg`` + ``000000012.txt``.

The layout is img2dataset's ``--output_format files`` (its README, "Output format"): each image has its
caption in a ``.txt`` of the same stem beside it, and its metadata in a ``.json`` (read as the item's
meta, and as the source of given phrases when ``phrases_column`` names one of its keys). Ids are the
image paths relative to the folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glip_label.data.captions.items import BadRecord, CaptionError, CaptionItem
from glip_label.data.captions.records import SourceOptions, decode_caption_bytes, parse_sidecar, phrases_of
from glip_label.data.captions.refs import ImageFile
from glip_label.data.image_discovery import discover_images


def iter_folder(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """Images found as `glip-label annotate` finds them (sorted, loop-safe), each with its sidecar .txt.

    Relative paths are unique by construction, so no duplicate check is needed. A .txt without an image
    beside it is not a sample (it may be a README) and is ignored.
    """
    columns = options.columns
    root_abs, names = discover_images(Path(source))
    for rel in names:
        stem = os.path.splitext(rel)[0]
        try:
            txt_path = root_abs / f"{stem}.txt"
            try:
                data = txt_path.read_bytes()
            except FileNotFoundError:
                raise BadRecord(f"no caption: {Path(stem).name}.txt is missing beside the image") from None
            except OSError as exc:
                raise BadRecord(f"cannot read caption file ({exc.strerror or exc})") from None
            caption = decode_caption_bytes(data)
            meta = _read_sidecar_json(root_abs / f"{stem}.json")
            meta.pop(columns.caption, None)
            phrases, spans = phrases_of(meta, columns, caption)
        except BadRecord as exc:
            yield CaptionError(rel, str(exc))
            continue
        yield CaptionItem(rel, caption, ImageFile(str(root_abs), rel), phrases, spans, meta)


def _read_sidecar_json(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadRecord(f"cannot read {path.name} ({exc.strerror or exc})") from None
    return parse_sidecar(data, path.name)
