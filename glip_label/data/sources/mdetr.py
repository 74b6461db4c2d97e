"""Reading an MDETR-style grounding COCO file (GoldG files, our `grounding.mdetr.json`) into grounding
samples, as GLIP's `maskrcnn_benchmark/data/datasets/modulated_coco.py` `ModulatedDataset` reads them:
one sample per image-caption pair, each box's phrase given by its ``tokens_positive`` character spans.
"""

from __future__ import annotations

from typing import Any

from glip_label.data.samples import GroundingSample
from glip_label.data.sources.common import SourceFile, as_boxes
from glip_label.formats.coco import xywh_to_xyxy
from glip_label.formats.mdetr import normalize_mdetr


def read_mdetr(file: SourceFile) -> tuple[list[GroundingSample], None]:
    """(samples, None) of an MDETR-style file; captions whose boxes were all dropped are dropped."""
    data = normalize_mdetr(file.data)
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    samples = []
    for img in data["images"]:
        anns = [a for a in by_image[img["id"]] if not a.get("iscrowd")]
        spans = [[(int(s), int(e)) for s, e in a["tokens_positive"]] for a in anns]
        sample = file.sample(
            file.locate(img["file_name"]), int(img["width"]), int(img["height"]), img["caption"],
            xywh_to_xyxy(as_boxes([a["bbox"] for a in anns])), spans, None,
            [a.get("score") for a in anns], keep_empty=False,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    return samples, None
