"""Reading an Ultralytics YOLO dataset (``data.yaml`` + ``images/`` + ``labels/``) as a COCO detection dict.

YOLO is what most labeling users bring (Roboflow, CVAT and Label Studio export it, Ultralytics trains on it, and
`annotate` writes it), so `train-student --gold/--val`, `evaluate --val` and `calibrate --gold` take a
``data.yaml`` wherever they take a COCO file: training reads its ``train`` split, evaluation and calibration its
``val`` split. The dataset is read by Ultralytics' own rules, so a folder Ultralytics trains on gives the same
boxes here (checked against ultralytics 8.4):

- ``ultralytics/data/utils.py::check_det_dataset``: ``names`` is a list or an ``{id: name}`` dict (or only ``nc``:
  ``class_0``, ...); a ``validation`` entry stands for a missing ``val``; the root is ``path``, else the yaml's
  folder; ``train``/``val`` are joined to it and resolved, and a single entry that does not exist but starts with
  ``../`` is tried without it (Roboflow's exports);
- ``ultralytics/data/base.py::BaseDataset.get_img_files``: each entry is a folder (every image under it,
  recursively) or a ``.txt`` list of image paths (``./x`` relative to the list's folder, other paths as they
  are), or a list of those; images are the files with an ``IMG_FORMATS`` suffix, sorted;
- ``ultralytics/data/utils.py::img2label_paths``: the labels of ``.../images/a/x.jpg`` are in
  ``.../labels/a/x.txt`` (the LAST ``/images/`` becomes ``/labels/``);
- ``ultralytics/data/utils.py::verify_image_label``: a missing label file is an image without objects; rows of a
  pose dataset (``kpt_shape``) keep their box; if any row has more than 6 values the rows are polygons whose
  bounding boxes are the boxes (``segments2boxes``); duplicate rows count once; a label file whose rows are not
  then 5 values each, or with a class id out of range or not whole, a coordinate above 1.01 or a negative one
  (down to -0.01 allowed for the centre), is corrupt, as is an image that does not open or is under 10 pixels:
  Ultralytics drops such an image, and so do we, listing it. Image sizes are the EXIF-rotated ones
  (``exif_size``), the pixels the labels were drawn on.

One deviation: a relative ``path`` is taken from the current folder when it exists there, else from the yaml's
folder (Ultralytics falls back to its own settings' ``datasets_dir``, which glip-label does not read).
tests/test_yolo_dataset.py checks these rules against Ultralytics itself where it is installed.
Boxes become COCO ``[x, y, w, h]`` = ``[(cx - w/2)·W, (cy - h/2)·H, w·W, h·H]``, the inverse of `write_yolo`.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from glip_label.formats.coco import normalize_coco

log = logging.getLogger(__name__)

# ultralytics/data/utils.py::IMG_FORMATS
YOLO_IMAGE_SUFFIXES = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"})
MAX_YAML_BYTES = 1 << 20  # a dataset yaml is a few lines; a larger non-JSON file is not one
_SPLIT_KEYS = ("train", "val", "test")
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def load_dataset_yaml(path: str | Path) -> dict[str, Any] | None:
    """The parsed ``data.yaml`` when the file is an Ultralytics dataset description (a mapping with ``names``
    or ``nc`` and a ``train`` or ``val`` entry), else None. Recognised from the content, never the name."""
    path = Path(path)
    if path.stat().st_size > MAX_YAML_BYTES:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not ({"names", "nc"} & set(data)) or not ({"train", "val"} & set(data)):
        return None
    if "val" not in data and "validation" in data:
        data["val"] = data.pop("validation")
    return data


def class_names(data: dict[str, Any], where: str) -> list[str]:
    """``names`` as a list in class-id order (check_det_dataset: a list, an {id: name} dict, or ``nc`` alone)."""
    names = data.get("names")
    if names is None:
        return [f"class_{i}" for i in range(int(data["nc"]))]
    if isinstance(names, dict):
        ids = sorted(int(k) for k in names)
        if ids != list(range(len(ids))):
            raise ValueError(f"{where}: names must be numbered 0..{len(ids) - 1}, got ids {ids[:10]}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if "nc" in data and int(data["nc"]) != len(names):
        raise ValueError(f"{where}: nc is {data['nc']} but names has {len(names)} entries")
    return [str(name) for name in names]


def dataset_root(data: dict[str, Any], yaml_path: Path) -> Path:
    """check_det_dataset's root: ``path`` (relative: from the current folder if it exists there, else from the
    yaml's folder; see the module docstring), or the yaml's folder."""
    if not data.get("path"):
        return yaml_path.resolve().parent
    root = Path(os.path.expanduser(str(data["path"])))
    if root.is_absolute() or root.exists():
        return root.resolve()
    return (yaml_path.resolve().parent / root).resolve()


def split_image_files(data: dict[str, Any], split: str, root: Path, where: str) -> list[Path]:
    """The images of one split (check_det_dataset's path rule, then get_img_files), sorted."""
    entries = data.get(split)
    if not entries:
        raise ValueError(f"{where}: no '{split}' entry (it has {', '.join(k for k in _SPLIT_KEYS if k in data)})")
    files: list[str] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        entry = str(entry)
        place = (root / entry).resolve()
        if not place.exists() and entry.startswith("../") and not isinstance(entries, list):
            place = (root / entry[3:]).resolve()
        if place.is_dir():  # glob, as Ultralytics: hidden files (macOS' ._x.jpg) are not images
            files += glob.glob(str(Path(glob.escape(str(place))) / "**" / "*.*"), recursive=True)
        elif place.is_file():
            parent = str(place.parent) + os.sep
            lines = place.read_text(encoding="utf-8-sig").strip().splitlines()
            files += [x.replace("./", parent, 1) if x.startswith("./") else x for x in lines]
        else:
            raise FileNotFoundError(f"{where}: the '{split}' images {entry!r} are not at {place}")
    images = sorted({Path(f) for f in files if f.rpartition(".")[-1].lower() in YOLO_IMAGE_SUFFIXES})
    if not images:
        raise ValueError(f"{where}: the '{split}' entry {entries!r} names no image")
    return images


def label_path(image: Path) -> Path:
    """img2label_paths: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    head, sep, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    joined = f"{head}{os.sep}labels{os.sep}{tail}" if sep else str(image)
    return Path(joined.rsplit(".", 1)[0] + ".txt")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the pixels are shown, EXIF rotation applied (check_image / exif_size); raises
    ValueError for an image under 10 pixels, OSError for one that does not open."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in _ROTATED_ORIENTATIONS:
            width, height = height, width
    if width < 10 or height < 10:
        raise ValueError(f"image size {width}x{height} is under 10 pixels")
    return width, height


def read_label_rows(path: Path, num_classes: int, keypoints: int = 0) -> np.ndarray:
    """[N, 5] rows ``class cx cy w h`` of one label file (verify_image_label, see the module docstring).
    keypoints: values per row of a pose dataset's keypoints (kpt_shape product). Raises ValueError when the
    file is corrupt (Ultralytics drops its image)."""
    rows = [line.split() for line in path.read_text(encoding="utf-8-sig").strip().splitlines() if line.strip()]
    if keypoints:
        rows = [row[:5] if len(row) == 5 + keypoints else row for row in rows]
    if not rows:
        return np.zeros((0, 5))
    if any(len(row) > 6 for row in rows):  # polygons: class x1 y1 x2 y2 ... -> their boxes (segments2boxes)
        if any(len(row) == 5 for row in rows):
            raise ValueError("labels mix segment and detection rows")
        boxes = []
        for row in rows:
            xy = np.asarray(row[1:], dtype=np.float64).reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            boxes.append([float(row[0]), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        labels = np.asarray(boxes, dtype=np.float64)
    else:
        if len({len(row) for row in rows}) != 1 or len(rows[0]) != 5:
            raise ValueError(f"labels require 5 columns, got rows of {sorted({len(row) for row in rows})}")
        labels = np.asarray(rows, dtype=np.float64)
    if labels[:, 1:].max() > 1.01:
        raise ValueError("non-normalised or out of bounds coordinates (above 1.01)")
    if labels.min() < 0 and (labels.min() < -0.01 or labels[:, 3:5].min() < 0):
        raise ValueError("negative label values")
    if (labels[:, 0] % 1 != 0).any():
        raise ValueError("non-integer class labels")
    if labels[:, 0].max() >= num_classes:
        raise ValueError(f"label class {int(labels[:, 0].max())} exceeds the dataset's {num_classes} classes")
    return np.unique(labels, axis=0)


def read_yolo_dataset(yaml_path: str | Path, split: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """One split of a YOLO dataset as a COCO detection dict (see the module docstring). Image file names are
    relative to the yaml's folder when they are inside it, else absolute. ``data["yolo"]`` says what was
    skipped: ``{"split", "images", "without_labels", "corrupt": [{"file_name", "reason"}, ...]}``."""
    yaml_path = Path(yaml_path)
    where = str(yaml_path)
    data = data if data is not None else load_dataset_yaml(yaml_path)
    if data is None:
        raise ValueError(f"{where}: not an Ultralytics dataset yaml (names/nc and train/val)")
    names = class_names(data, where)
    keypoints = int(np.prod(data["kpt_shape"])) if data.get("kpt_shape") else 0
    root = dataset_root(data, yaml_path)
    base = yaml_path.resolve().parent
    images, annotations, corrupt, without_labels = [], [], [], 0
    for image_path in split_image_files(data, split, root, where):
        file_name = os.path.relpath(image_path, base) if image_path.is_relative_to(base) else str(image_path)
        labels = label_path(image_path)
        try:
            width, height = image_size(image_path)
            rows = read_label_rows(labels, len(names), keypoints) if labels.is_file() else np.zeros((0, 5))
        except (OSError, ValueError) as exc:
            corrupt.append({"file_name": file_name, "reason": str(exc)})
            continue
        without_labels += not labels.is_file()
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cls, cx, cy, w, h in rows:
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [round(v, 4) for v in box], "area": box[2] * box[3], "iscrowd": 0})
    if corrupt and not images:
        raise ValueError(f"{where}: every '{split}' image was dropped for corrupt labels, as Ultralytics drops them "
                         f"({len(corrupt)}; first: {corrupt[0]['file_name']}: {corrupt[0]['reason']})")
    if corrupt:
        log.warning("%s: %d '%s' images dropped for corrupt labels, as Ultralytics drops them; first: %s: %s",
                    where, len(corrupt), split, corrupt[0]["file_name"], corrupt[0]["reason"])
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
            "yolo": {"split": split, "images": len(images), "without_labels": without_labels, "corrupt": corrupt}}
    return normalize_coco(coco)


def refuse_image_root(yaml_path: str | Path, root: str | Path | None) -> None:
    """A data.yaml names its own images (relative to its root or absolute), so FILE@ROOT has no meaning for it."""
    if root is not None:
        raise ValueError(f"{yaml_path}: a YOLO data.yaml names its own images; drop '@{root}'")


__all__ = ["YOLO_IMAGE_SUFFIXES", "class_names", "dataset_root", "image_size", "label_path", "load_dataset_yaml",
           "read_label_rows", "read_yolo_dataset", "refuse_image_root", "split_image_files"]
