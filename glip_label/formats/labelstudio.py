"""Label Studio import JSON: tasks with model predictions, for human review of pseudo-labels.

Each task is ``{"data": {"image": url}, "predictions": [{"model_version", "score", "result": [...]}]}``
and each result a ``rectanglelabels`` region whose ``x, y, width, height`` are PERCENT of the image
size (0-100, top-left origin): Label Studio's guide "Import pre-annotated data into Label Studio"
(labelstud.io/guide/predictions), the format HumanSignal's ML backends return
(label-studio-ml-backend ``label_studio_ml/examples/grounding_dino/dino.py``).

Box convention: the percentages come from the same xywh as the COCO export (w = x2 - x1 + 1 from
GLIP "+1" xyxy pixels), so ``x = x1 / W · 100`` and ``width = w / W · 100``, after clipping the box to
the image (Label Studio draws regions beyond 100 % off the canvas). Label Studio and its SDK's
converters read the region as ``x · W / 100`` .. ``(x + width) · W / 100`` pixels: the same box as the
COCO ``[x, x + w)`` and ODVG ``[x1, x2 + 1]`` of the detection. The task-level ``score`` is the
mean box score (0 for an image without boxes): sorting tasks by it ascending puts the least certain
images first, which is what a review pass wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from glip_label.formats.coco import xyxy_to_xywh
from glip_label.formats.vis import class_colour_hex
from glip_label.records import ImageRecord

PERCENT_DECIMALS = 4


def rectangle_results(record: ImageRecord, categories: list[str]) -> list[dict[str, Any]]:
    """The ``result`` list of one prediction; labels must be category indices."""
    width, height = int(record.width), int(record.height)
    det = record.detections
    if len(det) and (det.labels.min() < 0 or det.labels.max() >= len(categories)):
        raise ValueError(f"{record.file_name}: label out of range 0..{len(categories) - 1}")
    boxes = det.boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    xywh = xyxy_to_xywh(boxes)  # [N, 4] pixels
    percent = xywh / np.array([width, height, width, height], dtype=np.float64) * 100.0  # [N, 4]
    results = []
    for i, (box, label, score) in enumerate(zip(percent, det.labels, det.scores, strict=True)):
        x, y, w, h = (round(float(v), PERCENT_DECIMALS) for v in box)
        results.append(
            {
                "id": f"r{i}",
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "rotation": 0,
                    "rectanglelabels": [categories[int(label)]],
                },
                "score": round(float(score), 6),
            }
        )
    return results


def iter_labelstudio_tasks(
    records: Iterable[ImageRecord],
    categories: list[str],
    image_url_prefix: str = "/data/local-files/?d=",
    model_version: str = "glip-label",
) -> Iterator[dict[str, Any]]:
    """Tasks for Label Studio's JSON import, one per record, lazily. ``data.image`` is ``image_url_prefix`` +
    the URL-quoted file name: with local-files storage the prefix should end in the path of the image root
    relative to ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (e.g. ``/data/local-files/?d=photos/``)."""
    for record in records:
        results = rectangle_results(record, categories)
        scores = record.detections.scores
        yield {
            "data": {"image": image_url_prefix + quote(record.file_name, safe="/")},
            "predictions": [
                {
                    "model_version": model_version,
                    "score": round(float(scores.mean()), 6) if len(scores) else 0.0,
                    "result": results,
                }
            ],
        }


def labelstudio_tasks(records: Iterable[ImageRecord], categories: list[str], **options: str) -> list[dict[str, Any]]:
    """All tasks of `iter_labelstudio_tasks` as one list (``options``: its ``image_url_prefix`` and
    ``model_version``)."""
    return list(iter_labelstudio_tasks(records, categories, **options))


def labelstudio_label_config(categories: list[str]) -> str:
    """The labelling interface XML matching the tasks (``from_name`` "label", ``to_name`` "image"); the
    label colours are those of `glip_label.formats.vis`, so previews and the review UI agree."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr(class_colour_hex(i))}/>"
        for i, name in enumerate(categories)
    )
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <RectangleLabels name="label" toName="image">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )
