"""MDETR/GLIP-style grounding COCO: a COCO file whose images carry a ``caption`` and whose annotations
carry ``tokens_positive`` (character spans of the phrases that refer to the box).

This is the format of MDETR's GoldG files (``final_mixed_train_no_coco.json``, written by MDETR's
``scripts/utils/dump.py``; ``final_flickr_separateGT_*.json``, by ``scripts/pre-training/flickr_combined.py``)
that GLIP trains on (``maskrcnn_benchmark/data/datasets/modulated_coco.py::ModulatedDataset``).

Box convention: ``bbox`` is COCO xywh written like the official GLIP export, w = x2 - x1 + 1 from
the records' "+1" xyxy; GLIP's grounding loader reads it back with x2 = x + w - 1, so the boxes it
trains on are exactly the ones labelled, and COCO tools read the continuous box [x, x + w), the same
box as the ODVG file of the same run. Rounded to 2 decimals.

Differences from MDETR's own files, on purpose: image and annotation ids start at 1 (pycocotools'
matcher treats annotation id 0 as unmatched), ``categories`` is ``[{"id": 1, "name": "object"}]``
rather than empty, every annotation has a ``score``, and ``phrase_ids`` (a glip-label extension that
MDETR and GLIP ignore) lists the indices of the phrases, in ``tokens_positive_eval`` order, that the
box grounds. ``tokens_positive_eval`` holds, per phrase with at least one box, that phrase's spans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glip_label.formats.coco import (
    BBOX_DECIMALS,
    SCORE_DECIMALS,
    CocoFileSink,
    CocoLayoutWriter,
    StreamingWriter,
    normalize_coco,
    xyxy_to_xywh,
)
from glip_label.formats.odvg import check_xyxy, grounding_regions, normalize_spans
from glip_label.io import read_json
from glip_label.records import ImageRecord

OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


class MdetrWriter(CocoLayoutWriter):
    """Collects (image, caption) pairs and their grounded boxes into one grounding COCO file.

    One image entry per (image, caption) pair, as in MDETR's Flickr files: an image with five captions
    appears five times, with the same ``file_name`` and different ids.
    """

    def __init__(self, info: dict | None = None) -> None:
        super().__init__("caption grounding pseudo-labels written by glip-label", info)

    def add(
        self,
        file_name: str,
        height: int,
        width: int,
        caption: str,
        regions: list[dict[str, Any]],
        image_fields: dict[str, Any] | None = None,
    ) -> int:
        """Add one (image, caption) pair; returns its image id.

        ``regions``: dicts with ``bbox`` ("+1" xyxy pixels), ``tokens_positive`` (spans into ``caption``),
        optional ``score`` and ``phrase_id`` (regions sharing a ``phrase_id`` ground the same phrase; without
        it, regions with the same spans are one phrase). ``image_fields`` are copied onto the image entry
        (e.g. ``original_img_id``, ``sentence_id``, ``dataset_name``), below the fixed keys.
        """
        if not isinstance(caption, str) or not caption:
            raise ValueError(f"{file_name}: caption must be a non-empty string")
        height, width = int(height), int(width)
        if width <= 0 or height <= 0:
            raise ValueError(f"{file_name}: width and height must be positive, got {width}x{height}")
        image_id = self._num_images + 1

        # Phrases in order of first appearance; key = phrase_id if given, else the spans.
        phrase_slot: dict[Any, int] = {}
        phrase_spans: list[list[list[int]]] = []
        new_annotations = []
        for i, region in enumerate(regions):
            where = f"{file_name} region {i}"
            spans = normalize_spans(region.get("tokens_positive"), caption, where)
            box = check_xyxy(region.get("bbox"), where)
            key = ("id", region["phrase_id"]) if region.get("phrase_id") is not None else ("spans", str(spans))
            if key not in phrase_slot:
                phrase_slot[key] = len(phrase_spans)
                phrase_spans.append(spans)
            bbox = [round(float(v), BBOX_DECIMALS) for v in xyxy_to_xywh([box])[0]]
            new_annotations.append(
                {
                    "id": self._num_annotations + len(new_annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], BBOX_DECIMALS),
                    "iscrowd": 0,
                    "tokens_positive": spans,
                    "phrase_ids": [phrase_slot[key]],
                    "score": round(float(1.0 if region.get("score") is None else region["score"]), SCORE_DECIMALS),
                }
            )
        image = dict(image_fields or {})
        image.update(
            {
                "id": image_id,
                "file_name": file_name,
                "height": height,
                "width": width,
                "caption": caption,
                "tokens_positive_eval": [[list(s) for s in spans] for spans in phrase_spans],
            }
        )
        self._commit(image, new_annotations)
        return image_id

    def add_record(
        self,
        record: ImageRecord,
        caption: str,
        spans: list[list[tuple[int, int]]],
        image_fields: dict[str, Any] | None = None,
    ) -> int:
        """Add the detections of a caption prompt: labels are phrase indices, ``spans[j]`` phrase j's spans."""
        regions = grounding_regions(record.detections, spans)
        return self.add(record.file_name, record.height, record.width, caption, regions, image_fields)

    def categories_list(self) -> list[dict[str, Any]]:
        return [dict(OBJECT_CATEGORY)]


class MdetrStreamWriter(StreamingWriter, MdetrWriter):
    """An MdetrWriter that streams to `path` (see CocoFileSink): a caption corpus of millions of pairs is
    written with flat memory. Use as a context manager."""

    def __init__(self, path: str | Path, info: dict | None = None) -> None:
        super().__init__(info)
        self._sink = CocoFileSink(path, self.info)


def _spans_or_none(value: Any, caption: str, where: str) -> list[list[int]] | None:
    if value is None:
        return None
    return normalize_spans(value, caption, where)


def normalize_mdetr(data: dict[str, Any]) -> dict[str, Any]:
    """Make an MDETR-style dict uniform (in place, also returned).

    On top of `normalize_coco` (string sizes, missing iscrowd/area, id 0): an empty ``categories``
    (MDETR's mixed file) becomes the single "object" category; a missing ``category_id`` becomes 1;
    the legacy ``tokens`` key becomes ``tokens_positive``; a bare [start, end] becomes [[start, end]];
    every span is checked against its caption (a span outside the text would train the wrong tokens).
    """
    normalize_coco(data)
    if not data["categories"]:
        data["categories"] = [dict(OBJECT_CATEGORY)]
    captions = {}
    for img in data["images"]:
        caption = img.get("caption")
        if not isinstance(caption, str):
            raise ValueError(f"image {img['id']}: missing 'caption' (not a grounding file?)")
        captions[img["id"]] = caption
        if "tokens_positive_eval" in img:
            img["tokens_positive_eval"] = [
                normalize_spans(spans, caption, f"image {img['id']} tokens_positive_eval")
                for spans in img["tokens_positive_eval"]
            ]
    for ann in data["annotations"]:
        where = f"annotation {ann['id']} (image {ann['image_id']})"
        if ann["image_id"] not in captions:
            raise ValueError(f"{where}: unknown image id")
        ann.setdefault("category_id", 1)
        if "tokens_positive" not in ann and "tokens" in ann:
            ann["tokens_positive"] = ann.pop("tokens")
        spans = _spans_or_none(ann.get("tokens_positive"), captions[ann["image_id"]], where)
        if spans is None:
            raise ValueError(f"{where}: no 'tokens_positive'")
        ann["tokens_positive"] = spans
    return data


def read_mdetr(path: str | Path) -> dict[str, Any]:
    """Load an MDETR/GLIP-style grounding COCO json, tolerating its known variants (`normalize_mdetr`)."""
    return normalize_mdetr(read_json(path))
