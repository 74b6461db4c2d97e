"""Reading ODVG JSON Lines (our `annotations.odvg.jsonl` / `grounding.odvg.jsonl`, Open-GroundingDino and
mmdetection files) into detection or grounding samples.

The record schema is Open-GroundingDino's `data_format.md` and mmdetection's `mmdet/datasets/odvg.py`
`ODVGDataset`: "detection" records list instances with a continuous xyxy ``bbox`` (turned into GLIP's
"+1" xyxy here) and a ``label`` or ``category``; "grounding" records hold a caption and regions with
``tokens_positive`` spans, where one region may carry several boxes (mmdetection's form).
"""

from __future__ import annotations

from glip_label.data.samples import GroundingSample
from glip_label.data.sources.common import SourceFile, as_boxes
from glip_label.formats.coco import coerce_int
from glip_label.formats.odvg import normalize_spans, odvg_to_xyxy, read_odvg, region_boxes


def read_odvg_grounding(file: SourceFile) -> tuple[list[GroundingSample], None]:
    """(samples, None) of an ODVG grounding file; captions whose boxes were all dropped are dropped."""
    path = file.path
    samples = []
    for line_no, rec in enumerate(read_odvg(path), start=1):
        where = f"{path}:{line_no}"
        grounding = rec.get("grounding")
        if not isinstance(grounding, dict):
            raise ValueError(f"{where}: record has no 'grounding' object (the file mixes ODVG kinds)")
        caption = grounding.get("caption")
        if not isinstance(caption, str) or not caption:
            raise ValueError(f"{where}: 'grounding.caption' must be a non-empty string")
        boxes, spans, scores = [], [], []
        for i, region in enumerate(grounding.get("regions") or []):
            raw_spans = normalize_spans(region.get("tokens_positive"), caption, f"{where} region {i}")
            region_spans = [(int(s), int(e)) for s, e in raw_spans]
            for box in region_boxes(region):  # mmdet allows several boxes per region
                boxes.append(box)
                spans.append(list(region_spans))
                scores.append(region.get("score"))
        sample = file.sample(
            file.locate(rec["filename"]), coerce_int(rec["width"], f"{where} width"),
            coerce_int(rec["height"], f"{where} height"), caption, odvg_to_xyxy(as_boxes(boxes)), spans, None, scores,
            keep_empty=False,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    return samples, None


def read_odvg_detection(file: SourceFile) -> tuple[list[GroundingSample], list[str]]:
    """(samples, class names) of an ODVG detection file.

    An instance without "category" takes its name from the label map (`SourceFile.label_map`, the
    Open-GroundingDino label-map json); the class pool lists the label map's names in label order, then
    the names seen without a label.
    """
    path = file.path
    records = list(read_odvg(path))
    pseudo = any("score" in inst for rec in records for inst in (rec.get("detection") or {}).get("instances", []))
    label_names: dict[int, str] = {int(k): str(v) for k, v in (file.label_map or {}).items()}
    samples = []
    for line_no, rec in enumerate(records, start=1):
        where = f"{path}:{line_no}"
        detection = rec.get("detection")
        if not isinstance(detection, dict) or not isinstance(detection.get("instances"), list):
            raise ValueError(f"{where}: record has no 'detection.instances' list (the file mixes ODVG kinds)")
        boxes, categories, scores = [], [], []
        for inst in detection["instances"]:
            category = inst.get("category")
            label = inst.get("label")
            if category is None:
                if label is None or int(label) not in label_names:
                    raise ValueError(
                        f"{where}: instance without 'category' and label {label!r} not in the label map; "
                        "pass label_map (the ODVG label-map json)"
                    )
                category = label_names[int(label)]
            elif label is not None:
                label_names.setdefault(int(label), str(category))
            boxes.append([float(v) for v in inst["bbox"]])
            categories.append(str(category))
            scores.append(inst.get("score"))
        sample = file.sample(
            file.locate(rec["filename"]), coerce_int(rec["width"], f"{where} width"),
            coerce_int(rec["height"], f"{where} height"), None, odvg_to_xyxy(as_boxes(boxes)), [[] for _ in boxes],
            categories, scores, keep_empty=not pseudo,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    # Class pool for negatives: the label map's order when labels are known, then names seen without one.
    names = [label_names[k] for k in sorted(label_names)]
    seen = set(names)
    for sample in samples:
        for category in sample.categories or []:
            if category not in seen:
                seen.add(category)
                names.append(category)
    return samples, names
