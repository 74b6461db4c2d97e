"""Training files for GLIP students, gold or pseudo-labelled: format name -> reader, and reading one file.

Five formats are read, recognised from their content (`detect_format`):
- "coco": COCO detection (gold files, and our `annotations.coco.json` whose annotations carry a ``score``);
- "odvg-detection" / "odvg-grounding": ODVG JSON Lines (our `annotations.odvg.jsonl` /
  `grounding.odvg.jsonl`, Open-GroundingDino and mmdetection files);
- "mdetr": MDETR-style grounding COCO (GoldG files, our `grounding.mdetr.json`);
- "yolo": an Ultralytics dataset ``data.yaml`` (Roboflow / CVAT exports, our ``yolo/data.yaml``), its ``train``
  split read by Ultralytics' rules into a COCO dict (`glip_label.formats.yolo_dataset`), then as "coco".

Each reader lives in its own module and fills `glip_label.data.samples.GroundingSample`s through
`SourceFile.sample`, which applies the pseudo-label filter (`glip_label.data.pseudo_filter`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from glip_label.data.image_refs import ImageResolver, image_resolver
from glip_label.data.pseudo_filter import BoxFilter
from glip_label.data.samples import GroundingSample, GroundingSource
from glip_label.data.sources.coco import read_coco
from glip_label.data.sources.common import Reader, SourceFile
from glip_label.data.sources.detect import detect_format, sniff
from glip_label.data.sources.mdetr import read_mdetr
from glip_label.data.sources.odvg import read_odvg_detection, read_odvg_grounding
from glip_label.formats.coco import normalize_coco
from glip_label.formats.yolo_dataset import read_yolo_dataset, refuse_image_root
from glip_label.io import read_json

log = logging.getLogger(__name__)

READERS: dict[str, Reader] = {
    "coco": read_coco,
    "odvg-detection": read_odvg_detection,
    "odvg-grounding": read_odvg_grounding,
    "mdetr": read_mdetr,
    "yolo": read_coco,  # on the COCO dict of the dataset's train split (load_source converts it)
}
FORMATS = tuple(READERS)


def parse_data_arg(spec: str | Path) -> tuple[Path, Path | None]:
    """"FILE@ROOT" -> (FILE, ROOT); "FILE" -> (FILE, None): images then resolve against FILE's folder.

    A path that exists as given is never split, so file names containing "@" keep working.
    """
    text = str(spec)
    if Path(text).exists() or "@" not in text:
        return Path(text), None
    file_part, root_part = text.rsplit("@", 1)
    if not file_part or not root_part:
        raise ValueError(f"expected FILE@ROOT, got {text!r}")
    return Path(file_part), Path(root_part)


def load_source(
    path: str | Path,
    root: str | Path | None = None,
    min_score: float = 0.5,
    min_box_size: float = 1.0,
    weight: float = 1.0,
    name: str | None = None,
    label_map: dict[str, str] | str | Path | None = None,
    min_margin: float | None = None,
) -> GroundingSource:
    """Read one training file (any of the five formats) into a `GroundingSource`.

    path may be "FILE@ROOT". Images are found by `glip_label.data.image_refs.image_resolver`: ROOT,
    else what the run.json beside the file records (our own outputs, including webdataset shards and
    Hugging Face datasets), else the file's folder.
    min_score: pseudo boxes (those with a score) below it are dropped (the paper keeps > 0.5).
    min_box_size: boxes whose "+1" width or height is below it are dropped (after clipping).
    label_map: ODVG detection label map (dict or json path) for records without "category".
    min_margin: keep only confident groundings of pseudo boxes (see `BoxFilter`).
    Grounding samples left without boxes are dropped; detection images are dropped only when they
    come from a pseudo-label file (their emptiness is a teacher miss, not a verified negative).
    """
    if root is None:
        file_path, root_path = parse_data_arg(path)
    else:
        file_path, root_path = Path(path), Path(root)
    if not file_path.is_file():
        raise FileNotFoundError(f"training data file {file_path} does not exist")
    fmt, data = sniff(file_path)
    if fmt == "yolo":  # a data.yaml names its own images: relative to its folder, or absolute
        refuse_image_root(file_path, root_path)
        data = read_yolo_dataset(file_path, "train", data)
        images = ImageResolver(file_path.resolve().parent)
    else:
        images = image_resolver(file_path, root_path)
    log.info("%s: images from %s", file_path, images.description)
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"{file_path}: weight must be a finite number >= 0, got {weight}")
    if isinstance(label_map, (str, Path)):
        label_map = read_json(label_map)
    source_name = name or file_path.name
    box_filter = BoxFilter(min_score, min_box_size, min_margin)
    file = SourceFile(file_path, source_name, images, box_filter, data, label_map)
    samples, categories = READERS[fmt](file)
    if fmt == "yolo" and data["yolo"]["corrupt"]:
        file.stats["images_dropped_corrupt_labels"] = len(data["yolo"]["corrupt"])
    file.stats["images"] = len(samples)
    log.info("%s (%s): %d images, %s", file_path, fmt, len(samples), file.stats)
    return GroundingSource(source_name, fmt, file_path, samples, categories, float(weight), file.stats)


def read_detection_gold(path: str | Path, root: str | Path | None = None, split: str = "val") -> dict:
    """A gold detection file as a COCO dict, its format told from its content (`sniff`, one parse): a COCO json
    (an MDETR-style file reads as its boxes), or one split of a YOLO data.yaml, ``val`` by default as Ultralytics
    validates on it (``FILE@ROOT`` is refused for a data.yaml, which names its own images). What evaluation and
    calibration read."""
    fmt, data = sniff(Path(path))
    if fmt == "yolo":
        refuse_image_root(path, root)
        return read_yolo_dataset(path, split, data)
    if fmt not in ("coco", "mdetr"):
        raise ValueError(f"{path}: a gold detection file is a COCO json or a YOLO data.yaml, not {fmt}")
    return normalize_coco(data)


def load_samples(
    path: str | Path, root: str | Path | None = None, min_score: float = 0.5, min_box_size: float = 1.0
) -> list[GroundingSample]:
    """The samples of one training file (see `load_source`)."""
    return load_source(path, root, min_score=min_score, min_box_size=min_box_size).samples


__all__ = [
    "FORMATS",
    "READERS",
    "detect_format",
    "load_samples",
    "load_source",
    "parse_data_arg",
    "read_detection_gold",
]
