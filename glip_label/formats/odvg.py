"""ODVG records (JSON Lines, one image per line), as Open-GroundingDino and mmdetection train on them.

Box convention: ODVG ``bbox`` is absolute-pixel ``[x1, y1, x2, y2]`` with CONTINUOUS edges: the box
spans x1 <= x < x2, so its width is x2 - x1. That is how both consumers read it: mmdet's
``ODVGDataset.load_data_list`` and Open-GroundingDino's ``ODVGDataset`` take the numbers as they are,
and both projects' ``coco2odvg`` converters write ``[x, y, x + w, y + h]`` from a COCO ``bbox``.
glip-label's records hold GLIP "+1" xyxy (a box over pixel columns x1..x2 is x2 - x1 + 1 wide), so the
writer adds the "+1" to the far edge (``x2_odvg = x2 + 1``) and the readers take it off again. One
detection is thus the same box in every format glip-label writes: COCO ``[x1, y1, w, h]``, YOLO
``cx, w`` (normalised), Label Studio ``x, width`` (percent) and ODVG ``[x1, y1, x1 + w, y1 + h]``,
all with w = x2 - x1 + 1 (tests/test_roundtrips.py states each consumer's reading rule). Rounded to
2 decimals, like the reference converters.

Records are written so that BOTH consumers can load them (Open-GroundingDino ``datasets/odvg.py::ODVGDataset``
and its ``data_format.md``; mmdetection ``mmdet/datasets/odvg.py::ODVGDataset``):
- detection: integer ``label`` (key into a 0-based ``label_map`` json; Open-GroundingDino looks up
  ``str(label)``, mmdet ``int(label)``) and ``category`` (the name; X-AnyLabeling's importer reads it);
- grounding: ``caption`` (mmdet's text), one xyxy per region (Open-GroundingDino cannot take a list),
  ``phrase`` as a string (Open-GroundingDino builds its prompt from the unique phrases) and
  ``tokens_positive`` (mmdet raises KeyError without it).
An optional ``score`` per instance/region is ignored by both loaders and lets training filter later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glip_label.formats.coco import coerce_int
from glip_label.records import Detections, ImageRecord

BBOX_DECIMALS = 2
SCORE_DECIMALS = 6


def label_map(categories: list[str]) -> dict[str, str]:
    """The ODVG label map: string keys "0".."N-1" (matching each instance's ``label``) → names."""
    return {str(i): name for i, name in enumerate(categories)}


def _box_list(box: Sequence[float]) -> list[float]:
    return [round(float(v), BBOX_DECIMALS) for v in box]


def xyxy_to_odvg(boxes_xyxy: np.ndarray) -> np.ndarray:
    """GLIP "+1" xyxy → ODVG continuous xyxy (x2 + 1, y2 + 1; see the module docstring). [N, 4] → [N, 4]."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 2:] += 1.0
    return boxes


def odvg_to_xyxy(boxes_odvg: np.ndarray) -> np.ndarray:
    """ODVG continuous xyxy → GLIP "+1" xyxy, the exact inverse of `xyxy_to_odvg`. [N, 4] → [N, 4]."""
    boxes = np.asarray(boxes_odvg, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 2:] -= 1.0
    return boxes


def odvg_detection_record(record: ImageRecord, categories: list[str]) -> dict[str, Any]:
    """One OD line. ``record.detections.labels`` must be category indices (0-based into ``categories``)."""
    det = record.detections
    if len(det) and (det.labels.min() < 0 or det.labels.max() >= len(categories)):
        raise ValueError(f"{record.file_name}: label out of range 0..{len(categories) - 1}")
    if not np.isfinite(det.boxes).all():
        raise ValueError(f"{record.file_name}: boxes contain NaN or infinity")
    instances = [
        {
            "bbox": _box_list(box),
            "label": int(label),
            "category": categories[int(label)],
            "score": round(float(score), SCORE_DECIMALS),
        }
        for box, label, score in zip(xyxy_to_odvg(det.boxes), det.labels, det.scores, strict=True)
    ]
    return {
        "filename": record.file_name,
        "height": int(record.height),
        "width": int(record.width),
        "detection": {"instances": instances},
    }


def normalize_spans(spans: Any, caption: str, where: str = "") -> list[list[int]]:
    """Character spans as a list of [start, end) int pairs inside ``caption``; a bare pair is wrapped.

    Raises on an empty list or a span that does not index the caption: a span outside the text would
    silently train the wrong tokens.
    """
    if isinstance(spans, (list, tuple)) and len(spans) == 2 and all(isinstance(v, (int, np.integer)) for v in spans):
        spans = [spans]
    if not isinstance(spans, (list, tuple)) or len(spans) == 0:
        raise ValueError(f"{where}: tokens_positive must be a non-empty list of [start, end] spans, got {spans!r}")
    out = []
    for span in spans:
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ValueError(f"{where}: a span must be [start, end], got {span!r}")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"{where}: span [{start}, {end}) does not index a caption of {len(caption)} characters")
        out.append([start, end])
    return out


def grounding_regions(detections: Detections, spans: Sequence[Sequence[Sequence[int]]]) -> list[dict[str, Any]]:
    """Detections of a caption prompt → regions (one per box) for `odvg_grounding_record` / `MdetrWriter`.

    ``spans[j]`` are the [start, end) character spans of phrase j (the prompt's spans, label order).
    Each region carries ``phrase_id`` (the label) so writers can group boxes per phrase.
    """
    if len(detections) and detections.labels.max() >= len(spans):
        raise ValueError(f"a label refers to phrase {int(detections.labels.max())} but only {len(spans)} span lists")
    return [
        {
            "bbox": [float(v) for v in box],
            "phrase": detections.phrases[int(label)],
            "tokens_positive": [[int(s), int(e)] for s, e in spans[int(label)]],
            "score": float(score),
            "phrase_id": int(label),
        }
        for box, label, score in zip(detections.boxes, detections.labels, detections.scores, strict=True)
    ]


def check_xyxy(bbox: Any, where: str) -> list[float]:
    """One finite xyxy box as floats; a list of boxes is refused (a writer emits one box per region)."""
    if not isinstance(bbox, (list, tuple, np.ndarray)) or len(bbox) != 4:
        raise ValueError(f"{where}: bbox must be one [x1, y1, x2, y2], got {bbox!r}")
    values = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: bbox has NaN or infinity")
    return values


def odvg_grounding_record(
    file_name: str, height: int, width: int, caption: str, regions: list[dict[str, Any]]
) -> dict[str, Any]:
    """One VG line. ``regions``: dicts with ``bbox`` (one GLIP "+1" xyxy, written as ODVG continuous
    xyxy, see the module docstring), ``tokens_positive`` (spans into
    ``caption``), ``phrase`` (defaults to the text of the first span) and optional ``score``.

    An image without regions gives a record that mmdet loads but Open-GroundingDino does not
    (`validate_odvg_record` says so); pipelines writing ODVG should skip such images.
    """
    out_regions = []
    for i, region in enumerate(regions):
        where = f"{file_name} region {i}"
        spans = normalize_spans(region.get("tokens_positive"), caption, where)
        phrase = region.get("phrase") or caption[spans[0][0] : spans[0][1]]
        if not isinstance(phrase, str):
            raise ValueError(f"{where}: phrase must be a string, got {phrase!r}")
        bbox = xyxy_to_odvg(np.array(check_xyxy(region.get("bbox"), where)))[0]
        out = {"bbox": _box_list(bbox), "phrase": phrase, "tokens_positive": spans}
        if region.get("score") is not None:
            out["score"] = round(float(region["score"]), SCORE_DECIMALS)
        out_regions.append(out)
    return {
        "filename": file_name,
        "height": int(height),
        "width": int(width),
        "grounding": {"caption": caption, "regions": out_regions},
    }


def record_from_odvg_detection(rec: dict[str, Any], categories: list[str]) -> ImageRecord:
    """The inverse of `odvg_detection_record` (a missing ``score`` reads as 1.0, as for gold labels)."""
    instances = rec["detection"]["instances"]
    det = Detections(
        odvg_to_xyxy(np.array([inst["bbox"] for inst in instances], dtype=np.float64)),
        np.array([inst.get("score", 1.0) for inst in instances], dtype=np.float64),
        np.array([int(inst["label"]) for inst in instances], dtype=np.int64),
        list(categories),
    )
    return ImageRecord(rec["filename"], int(rec["width"]), int(rec["height"]), det)


# ------------------------------------------------------------------------------------------ reading


def _normalize_record(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """Tolerate the variants seen in the wild: string sizes, X-AnyLabeling's singular "instance"."""
    for key in ("height", "width"):
        if key in rec:
            rec[key] = coerce_int(rec[key], f"{where} {key}")
    det = rec.get("detection")
    if isinstance(det, dict) and "instances" not in det and "instance" in det:
        det["instances"] = det.pop("instance")
    return rec


def read_odvg(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of an ODVG JSON Lines file, one at a time (files can hold millions of lines).

    Regions keep their shape: mmdet-style regions may carry a list of boxes (`region_boxes` flattens).
    """
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object per line")
            yield _normalize_record(rec, where)


def region_boxes(region: dict[str, Any]) -> list[list[float]]:
    """A region's boxes as a list of ODVG (continuous) xyxy, as stored; mmdet allows one box or a list of
    boxes per region. `odvg_to_xyxy` turns them into GLIP "+1" boxes."""
    bbox = region["bbox"]
    if len(bbox) and isinstance(bbox[0], (list, tuple)):
        return [[float(v) for v in b] for b in bbox]
    return [[float(v) for v in bbox]]


# --------------------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box_problems(bbox: Any, width: Any, height: Any, where: str) -> list[str]:
    """What mmdet's loader needs of one xyxy box: 4 numbers, overlapping the image, w and h >= 1
    (it silently DROPS the others, so a writer should know)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return [f"{where}: bbox must be a list of 4 finite numbers [x1, y1, x2, y2], got {bbox!r}"[:200]]
    x1, y1, x2, y2 = bbox
    problems = []
    if x2 - x1 < 1 or y2 - y1 < 1:
        problems.append(f"{where}: bbox {bbox} is narrower or lower than 1 px (x2-x1, y2-y1 < 1): mmdet drops it")
    if _is_int(width) and _is_int(height):
        inter_w = max(0.0, min(x2, width) - max(x1, 0))
        inter_h = max(0.0, min(y2, height) - max(y1, 0))
        if inter_w * inter_h == 0:
            problems.append(f"{where}: bbox {bbox} does not overlap the {width}x{height} image: mmdet drops it")
    return problems


def _span_problems(spans: Any, caption: Any, where: str) -> list[str]:
    if not isinstance(spans, list) or len(spans) == 0:
        return [f"{where}: tokens_positive must be a non-empty list of [start, end] (mmdet needs it)"]
    problems = []
    for span in spans:
        if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)):
            problems.append(f"{where}: span {span!r} is not an [start, end] pair of ints")
        elif isinstance(caption, str) and not 0 <= span[0] < span[1] <= len(caption):
            problems.append(f"{where}: span {span} does not index the caption ({len(caption)} characters)")
    return problems


def validate_odvg_record(rec: Any, label_map: dict[str, str] | None = None) -> list[str]:
    """Problems that would make Open-GroundingDino's or mmdet's ODVG loader fail, misread or drop data.

    Empty list = the record serves both loaders. ``label_map`` (the OD label-map json) additionally
    checks that every ``str(label)`` is one of its keys and agrees with ``category``.
    """
    if not isinstance(rec, dict):
        return ["record is not a JSON object"]
    problems = []
    if not isinstance(rec.get("filename"), str) or not rec.get("filename"):
        problems.append("missing or empty 'filename' (both loaders join it to the image root)")
    width, height = rec.get("width"), rec.get("height")
    for key, value in (("height", height), ("width", width)):
        if not _is_int(value) or value <= 0:
            problems.append(f"'{key}' must be a positive int (mmdet clips boxes with it), got {value!r}")
    if "detection" not in rec and "grounding" not in rec:
        problems.append("neither 'detection' nor 'grounding'")

    if "detection" in rec:
        det = rec["detection"]
        instances = det.get("instances") if isinstance(det, dict) else None
        if not isinstance(instances, list):
            hint = " (found 'instance': the key is plural)" if isinstance(det, dict) and "instance" in det else ""
            problems.append(f"'detection' must hold an 'instances' list{hint}")
            instances = []
        for i, inst in enumerate(instances):
            where = f"instance {i}"
            if not isinstance(inst, dict):
                problems.append(f"{where}: not an object")
                continue
            problems += _box_problems(inst.get("bbox"), width, height, where)
            label = inst.get("label")
            if not _is_int(label) or label < 0:
                problems.append(f"{where}: 'label' must be a non-negative int (label-map key), got {label!r}")
            elif label_map is not None and str(label) not in label_map:
                problems.append(f"{where}: label {label} is not a key of the label map")
            category = inst.get("category")
            if not isinstance(category, str) or not category:
                problems.append(f"{where}: 'category' (the class name) is missing")
            elif label_map is not None and _is_int(label) and label_map.get(str(label), category) != category:
                problems.append(f"{where}: category {category!r} but the label map says {label_map[str(label)]!r}")

    if "grounding" in rec:
        grd = rec["grounding"]
        if not isinstance(grd, dict):
            return problems + ["'grounding' must be an object"]
        caption = grd.get("caption")
        if not isinstance(caption, str) or not caption:
            problems.append("grounding: 'caption' must be a non-empty string (mmdet's text)")
        regions = grd.get("regions")
        if not isinstance(regions, list):
            problems.append("grounding: 'regions' must be a list")
            regions = []
        elif not regions:
            problems.append("grounding: no regions (Open-GroundingDino's loader fails on an empty region list)")
        for i, region in enumerate(regions):
            where = f"region {i}"
            if not isinstance(region, dict):
                problems.append(f"{where}: not an object")
                continue
            bbox = region.get("bbox")
            if isinstance(bbox, list) and bbox and isinstance(bbox[0], list):
                problems.append(f"{where}: a list of boxes (mmdet-only; Open-GroundingDino needs one xyxy per region)")
            else:
                problems += _box_problems(bbox, width, height, where)
            phrase = region.get("phrase")
            if not isinstance(phrase, str) or not phrase:
                problems.append(f"{where}: 'phrase' must be a non-empty string (Open-GroundingDino's prompt)")
            problems += _span_problems(region.get("tokens_positive"), caption, where)
    return problems
