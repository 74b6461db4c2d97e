"""Reading a COCO detection file (gold files, and our `annotations.coco.json` whose annotations carry a
``score``) into detection samples, the way GLIP's `maskrcnn_benchmark/data/datasets/modulated_coco.py`
`CocoGrounding` reads COCO for fine-tuning: boxes xywh -> "+1" xyxy, crowd boxes skipped.
"""

from __future__ import annotations

from typing import Any

from glip_label.data.samples import GroundingSample
from glip_label.data.sources.common import SourceFile, as_boxes
from glip_label.formats.coco import normalize_coco, xywh_to_xyxy


def read_coco(file: SourceFile) -> tuple[list[GroundingSample], list[str]]:
    """(samples, class names in category-id order) of a COCO detection file."""
    data = normalize_coco(file.data)
    name = file.name
    cats = sorted(data["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in cats]
    name_of = {c["id"]: str(c["name"]) for c in cats}
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in by_image:
            raise ValueError(f"{name}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        by_image[ann["image_id"]].append(ann)
    # A file with any score is a pseudo-label file: its images without kept boxes are teacher misses,
    # not verified negatives, so they are dropped. Gold images without boxes stay as negatives.
    pseudo = any("score" in a for a in data["annotations"])
    samples = []
    for img in data["images"]:
        anns = [a for a in by_image[img["id"]] if not a.get("iscrowd") and "bbox" in a]
        file.count("crowd_or_boxless_skipped", len(by_image[img["id"]]) - len(anns))
        try:
            categories = [name_of[a["category_id"]] for a in anns]
        except KeyError as exc:
            raise ValueError(f"{name}: image {img['id']}: unknown category id {exc.args[0]}") from None
        sample = file.sample(
            file.locate(img["file_name"]), int(img["width"]), int(img["height"]), None,
            xywh_to_xyxy(as_boxes([a["bbox"] for a in anns])), [[] for _ in anns], categories,
            [a.get("score") for a in anns], keep_empty=not pseudo,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    return samples, names
