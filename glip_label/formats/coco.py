"""COCO detection files: writer, tolerant reader and a guarded pycocotools evaluation.

Box convention (one for every xywh format glip-label writes): records hold GLIP's "+1" xyxy boxes (a
box covering pixel columns x1..x2 is x2 - x1 + 1 wide), and COCO ``bbox`` is written the way the
official GLIP export does it (``evaluation/coco/coco_eval.py::prepare_for_coco_detection``):
``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``. Reading inverts it exactly (x2 = x + w - 1, as GLIP's own
loader does). Following the official export matters because that is what the published COCO numbers
were measured with; the same file read back by GLIP-style training gives the boxes it was written from.
``bbox`` and ``area`` are rounded to 2 decimals (0.01 px is far below labelling noise and halves file
size); ``score`` to 6. The convention is also stated in the file's ``info`` block.
Consumers read ``bbox`` as the continuous box x <= u < x + w (pycocotools' ``area = w * h``,
supervision's ``xyxy = [x, y, x + w, y + h]``, the ``coco2odvg`` converters of mmdet and
Open-GroundingDino): the same box as our ODVG ``[x1, y1, x2 + 1, y2 + 1]``, YOLO and Label Studio
files (tests/test_roundtrips.py checks each consumer's rule).

Ids follow what CVAT, pycocotools and detectron2 enforce: category ids start at ``category_id_base``
(1 by default; NVIDIA TAO wants 0), image and annotation ids start at 1 (pycocotools' evaluation
treats annotation id 0 as "unmatched", pytorch/vision#1530), annotation ids are unique across the file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glip_label.io import atomic_open, atomic_write_json, read_json
from glip_label.records import Detections, ImageRecord

BOX_CONVENTION = "bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1] from GLIP '+1' xyxy pixels (official GLIP COCO export)"
BBOX_DECIMALS = 2
SCORE_DECIMALS = 6

# Names of COCOeval.stats, in its order.
COCO_STAT_NAMES = (
    "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ boxes


def xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """GLIP "+1" xyxy → COCO xywh (w = x2 - x1 + 1). [N, 4] → [N, 4]."""
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    xywh = boxes_xyxy.copy()
    xywh[:, 2:] = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2] + 1.0
    return xywh


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """COCO xywh → GLIP "+1" xyxy (x2 = x + w - 1), the exact inverse of `xyxy_to_xywh`. [N, 4] → [N, 4]."""
    boxes_xywh = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    xyxy = boxes_xywh.copy()
    xyxy[:, 2:] = boxes_xywh[:, :2] + boxes_xywh[:, 2:] - 1.0
    return xyxy


def _round_list(values: Iterable[float], decimals: int) -> list[float]:
    return [round(float(v), decimals) for v in values]


def _check_finite(boxes: np.ndarray, where: str) -> None:
    if not np.isfinite(boxes).all():
        raise ValueError(f"{where}: boxes contain NaN or infinity")


# ----------------------------------------------------------------------------------------- writer


class CocoLayoutWriter:
    """What every writer of a COCO-layout file shares (detection here, MDETR-style grounding in
    `glip_label.formats.mdetr`): the ``info`` block stating the box convention, image entries and
    annotations kept in the order added, ids counted from 1, and the file written atomically.

    A subclass builds the entries in its ``add`` and hands them to `_commit`; it supplies
    ``categories_list()``. `StreamingWriter` replaces `_store` to send the entries to a file instead.
    """

    def __init__(self, description: str, info: dict | None = None, **fixed_info: Any) -> None:
        self.info = {
            "description": description,
            "box_convention": BOX_CONVENTION,
            "bbox_decimals": BBOX_DECIMALS,
            **fixed_info,
        }
        if info:
            self.info.update(info)
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._num_images = 0
        self._num_annotations = 0

    def _commit(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        """Store one image entry with its annotations and advance the id counters."""
        self._store(image, annotations)
        self._num_images += 1
        self._num_annotations += len(annotations)

    def _store(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        self._images.append(image)
        self._annotations.extend(annotations)

    def __len__(self) -> int:
        return self._num_images

    @property
    def num_annotations(self) -> int:
        return self._num_annotations

    def categories_list(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": dict(self.info),
            "licenses": [],
            "images": list(self._images),
            "annotations": list(self._annotations),
            "categories": self.categories_list(),
        }

    def write(self, path: str | Path) -> None:
        """Write atomically (compact JSON: COCO files of large runs are big)."""
        atomic_write_json(path, self.to_dict(), indent=None)


class CocoWriter(CocoLayoutWriter):
    """Collects image records into one COCO detection file.

    Labels of the records given to `add` must already be category indices (0-based into
    ``categories``): an ontology may map several prompts to one class, and that mapping belongs to the
    caller, which knows the prompts. ``category_index`` is a convenience for the common case of a
    per-label lookup table (``category_index[label]`` is the category index).
    """

    def __init__(self, categories: list[str], category_id_base: int = 1, info: dict | None = None) -> None:
        if not categories:
            raise ValueError("a COCO file needs at least one category")
        if len(set(categories)) != len(categories):
            raise ValueError("category names must be unique (merge synonyms with an ontology before writing)")
        self.categories = list(categories)
        self.category_id_base = int(category_id_base)
        super().__init__("pseudo-labels written by glip-label", info, category_id_base=self.category_id_base)
        self._file_names: set[str] = set()

    def category_id(self, category_index: int) -> int:
        return self.category_id_base + int(category_index)

    def add(self, record: ImageRecord, category_index: list[int] | None = None) -> int:
        """Add one image (kept even without boxes: negatives are information); returns its image id."""
        if record.file_name in self._file_names:
            raise ValueError(f"image {record.file_name!r} was already added")
        width, height = int(record.width), int(record.height)
        if width <= 0 or height <= 0:
            raise ValueError(f"{record.file_name}: width and height must be positive, got {width}x{height}")
        det = record.detections
        cat_idx = det.labels
        if category_index is not None:
            table = np.asarray(category_index, dtype=np.int64)
            if len(cat_idx) and (cat_idx.min() < 0 or cat_idx.max() >= len(table)):
                raise ValueError(f"{record.file_name}: a label has no entry in category_index")
            cat_idx = table[cat_idx]
        if len(cat_idx) and (cat_idx.min() < 0 or cat_idx.max() >= len(self.categories)):
            raise ValueError(
                f"{record.file_name}: category index out of range 0..{len(self.categories) - 1} "
                f"(labels must be category indices, not phrase indices)"
            )
        _check_finite(det.boxes, record.file_name)

        image_id = self._num_images + 1
        self._file_names.add(record.file_name)
        image = {"id": image_id, "file_name": record.file_name, "width": width, "height": height}
        annotations = []
        xywh = xyxy_to_xywh(det.boxes)  # [N, 4]
        for box, score, cat in zip(xywh, det.scores, cat_idx, strict=True):
            bbox = _round_list(box, BBOX_DECIMALS)
            annotations.append(
                {
                    "id": self._num_annotations + len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.category_id(cat),
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], BBOX_DECIMALS),
                    "iscrowd": 0,
                    "score": round(float(score), SCORE_DECIMALS),
                }
            )
        self._commit(image, annotations)
        return image_id

    def categories_list(self) -> list[dict[str, Any]]:
        return [
            {"id": self.category_id(i), "name": name, "supercategory": "object"}
            for i, name in enumerate(self.categories)
        ]

    def to_results_list(self) -> list[dict[str, Any]]:
        """The annotations as a pycocotools results list (what `COCO.loadRes` and `evaluate_coco` take)."""
        return [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": a["score"]}
            for a in self._annotations
        ]


class CocoFileSink:
    """Writes a COCO-layout file as entries arrive, so memory stays flat however many images and boxes a run has.

    Image entries go straight into the (temporary) output file and annotations into a spool file that is
    appended after them on `finish`; the file appears at `path` atomically, and not at all after `abort`.
    """

    def __init__(self, path: str | Path, info: dict[str, Any]) -> None:
        self._context = atomic_open(path, "w")
        self._fh = self._context.__enter__()
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed in finish/abort
        self._num_images = self._num_annotations = 0
        self._fh.write('{"info": ' + json.dumps(info, ensure_ascii=False) + ', "licenses": [], "images": [')

    def store(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        self._fh.write(("," if self._num_images else "") + json.dumps(image, ensure_ascii=False))
        for annotation in annotations:
            self._spool.write(("," if self._num_annotations else "") + json.dumps(annotation, ensure_ascii=False))
            self._num_annotations += 1
        self._num_images += 1

    def finish(self, categories: list[dict[str, Any]]) -> None:
        self._fh.write('], "annotations": [')
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self._fh)
        self._spool.close()
        self._fh.write('], "categories": ' + json.dumps(categories, ensure_ascii=False) + "}\n")
        self._context.__exit__(None, None, None)

    def abort(self, exc_type, exc, tb) -> None:
        self._spool.close()
        self._context.__exit__(exc_type, exc, tb)


class StreamingWriter:
    """Mixin for a writer whose `_store` goes to `self._sink` (a CocoFileSink): close and context manager.

    The writer supplies `categories_list()`, written last; nothing is kept in memory, so `to_dict` is refused.
    """

    _sink: CocoFileSink

    def _store(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        self._sink.store(image, annotations)

    def to_dict(self) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} keeps nothing in memory: read the file it wrote")

    def close(self) -> None:
        self._sink.finish(self.categories_list())  # type: ignore[attr-defined]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._sink.abort(exc_type, exc, tb)


class CocoStreamWriter(StreamingWriter, CocoWriter):
    """A CocoWriter that streams to `path` (see CocoFileSink). Use as a context manager."""

    def __init__(self, path: str | Path, categories: list[str], category_id_base: int = 1,
                 info: dict | None = None) -> None:
        super().__init__(categories, category_id_base, info)
        self._sink = CocoFileSink(path, self.info)


# ----------------------------------------------------------------------------------------- reader


def coerce_int(value: Any, what: str) -> int:
    """Int from int, integral float or numeric string (MDETR's Flickr files store sizes as strings)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{what}: expected a number, got {text!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{what}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    raise ValueError(f"{what}: expected a number, got {value!r}")


def _maybe_int_id(value: Any) -> Any:
    """Digit-string ids become ints so that image ids and annotation image_ids compare equal."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _bbox4(bbox: Any, what: str) -> list[float]:
    """A flat list of 4 floats; a single box wrapped in a list ([[x, y, w, h]]) is unwrapped."""
    if isinstance(bbox, (list, tuple)) and len(bbox) == 1 and isinstance(bbox[0], (list, tuple)):
        bbox = bbox[0]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{what}: bbox must be 4 numbers, got {bbox!r}")
    values = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: bbox has NaN or infinity: {bbox!r}")
    return values


def normalize_coco(data: dict[str, Any]) -> dict[str, Any]:
    """Make a COCO-style dict safe for pycocotools and training (in place, also returned).

    Converts string width/height and ids, fills missing ``iscrowd`` (0) and ``area`` (w·h), adds
    missing ``categories``/``annotations`` lists, and renumbers annotation ids from 1 when any is
    missing, duplicated or 0 (pycocotools' matcher silently counts a match to id 0 as a miss).
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError("not a COCO file: expected an object with an 'images' list")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    for img in data["images"]:
        if "id" not in img:
            raise ValueError(f"image without an id: {img!r}"[:200])
        img["id"] = _maybe_int_id(img["id"])
        where = f"image {img['id']}"
        for key in ("width", "height"):
            if key not in img:
                raise ValueError(f"{where}: missing '{key}'")
            img[key] = coerce_int(img[key], f"{where} {key}")
    for cat in data["categories"]:
        cat["id"] = _maybe_int_id(cat["id"])
    ids = []
    for ann in data["annotations"]:
        where = f"annotation {ann.get('id', '?')} (image {ann.get('image_id', '?')})"
        if "image_id" not in ann:
            raise ValueError(f"{where}: missing 'image_id'")
        ann["image_id"] = _maybe_int_id(ann["image_id"])
        if "category_id" in ann:
            ann["category_id"] = _maybe_int_id(ann["category_id"])
        if "bbox" in ann:
            ann["bbox"] = _bbox4(ann["bbox"], where)
        ann["iscrowd"] = int(ann.get("iscrowd", 0) or 0)
        if "area" not in ann or ann["area"] is None:
            if "bbox" not in ann:
                raise ValueError(f"{where}: neither 'area' nor 'bbox'")
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        else:
            ann["area"] = float(ann["area"])
        if "score" in ann:
            ann["score"] = float(ann["score"])
        ids.append(_maybe_int_id(ann.get("id")))
    if any(i is None or i == 0 for i in ids) or len(set(ids)) != len(ids):
        for new_id, ann in enumerate(data["annotations"], start=1):
            ann["id"] = new_id
    else:
        for ann, i in zip(data["annotations"], ids, strict=True):
            ann["id"] = i
    _drop_parent_only_categories(data)
    return data


def _drop_parent_only_categories(data: dict[str, Any]) -> None:
    """Roboflow's COCO export adds the dataset's name as a boxless category 0, the ``supercategory`` of every real
    class ("vehicles" over car, truck): prompted, it would be taught as absent wherever its members are and compete
    with them for boxes. So a boxless category without a supercategory of its own that is another's supercategory
    is left out (ours name every supercategory "object", so a class "object" stays)."""
    boxed = {ann.get("category_id") for ann in data["annotations"]}
    parents = {str(c.get("supercategory")) for c in data["categories"]
               if c.get("supercategory") not in (None, "none", c["name"])}
    dropped = [c for c in data["categories"] if c["id"] not in boxed and str(c["name"]) in parents
               and c.get("supercategory") in (None, "none")]
    if dropped:
        log.info("left out category %s: boxless, the supercategory of the others (Roboflow's export)", dropped)
        data["categories"] = [c for c in data["categories"] if c not in dropped]


def read_coco(path: str | Path) -> dict[str, Any]:
    """Load a COCO json, tolerating the variants found in the wild (see `normalize_coco`)."""
    return normalize_coco(read_json(path))


def records_from_coco(data: dict[str, Any]) -> tuple[list[str], list[ImageRecord]]:
    """COCO dict → (category names in id order, records with labels = category indices).

    The inverse of `CocoWriter` (boxes back to "+1" xyxy; a missing ``score`` reads as 1.0, as for gold
    labels). Crowd annotations are kept; callers that train decide what to do with them
    (``record.extra["iscrowd"]`` holds the flags).
    """
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        if ann["image_id"] not in by_image:
            raise ValueError(f"annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        by_image[ann["image_id"]].append(ann)
    records = []
    for img in data["images"]:
        anns = by_image[img["id"]]
        try:
            labels = [cat_index[a["category_id"]] for a in anns]
        except KeyError as exc:
            raise ValueError(f"image {img['id']}: unknown category id {exc.args[0]}") from None
        det = Detections(
            xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)),
            np.array([a.get("score", 1.0) for a in anns], dtype=np.float64),
            np.array(labels, dtype=np.int64),
            names,
        )
        extra = {"image_id": img["id"], "iscrowd": [int(a.get("iscrowd", 0)) for a in anns]}
        records.append(ImageRecord(img["file_name"], int(img["width"]), int(img["height"]), det, extra))
    return names, records


# ------------------------------------------------------------------------------------- evaluation


def _coco_from_dict(data: dict[str, Any]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(
    gold: str | Path | dict[str, Any],
    results: Sequence[dict[str, Any]],
    verbose: bool = False,
    category_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Box AP of ``results`` against a gold COCO file, as pycocotools computes it.

    ``category_ids`` restricts the evaluation to those categories (COCOeval's ``params.catIds``): AP on
    a subset, e.g. the base and the novel classes of an open-vocabulary split.

    Returns the 12 COCOeval stats by name (``ap``, ``ap50``, ``ap75``, …) plus ``num_results``.
    An empty results list returns zeros instead of crashing in ``loadRes`` (cocodataset/cocoapi#450):
    a student that predicts nothing has AP 0, not an exception. Where COCOeval reports -1 (no gold
    boxes in that area range) the value is kept as -1. COCOeval's printing is silenced unless ``verbose``.
    """
    from pycocotools.cocoeval import COCOeval

    data = normalize_coco(copy.deepcopy(gold)) if isinstance(gold, dict) else read_coco(gold)
    if len(results) == 0:
        return {name: 0.0 for name in COCO_STAT_NAMES} | {"num_results": 0.0}
    image_ids = {img["id"] for img in data["images"]}
    unknown = {r["image_id"] for r in results} - image_ids
    if unknown:
        raise ValueError(
            f"results refer to {len(unknown)} image id(s) not in the gold file, e.g. {sorted(unknown)[:5]}"
        )
    # loadRes writes area/id/segmentation into the dicts it gets: give it copies.
    dets = [
        {
            "image_id": r["image_id"],
            "category_id": r["category_id"],
            "bbox": [float(v) for v in r["bbox"]],
            "score": float(r["score"]),
        }
        for r in results
    ]
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = _coco_from_dict(data)
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if category_ids is not None:
            evaluator.params.catIds = sorted(int(c) for c in category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}
    stats["num_results"] = float(len(dets))
    return stats
