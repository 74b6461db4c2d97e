"""`annotate`'s final files (COCO, ODVG, YOLO, Label Studio, pictures, errors.jsonl, run.json), written from
the run journal in image order, so they never depend on where a run stopped."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from glip_label import __version__
from glip_label.io import atomic_open, atomic_write_json, atomic_write_text, write_json_array
from glip_label.records import Detections, ImageRecord
from glip_label.runs.annotate_options import AnnotateOptions, AnnotateSummary
from glip_label.runs.journal import read_results_in_order, read_run_key
from glip_label.runs.labeler import NothingLabeledError
from glip_label.runs.ontology import Ontology


def _image_record(rec: dict[str, Any], categories: list[str]) -> ImageRecord:
    det = Detections(np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4), rec["scores"], rec["labels"],
                     categories)
    return ImageRecord(rec["file_name"], rec["width"], rec["height"], det)


def write_outputs(out: Path, names: Sequence[str], ontology: Ontology, root: Path, options: AnnotateOptions,
                  labeling_seconds: float = 0.0) -> AnnotateSummary:
    """Write every requested format from the journal, in image order, each file atomically.

    Each format is one streaming pass over the journal (records are read back from disk one at a time),
    so memory does not grow with the number of images or boxes.
    """
    from glip_label.formats.coco import CocoStreamWriter
    from glip_label.formats.labelstudio import iter_labelstudio_tasks, labelstudio_label_config
    from glip_label.formats.odvg import label_map, odvg_detection_record
    from glip_label.formats.vis import save_visualizations
    from glip_label.formats.yolo import write_yolo

    categories = ontology.categories

    def records() -> Iterator[ImageRecord]:
        for result in read_results_in_order(out, names):
            if result["ok"]:
                yield _image_record(result["record"], categories)

    counts: Counter[str] = Counter()
    errors = labeled = empty = 0
    with atomic_open(out / "errors.jsonl") as fh:
        for result in read_results_in_order(out, names):
            if not result["ok"]:
                fh.write(json.dumps({"path": result["id"], **result["error"]}, ensure_ascii=False) + "\n")
                errors += 1
                continue
            labels = result["record"]["labels"]
            counts.update(categories[i] for i in labels)
            labeled += 1
            empty += not labels
    files: dict[str, str] = {"errors": "errors.jsonl"}
    if "coco" in options.formats:
        info = {
            "description": "labeled with glip-label annotate",
            "version": __version__,
            "model": options.model if not options.random_init else "random-init",
            "phrases": ontology.phrases,
            "threshold": options.threshold,
            "class_thresholds": ontology.thresholds,
        }
        with CocoStreamWriter(out / "annotations.coco.json", categories, options.category_id_base, info) as coco:
            for record in records():
                coco.add(record)
        files["coco"] = "annotations.coco.json"
    if "odvg" in options.formats:
        with atomic_open(out / "annotations.odvg.jsonl") as fh:
            for record in records():
                fh.write(json.dumps(odvg_detection_record(record, categories), ensure_ascii=False) + "\n")
        atomic_write_json(out / "label_map.json", label_map(categories))
        files["odvg"] = "annotations.odvg.jsonl"
    if "yolo" in options.formats:
        write_yolo(out / "yolo", records(), categories, root)
        files["yolo"] = "yolo/data.yaml"
    if "labelstudio" in options.formats:
        with atomic_open(out / "labelstudio.json") as fh:
            write_json_array(fh, iter_labelstudio_tasks(records(), categories))
        atomic_write_text(out / "labelstudio_config.xml", labelstudio_label_config(categories))
        files["labelstudio"] = "labelstudio.json"
    if options.save_vis > 0:
        save_visualizations(records(), root, out / "vis", names=categories, limit=options.save_vis)
        files["vis"] = "vis/"
    summary = AnnotateSummary(
        out=out, images=len(names), labeled=labeled, errors=errors, empty=empty,
        boxes_per_class={c: counts.get(c, 0) for c in categories}, seconds=labeling_seconds,
        images_per_second=labeled / labeling_seconds if labeling_seconds > 0 else 0.0, files=files,
    )
    run = {
        "version": __version__,
        "image_root": str(Path(root).resolve()),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "run_key": read_run_key(out),
        "counts": {"images": len(names), "labeled": labeled, "errors": errors, "images_without_boxes": empty,
                   "boxes": sum(counts.values()), "boxes_per_class": summary.boxes_per_class},
        "timings": {"labeling_seconds": labeling_seconds, "images_per_second": summary.images_per_second},
        "files": files,
    }
    atomic_write_json(out / "run.json", run)
    if labeled == 0:
        raise NothingLabeledError(f"none of the {len(names)} images could be read; see {out / 'errors.jsonl'}")
    return summary
