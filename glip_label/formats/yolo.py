"""YOLO (Ultralytics) detection labels: one ``class cx cy w h`` line per box, normalised to [0, 1].

Box convention: the normalised values come from the same COCO xywh as `glip_label.formats.coco`
(w = x2 - x1 + 1 from GLIP "+1" xyxy): ``cx = (x1 + w / 2) / W``, ``w_n = w / W``. Reading inverts it
(x1 = cx·W - w·W/2, x2 = x1 + w·W - 1). Values have 6 decimals, so a round trip is exact to about
1e-6 of the image size. Boxes are clipped to the image first ([0, W-1] in "+1" pixels): Ultralytics
rejects a whole label file when any value leaves [0, 1]. Consumers read ``cx ± w/2`` times the image
size as continuous edges (Ultralytics, supervision's ``yolo_annotations_to_detections``): the box
``[x1, x2 + 1)``, the same as the COCO ``[x, x + w)`` and ODVG ``[x1, x2 + 1]`` of the detection.

Layout (``out_dir``), made for Ultralytics' loading rules (``ultralytics/data/utils.py``:
``check_det_dataset`` resolves ``path / train`` with ``Path.resolve()``, which follows symbolic links;
``img2label_paths`` finds an image's labels by replacing the LAST ``/images/`` of the image path with
``/labels/``; ``ultralytics/data/base.py::BaseDataset.get_img_files`` globs ``train/**/*.*``; the label
cache is written to ``Path(label_files[0]).parent.with_suffix(".cache")``):
- ``images/<file_name>``: one symbolic link per image to the user's file (never copied or moved).
  ``images`` itself is a real folder, so the resolved ``train`` path stays in out_dir and the image
  paths Ultralytics globs are ``out_dir/images/a/x.jpg``, whose labels it looks for at
  ``out_dir/labels/a/x.txt``, exactly where they are. Its ``.cache`` file (and ``cache="disk"``
  ``.npy`` files) land in out_dir, never in the user's image folder;
- ``labels/<file_name without suffix>.txt``: the file name's sub-folders are kept, so ``a/x.jpg`` and
  ``b/x.jpg`` do not collide; an image without boxes gets an EMPTY file (a known negative, not a
  missing label);
- ``data.yaml``: ``path`` (out_dir), ``train``/``val`` (``images``), ``nc``, ``names``;
  ``image_root`` records the real folder;
- ``classes.txt``: the names, one per line (LabelImg / X-AnyLabeling read it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from glip_label.formats.coco import xyxy_to_xywh
from glip_label.io import atomic_write_text
from glip_label.records import ImageRecord

DECIMALS = 6


def yolo_label_relpath(file_name: str) -> PurePosixPath:
    """``labels/<sub/folders>/<stem>.txt`` for an image path relative to the image root.

    Rejects absolute paths and ``..`` (labels must stay inside out_dir) and a folder named ``images``
    inside the file name: Ultralytics would look for that image's labels INSIDE the image root (it
    rewrites the last ``/images/`` of the path). Pass the deeper folder as the image root instead.
    """
    rel = PurePosixPath(file_name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise ValueError(f"{file_name!r}: image file names must be relative paths inside the image root")
    if "images" in rel.parts[:-1]:
        raise ValueError(
            f"{file_name!r} contains a folder named 'images'; Ultralytics would look for its labels inside the "
            f"image root. Use the folder below it as the image root."
        )
    return PurePosixPath("labels") / rel.with_suffix(".txt")


def yolo_lines(boxes_xyxy: np.ndarray, class_ids: np.ndarray, width: int, height: int) -> list[str]:
    """Label-file lines for one image; inverted boxes and boxes entirely outside the image are left out."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    keep = (x2 >= x1) & (y2 >= y1) & (x2 >= 0) & (y2 >= 0) & (x1 <= width - 1) & (y1 <= height - 1)
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    xywh = xyxy_to_xywh(boxes)  # [N, 4], w = x2 - x1 + 1
    scale = np.array([width, height, width, height], dtype=np.float64)
    cxcywh = np.concatenate([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], axis=1) / scale  # [N, 4] in [0, 1]
    return [
        f"{int(c)} " + " ".join(f"{v:.{DECIMALS}f}" for v in row)
        for row, c, k in zip(cxcywh, np.asarray(class_ids).reshape(-1), keep, strict=True)
        if k
    ]


def _link_images(out_dir: Path, image_root: Path, file_names: list[str]) -> None:
    """``out_dir/images/<file_name>`` → the user's image, one link per image; stale links are removed.

    Only symbolic links are ever created or removed under ``images/``: a real file there is not ours,
    so it is an error rather than something to overwrite.
    """
    images = out_dir / "images"
    if images.is_symlink():  # the folder link of earlier versions: Ultralytics resolves it away
        images.unlink()
    images.mkdir(parents=True, exist_ok=True)
    root = image_root.resolve()
    wanted: set[Path] = set()
    for file_name in file_names:
        link = images / PurePosixPath(file_name.replace("\\", "/"))
        target = root / file_name
        wanted.add(link)
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                continue
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link} exists and is not a link made by glip-label; choose another output folder")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    for folder, _dirs, files in os.walk(images):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() and path not in wanted:
                path.unlink()


def write_yolo(
    out_dir: str | Path,
    records: Iterable[ImageRecord],
    categories: list[str],
    image_root: str | Path,
    link_images: bool = True,
) -> dict[str, Any]:
    """Write YOLO labels, ``data.yaml`` and ``classes.txt``; returns counts.

    ``records``' labels must be category indices (0-based into ``categories``), which are the YOLO
    class ids. With ``link_images=False`` no link is made and ``data.yaml`` still names ``images``:
    the caller arranges the images (e.g. copies them to ``out_dir/images/<file_name>``) before training.
    """
    out_dir = Path(out_dir)
    image_root = Path(image_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[PurePosixPath, str] = {}
    file_names: list[str] = []
    counts = {"images": 0, "boxes": 0, "empty": 0, "outside": 0}
    for record in records:
        rel = yolo_label_relpath(record.file_name)
        if rel in seen:
            raise ValueError(f"{record.file_name!r} and {seen[rel]!r} would share the label file {rel}")
        seen[rel] = record.file_name
        file_names.append(record.file_name)
        det = record.detections
        if len(det) and (det.labels.min() < 0 or det.labels.max() >= len(categories)):
            raise ValueError(f"{record.file_name}: label out of range 0..{len(categories) - 1}")
        lines = yolo_lines(det.boxes, det.labels, int(record.width), int(record.height))
        atomic_write_text(out_dir / rel, "".join(line + "\n" for line in lines))
        counts["images"] += 1
        counts["boxes"] += len(lines)
        counts["outside"] += len(det) - len(lines)
        counts["empty"] += not lines
    if link_images:
        _link_images(out_dir, image_root, file_names)
    data_yaml = {
        "path": str(out_dir.resolve()),
        "train": "images",
        "val": "images",
        "nc": len(categories),
        "names": list(categories),
        "image_root": str(image_root.resolve()),
    }
    header = "# Written by glip-label. images/ links to each image under image_root; labels/ mirrors it.\n"
    atomic_write_text(out_dir / "data.yaml", header + yaml.safe_dump(data_yaml, sort_keys=False, allow_unicode=True))
    atomic_write_text(out_dir / "classes.txt", "".join(name + "\n" for name in categories))
    return counts


def read_yolo_labels(path: str | Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A label file → (boxes [N, 4] float64 "+1" xyxy pixels, class ids [N] int64); inverse of `yolo_lines`.

    Extra columns after the box (a confidence some tools append) are ignored; a line with fewer than
    5 values, or a polygon (segmentation) line, is an error rather than a silently wrong box.
    """
    rows, classes = [], []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (5, 6):
                raise ValueError(f"{path}:{line_no}: expected 'class cx cy w h', got {len(parts)} values")
            classes.append(int(float(parts[0])))
            rows.append([float(v) for v in parts[1:5]])
    cxcywh = np.array(rows, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    cxcywh_px = cxcywh * scale  # [N, 4] pixels
    boxes = np.empty_like(cxcywh_px)
    boxes[:, :2] = cxcywh_px[:, :2] - cxcywh_px[:, 2:] / 2
    boxes[:, 2:] = boxes[:, :2] + cxcywh_px[:, 2:] - 1.0
    return boxes, np.array(classes, dtype=np.int64)
