"""Reader of a COCO captions json (``captions_train2017.json``): one item per ``annotations[].caption``.

The layout is pycocotools' / the COCO captions format (cocodataset.org, "Data format", "Image
Captioning"): ``images[]`` with ``id`` and ``file_name``, ``annotations[]`` with ``image_id`` and
``caption``. The id of an item is ``"image_id:annotation_id"``. Image paths are relative to the json's
folder unless ``image_root`` is given (caption files usually live in ``annotations/``, apart from the images).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glip_label.data.captions.items import BadRecord, CaptionError, CaptionItem
from glip_label.data.captions.records import SourceOptions, check_caption, path_ref, phrases_of


def iter_coco(source: str, options: SourceOptions) -> Iterator[CaptionItem | CaptionError]:
    """One item per caption annotation, in file order.

    A COCO json is a single document, so it is parsed whole (about 90 MB for captions_train2017); the
    items are still produced one at a time.
    """
    path, columns = Path(source), options.columns
    root = options.image_root or str(path.resolve().parent)
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path.name} is not a COCO captions file: no 'images' list")
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise ValueError(f"{path.name} is not a COCO captions file: no 'annotations' list")
    if annotations and not any(isinstance(a, dict) and "caption" in a for a in annotations[:100]):
        raise ValueError(
            f"{path.name} has annotations without 'caption' (a detection file?); expected COCO captions "
            "(annotations[].caption)"
        )
    images: dict[Any, dict[str, Any]] = {}
    for image in data["images"]:
        if isinstance(image, dict) and "id" in image:
            images[image["id"]] = image
    del data
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            yield CaptionError(f"annotation#{index}", f"annotation is a {type(ann).__name__}, expected an object")
            continue
        ann_id = ann.get("id", f"#{index}")
        item_id = f"{ann.get('image_id')}:{ann_id}"
        try:
            image = images.get(ann.get("image_id"))
            if image is None:
                raise BadRecord(f"image_id {ann.get('image_id')!r} is not in 'images'")
            ref = path_ref(image.get("file_name"), root)
            caption = check_caption(ann.get(columns.caption))
            phrases, spans = phrases_of(ann, columns, caption)
        except BadRecord as exc:
            yield CaptionError(item_id, str(exc))
            continue
        meta = {"image_id": ann.get("image_id"), "annotation_id": ann.get("id")}
        meta.update({k: image[k] for k in ("width", "height") if k in image})
        yield CaptionItem(item_id, caption, ref, phrases, spans, meta)
