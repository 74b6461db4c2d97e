"""Training data for GLIP students: gold and pseudo-labelled detection and grounding files, mixed.

Four inputs are read, recognised from their content (`detect_format`):
- COCO detection (gold files, and our `annotations.coco.json` whose annotations carry a ``score``);
- ODVG detection and ODVG grounding JSON Lines (our `annotations.odvg.jsonl` / `grounding.odvg.jsonl`,
  Open-GroundingDino and mmdetection files);
- MDETR-style grounding COCO (GoldG files, our `grounding.mdetr.json`).

Every image becomes a `GroundingSample` with "+1" xyxy boxes in original pixels. Detection samples
have no caption: a prompt is drawn for them each time they are used (`detection_prompt`, the official
`od_to_grounding` recipe: shuffled positives plus sampled negative class names), so the student sees
different negatives at every epoch. Grounding samples keep their caption and the character spans of
each box's phrase.

Pseudo labels are filtered when they are read, not when they are written (formats-and-peers §3.4):
a box that has a ``score`` is kept only if score >= min_score, so one labelling pass serves training
runs with different thresholds. Gold boxes (no score) are always kept.

Randomness (negatives, scale, flip) is drawn from a generator seeded by (seed, epoch, stream
position) of the item, never from global state: an item is the same whether it is loaded by a
resumed run, by another DDP rank or by a DataLoader worker.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.ops import box_iou

from glip_label.config import GLIPConfig
from glip_label.data.captions import ImageRef, load_caption_image
from glip_label.data.image_refs import ImageResolver, image_resolver
from glip_label.data.images import ImageError, LoadedImage, load_image
from glip_label.data.transforms import GLIPTransform, build_transform
from glip_label.formats.coco import coerce_int, normalize_coco, xywh_to_xyxy
from glip_label.formats.mdetr import normalize_mdetr
from glip_label.formats.odvg import normalize_spans, odvg_to_xyxy, read_odvg, region_boxes
from glip_label.model.preprocess import batch_images
from glip_label.text.prompts import (
    MAX_QUERY_LEN,
    Prompt,
    clean_name,
    load_tokenizer,
    positive_map_label_to_token,
    prompt_token_count,
    tokenize,
)

log = logging.getLogger(__name__)

FORMATS = ("coco", "odvg-detection", "odvg-grounding", "mdetr")
DEFAULT_NUM_NEGATIVES = 85  # DATASETS.RANDOM_SAMPLE_NEG of the pretraining yamls
FULL_NEGATIVES_PROBABILITY = 0.5  # DATASETS.CONTROL_PROB[2]
SEPARATOR = ". "  # DATASETS.SEPARATION_TOKENS
MAX_IMAGE_RETRIES = 10

Span = tuple[int, int]


# ---------------------------------------------------------------------------------------------- samples
@dataclass
class GroundingSample:
    """One training image (for MDETR files: one image-caption pair).

    boxes:      [G, 4] float64 "+1" xyxy in original pixels, clipped to the image
    spans:      per box, the [start, end) character spans of its phrase in `caption` (empty lists for
                detection samples, whose caption is drawn later)
    categories: per box, the class name (detection samples only)
    scores:     per box, the teacher's confidence; NaN for gold boxes; None when no box has a score
    image_ref:  where the image is when it is not the file ``image_path`` (a tar member, a dataset row;
                see `glip_label.data.image_refs`); ``image_path`` then only names it
    """

    image_path: Path
    width: int
    height: int
    caption: str | None
    boxes: np.ndarray
    spans: list[list[Span]]
    categories: list[str] | None
    scores: np.ndarray | None
    source: str
    image_ref: ImageRef | None = None

    @property
    def is_detection(self) -> bool:
        return self.caption is None


def load_sample_image(sample: GroundingSample) -> LoadedImage | ImageError:
    """The sample's image, decoded like every image glip-label reads; never raises for a bad image."""
    if sample.image_ref is not None:
        return load_caption_image(sample.image_ref)
    return load_image(sample.image_path.parent, sample.image_path.name)


@dataclass
class GroundingSource:
    """The samples of one data file, with what mixing and prompting need.

    categories: all class names of a detection file (the pool negatives are drawn from); None for
                grounding files
    weight:     copies per epoch (the official FLICKR_COPY, MIXED_COPY, ...); fractions draw a random
                subset of that size each epoch
    """

    name: str
    format: str
    path: Path
    samples: list[GroundingSample]
    categories: list[str] | None = None
    weight: float = 1.0
    stats: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- formats
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


def _first_json_line(path: Path) -> Any:
    """The first non-empty line parsed as JSON, or None if it is not a complete JSON value."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def _odvg_kind(record: Any) -> str | None:
    if not isinstance(record, dict) or "filename" not in record:
        return None
    if "grounding" in record:
        return "odvg-grounding"
    if "detection" in record:
        return "odvg-detection"
    return None


def _coco_kind(data: Any, path: Path) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO/MDETR json (no 'images' list) and not ODVG JSON Lines")
    if any(isinstance(img, dict) and "caption" in img for img in data["images"][:100]):
        return "mdetr"
    annotations = data.get("annotations") or []
    head = annotations[:100]
    if head and all("bbox" not in a for a in head) and any("caption" in a for a in head):
        raise ValueError(f"{path}: this is a COCO captions file (no boxes); it cannot train a detector")
    return "coco"


def _sniff(path: Path) -> tuple[str, Any]:
    """(format, parsed COCO/MDETR dict or None for ODVG) from the file's content."""
    first = _first_json_line(path)
    kind = _odvg_kind(first)
    if kind is not None:
        return kind, None
    if isinstance(first, dict) and "filename" in first:
        raise ValueError(f"{path}: ODVG record without 'detection' or 'grounding'")
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: neither a JSON file nor ODVG JSON Lines ({exc.msg})") from None
    return _coco_kind(data, path), data


def detect_format(path: str | Path) -> str:
    """"coco", "odvg-detection", "odvg-grounding" or "mdetr", from what the file contains (not its name).

    JSON Lines whose first record has "grounding"/"detection" are ODVG; a JSON object with "images" is
    MDETR-style when its images carry a "caption", COCO detection otherwise.
    """
    return _sniff(Path(path))[0]


# ---------------------------------------------------------------------------------------------- loading
def _as_boxes(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 4)


def _score_array(scores: list[float | None]) -> np.ndarray | None:
    """Per-box scores with NaN for gold boxes; None when no box of the sample has a score."""
    if all(s is None for s in scores):
        return None
    return np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)


@dataclass(frozen=True)
class BoxFilter:
    """Which boxes of a training file are trained on.

    min_score: boxes with a score (pseudo labels) below it are dropped; gold boxes have none.
    min_box_size: boxes whose "+1" width or height is below it (after clipping) are dropped.
    min_margin: None keeps every scored box that passes min_score. A number keeps, for each phrase (or
      category) of an image, only its best-scoring box, and only when (a) it beats the phrase's best box
      on another object (IoU < 0.3) by at least min_margin and (b) no other phrase scores higher on the
      same object (IoU >= 0.7). A teacher that spreads a phrase over several objects, or that gives an
      object to two phrases, is guessing; dropping such groundings trades pseudo boxes for precision,
      which is what a student learning a word it has never seen from the teacher needs most.
      It also drops the extra boxes of plural phrases ("two dogs"), so it suits object-level captions.
      A caption whose phrases lost all their boxes is cut to the kept phrases (`kept_phrases_caption`).
    """

    min_score: float = 0.5
    min_box_size: float = 1.0
    min_margin: float | None = None

    def keep(self, boxes: np.ndarray, scores: np.ndarray | None, keys: Sequence[Any], width: int,
             height: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip to the image ("+1": [0, w-1]) and select. Returns (clipped boxes [G, 4], keep mask [G_in]).

        keys: one hashable per box naming its phrase (spans) or category, for min_margin.
        Size is the "+1" width/height (COCO's w = x2 - x1 + 1), so a one-pixel box has size 1.
        """
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1)
        keep = np.isfinite(boxes).all(axis=1) & (sizes >= self.min_box_size)
        if scores is not None:
            keep &= np.isnan(scores) | (scores >= self.min_score)
            if self.min_margin is not None:
                keep &= np.isnan(scores) | confident_groundings(boxes, scores, keys, self.min_margin)
        return boxes[keep], keep


def confident_groundings(boxes: np.ndarray, scores: np.ndarray, keys: Sequence[Any], min_margin: float,
                         other_object_iou: float = 0.3, same_object_iou: float = 0.7) -> np.ndarray:
    """Mask of the boxes that `BoxFilter.min_margin` keeps (see there); boxes without a score are never kept.

    boxes [G, 4] xyxy, scores [G] (NaN for unscored), keys: G hashables (the phrase of each box).
    """
    keep = np.zeros(len(boxes), dtype=bool)
    scored = np.flatnonzero(~np.isnan(scores))
    if len(scored) == 0:
        return keep
    iou = box_iou(torch.from_numpy(boxes[scored]), torch.from_numpy(boxes[scored])).numpy()
    local_keys = [keys[i] for i in scored]
    local_scores = scores[scored]
    for key in dict.fromkeys(local_keys):
        mine = np.array([k == key for k in local_keys])
        best = int(np.flatnonzero(mine)[np.argmax(local_scores[mine])])
        elsewhere = mine & (iou[best] < other_object_iou)
        runner_up = local_scores[elsewhere].max() if elsewhere.any() else 0.0
        rivals = ~mine & (iou[best] >= same_object_iou)
        rival = local_scores[rivals].max() if rivals.any() else -np.inf
        if local_scores[best] - runner_up >= min_margin and local_scores[best] > rival:
            keep[scored[best]] = True
    return keep


def kept_phrases_caption(caption: str, box_spans: list[list[Span]]) -> tuple[str, list[list[Span]]]:
    """A caption of only the given phrases ("a red star. a ring"), and each box's span in it.

    Why: a phrase whose pseudo boxes were all dropped would stay in the caption with no box, and GLIP's
    token loss would then teach that nothing in the image is "a blue circle" -- including the blue
    circle the teacher was merely unsure about. Cutting the caption to the kept phrases (the way a
    detection prompt lists only the classes it has labels or negatives for) avoids these false negatives.
    """
    phrases = sorted({tuple(map(tuple, s)) for s in box_spans}, key=lambda spans: spans[0] if spans else (0, 0))
    text, where = "", {}
    for spans in phrases:
        if text:
            text += ". "
        phrase = " ".join(caption[start:end] for start, end in spans)
        where[spans] = [(len(text), len(text) + len(phrase))]
        text += phrase
    return text, [list(where[tuple(map(tuple, s))]) for s in box_spans]


def _count(stats: dict[str, int], key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


def _finish_sample(
    stats: dict[str, int],
    image: tuple[Path, ImageRef | None],
    width: int,
    height: int,
    caption: str | None,
    boxes: np.ndarray,
    spans: list[list[Span]],
    categories: list[str] | None,
    scores: list[float | None],
    source: str,
    box_filter: BoxFilter,
    keep_empty: bool,
) -> GroundingSample | None:
    score_array = _score_array(scores)
    keys = [tuple(map(tuple, s)) for s in spans] if categories is None else list(categories)
    kept_boxes, keep = box_filter.keep(boxes, score_array, keys, width, height)
    _count(stats, "boxes_read", len(keep))
    _count(stats, "boxes_dropped", int((~keep).sum()))
    if len(kept_boxes) == 0 and not keep_empty:
        _count(stats, "images_dropped_no_boxes")
        return None
    index = np.flatnonzero(keep)
    kept_spans = [spans[i] for i in index]
    margin_on_caption = caption is not None and box_filter.min_margin is not None and score_array is not None
    if margin_on_caption and {keys[i] for i in np.flatnonzero(~keep)} - {keys[i] for i in index}:  # lost a phrase
        caption, kept_spans = kept_phrases_caption(caption, kept_spans)
        _count(stats, "captions_cut_to_kept_phrases")
    return GroundingSample(
        image_path=image[0],
        image_ref=image[1],
        width=width,
        height=height,
        caption=caption,
        boxes=kept_boxes,
        spans=kept_spans,
        categories=None if categories is None else [categories[i] for i in index],
        scores=None if score_array is None else score_array[keep],
        source=source,
    )


def _locate(images: ImageResolver, file_name: str) -> tuple[Path, ImageRef | None]:
    """(path naming the image, reference when the image is not that file)."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"image file name must be a non-empty string, got {file_name!r}")
    return images.path(file_name), None if images.root is not None else images.ref(file_name)


def _load_coco(data: dict, images: ImageResolver, name: str, box_filter: BoxFilter, stats: dict):
    data = normalize_coco(data)
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
        _count(stats, "crowd_or_boxless_skipped", len(by_image[img["id"]]) - len(anns))
        try:
            categories = [name_of[a["category_id"]] for a in anns]
        except KeyError as exc:
            raise ValueError(f"{name}: image {img['id']}: unknown category id {exc.args[0]}") from None
        sample = _finish_sample(
            stats, _locate(images, img["file_name"]), int(img["width"]), int(img["height"]), None,
            xywh_to_xyxy(_as_boxes([a["bbox"] for a in anns])), [[] for _ in anns], categories,
            [a.get("score") for a in anns], name, box_filter, keep_empty=not pseudo,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    return samples, names


def _load_mdetr(data: dict, images: ImageResolver, name: str, box_filter: BoxFilter, stats: dict):
    data = normalize_mdetr(data)
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    samples = []
    for img in data["images"]:
        anns = [a for a in by_image[img["id"]] if not a.get("iscrowd")]
        spans = [[(int(s), int(e)) for s, e in a["tokens_positive"]] for a in anns]
        sample = _finish_sample(
            stats, _locate(images, img["file_name"]), int(img["width"]), int(img["height"]), img["caption"],
            xywh_to_xyxy(_as_boxes([a["bbox"] for a in anns])), spans, None,
            [a.get("score") for a in anns], name, box_filter, keep_empty=False,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    return samples


def _load_odvg_grounding(path: Path, images: ImageResolver, name: str, box_filter: BoxFilter, stats: dict):
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
        sample = _finish_sample(
            stats, _locate(images, rec["filename"]), coerce_int(rec["width"], f"{where} width"),
            coerce_int(rec["height"], f"{where} height"), caption, odvg_to_xyxy(_as_boxes(boxes)), spans, None, scores,
            name, box_filter, keep_empty=False,
        )  # fmt: skip
        if sample is not None:
            samples.append(sample)
    return samples


def _load_odvg_detection(
    path: Path,
    images: ImageResolver,
    name: str,
    box_filter: BoxFilter,
    stats: dict,
    label_map: dict[str, str] | None,
):
    records = list(read_odvg(path))
    pseudo = any("score" in inst for rec in records for inst in (rec.get("detection") or {}).get("instances", []))
    label_names: dict[int, str] = {int(k): str(v) for k, v in (label_map or {}).items()}
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
        sample = _finish_sample(
            stats, _locate(images, rec["filename"]), coerce_int(rec["width"], f"{where} width"),
            coerce_int(rec["height"], f"{where} height"), None, odvg_to_xyxy(_as_boxes(boxes)), [[] for _ in boxes],
            categories, scores, name, box_filter, keep_empty=not pseudo,
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
    """Read one training file (any of the four formats) into a `GroundingSource`.

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
    images = image_resolver(file_path, root_path)
    log.info("%s: images from %s", file_path, images.description)
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"{file_path}: weight must be a finite number >= 0, got {weight}")
    if isinstance(label_map, (str, Path)):
        with open(label_map, encoding="utf-8") as fh:
            label_map = json.load(fh)
    source_name = name or file_path.name
    box_filter = BoxFilter(min_score, min_box_size, min_margin)
    fmt, data = _sniff(file_path)
    stats: dict[str, int] = {}
    categories: list[str] | None = None
    if fmt == "coco":
        samples, categories = _load_coco(data, images, source_name, box_filter, stats)
    elif fmt == "mdetr":
        samples = _load_mdetr(data, images, source_name, box_filter, stats)
    elif fmt == "odvg-grounding":
        samples = _load_odvg_grounding(file_path, images, source_name, box_filter, stats)
    else:
        samples, categories = _load_odvg_detection(
            file_path, images, source_name, box_filter, stats, label_map
        )
    stats["images"] = len(samples)
    log.info("%s (%s): %d images, %s", file_path, fmt, len(samples), stats)
    return GroundingSource(source_name, fmt, file_path, samples, categories, float(weight), stats)


def load_samples(
    path: str | Path, root: str | Path | None = None, min_score: float = 0.5, min_box_size: float = 1.0
) -> list[GroundingSample]:
    """The samples of one training file (see `load_source`)."""
    return load_source(path, root, min_score=min_score, min_box_size=min_box_size).samples


# ---------------------------------------------------------------------------------------------- prompts
@functools.lru_cache(maxsize=1 << 16)
def _wordpiece_length(text: str) -> int:
    """Tokens of `text` without [CLS]/[SEP] (the official `tokenizer.tokenize` length)."""
    return len(load_tokenizer().encode(text, add_special_tokens=False).ids)


@dataclass
class DetectionPrompt:
    """A detection sample turned into grounding data.

    caption: class names joined by ". " (no trailing separator)
    kept:    indices of the sample's boxes whose class is in the caption
    spans:   per kept box, the span of its class name in the caption
    names:   the class names in caption order (positives and negatives)
    """

    caption: str
    kept: list[int]
    spans: list[list[Span]]
    names: list[str]


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _promptable(name: str) -> bool:
    return bool(clean_name(name).strip())


def _join_names(names: Sequence[str], separator: str = SEPARATOR) -> tuple[str, dict[str, Span]]:
    parts: list[str] = []
    positions: dict[str, Span] = {}
    cursor = 0
    for index, name in enumerate(names):
        cleaned = clean_name(name)
        positions[name] = (cursor, cursor + len(cleaned))
        parts.append(cleaned)
        cursor += len(cleaned)
        if index != len(names) - 1:
            parts.append(separator)
            cursor += len(separator)
    return "".join(parts), positions


def _shuffled(items: list[str], rng: np.random.Generator) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]


def detection_prompt(
    sample_categories: Sequence[str],
    all_categories: Sequence[str],
    rng: np.random.Generator,
    max_len: int = MAX_QUERY_LEN,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
    disable_shuffle: bool = False,
) -> DetectionPrompt:
    """The official detection -> grounding conversion (`od_to_grounding.py`, glip-spec §6.3).

    Pretraining mode (disable_shuffle False):
    1. positives (the sample's classes) are shuffled and kept while the running WordPiece length of
       "name. " stays <= max_len - 2; boxes of dropped classes are dropped (`check_for_positive_overflow`);
    2. with probability 0.5 num_negatives ("full") class names are drawn from all classes, otherwise a
       uniform 1..num_negatives; drawn names that are positives are discarded; negatives are shuffled and
       kept while the remaining budget (max_len - 2 - positive length) stays > 0;
    3. positives and negatives are shuffled together and joined with ". ".
    As in the official code the positive length used for the negative budget includes the class that
    overflowed, and all randomness comes from `rng` (one generator instead of python's and numpy's).
    Fine-tuning mode (disable_shuffle True): all classes in the given order, i.e. the evaluation prompt.
    The caption always fits in max_len tokens including [CLS]/[SEP].
    """
    budget = max_len - 2
    pool = [c for c in _unique(all_categories) if _promptable(c)]
    if disable_shuffle:
        label_list = pool
        caption, positions = _join_names(label_list)
        if prompt_token_count(caption) > max_len:
            raise ValueError(
                f"the {len(label_list)} class names need {prompt_token_count(caption)} tokens, more than "
                f"max_len={max_len}: fixed-order prompts cannot hold this vocabulary; train with shuffled "
                "prompts (disable_shuffle=False), which sample a fitting subset per image"
            )
    else:
        positives = _shuffled(_unique(sample_categories), rng)
        kept_positives: list[str] = []
        positive_length = 0
        for name in positives:
            if not _promptable(name):
                continue
            positive_length += _wordpiece_length(clean_name(name) + SEPARATOR)
            if positive_length > budget:
                break
            kept_positives.append(name)

        full_negative = min(num_negatives, len(pool))
        if rng.random() < FULL_NEGATIVES_PROBABILITY:
            negative_count = full_negative
        else:
            negative_count = int(rng.integers(max(1, full_negative))) + 1  # uniform 1..full (at least 1)
        negative_count = min(negative_count, len(pool))
        drawn = [pool[i] for i in rng.choice(len(pool), size=negative_count, replace=False)] if negative_count else []
        positive_set = set(sample_categories)
        negatives = _shuffled(_unique([n for n in drawn if n not in positive_set]), rng)

        remaining = budget - positive_length
        screened: list[str] = []
        for name in negatives:
            remaining -= _wordpiece_length(clean_name(name) + SEPARATOR)
            if remaining <= 0:
                break
            screened.append(name)
        label_list = _shuffled(screened + kept_positives, rng)
        caption, positions = _join_names(label_list)
    if not label_list:
        raise ValueError("no class name can be put in the prompt (empty vocabulary after clean_name)")
    kept = [i for i, c in enumerate(sample_categories) if c in positions]
    spans = [[positions[sample_categories[i]]] for i in kept]
    return DetectionPrompt(caption, kept, spans, list(label_list))


def caption_positive_map(
    caption: str, box_spans: Sequence[Sequence[Span]], max_len: int = MAX_QUERY_LEN
) -> tuple[Any, torch.Tensor, np.ndarray]:
    """Tokenise a caption and build the binary token map of every box [G, T] (T = real tokens, unpadded).

    Spans resolve to tokens with the official char->token fallbacks (`positive_map_label_to_token`),
    on the untruncated tokenisation. A box whose phrase maps to no token, or to a token beyond what
    fits in max_len (the caption was truncated), is dropped: training it would teach the wrong token.
    Returns (TokenizedPrompt, positive map [K, T] float32, kept box indices [K]).
    """
    tokens = tokenize(caption, max_len=max_len)
    num_tokens = tokens.num_tokens
    if not box_spans:
        return tokens, torch.zeros((0, num_tokens), dtype=torch.float32), np.zeros(0, dtype=np.int64)
    prompt = Prompt(caption, [caption[s[0][0] : s[0][1]] if s else "" for s in box_spans], [list(s) for s in box_spans])
    # A limit above the real length makes the lookup never raise; fitting is checked here instead.
    label_to_token = positive_map_label_to_token(prompt, None, max_len=max(max_len, 1 << 30))
    last_content = num_tokens - 2
    rows, kept = [], []
    for box_index in range(len(box_spans)):
        positions = label_to_token.get(box_index + 1)
        if not positions or max(positions) > last_content:
            continue
        row = torch.zeros(num_tokens, dtype=torch.float32)
        row[positions] = 1.0
        rows.append(row)
        kept.append(box_index)
    positive_map = torch.stack(rows) if rows else torch.zeros((0, num_tokens), dtype=torch.float32)
    return tokens, positive_map, np.asarray(kept, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- sampling
class SampleKey(NamedTuple):
    """What a dataset item is: a sample, and the (seed, epoch, stream position) its randomness comes from."""

    sample_id: int
    seed: int
    epoch: int
    position: int


class MixedSampler:
    """Deterministic weighted epochs over several sources, as one endless stream of `SampleKey`s.

    Each epoch holds floor(weight) copies of every sample of a source plus, for a fractional weight, a
    random subset of round(fraction * size) samples; the epoch is then shuffled. Everything derives
    from (seed, epoch), so position p of the stream is epoch p // len(self), offset p % len(self) — a
    run resumed at stream position p continues exactly where it stopped, with no sampler state to save.
    """

    def __init__(self, source_sizes: Sequence[int], weights: Sequence[float], seed: int = 0, shuffle: bool = True):
        if len(source_sizes) != len(weights):
            raise ValueError("one weight per source is needed")
        if any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
        self.source_sizes = [int(n) for n in source_sizes]
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self.shuffle = shuffle
        self.offsets = np.cumsum([0] + self.source_sizes[:-1]).tolist()
        self.epoch_length = sum(
            int(math.floor(w)) * n + int(round((w - math.floor(w)) * n))
            for n, w in zip(self.source_sizes, self.weights, strict=True)
        )
        if self.epoch_length == 0:
            raise ValueError("the data mix is empty (no samples, or all weights are 0)")
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.epoch_length

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Flat sample ids of one epoch, in the order they are consumed."""
        if epoch in self._cache:
            return self._cache[epoch]
        parts = []
        for source_index, (size, weight, offset) in enumerate(
            zip(self.source_sizes, self.weights, self.offsets, strict=True)
        ):
            copies = int(math.floor(weight))
            ids = np.arange(offset, offset + size, dtype=np.int64)
            parts.extend([ids] * copies)
            extra = int(round((weight - copies) * size))
            if extra:
                rng = np.random.default_rng([self.seed, epoch, source_index, 1])
                parts.append(np.sort(rng.choice(ids, size=extra, replace=False)))
        order = np.concatenate(parts)
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, epoch, 0]).permutation(len(order))]
        if len(self._cache) > 2:
            self._cache.pop(min(self._cache))
        self._cache[epoch] = order
        return order

    def position(self, stream_position: int) -> tuple[int, int]:
        """(epoch, offset within the epoch) of a stream position."""
        return divmod(int(stream_position), self.epoch_length)

    def keys(self, start: int, count: int) -> list[SampleKey]:
        """The `count` keys at stream positions start, start+1, ... (crossing epochs as needed)."""
        out = []
        for p in range(start, start + count):
            epoch, offset = self.position(p)
            out.append(SampleKey(int(self.epoch_order(epoch)[offset]), self.seed, epoch, p))
        return out


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Per-rank batches for steps start_step..end_step-1 of a run (a DistributedSampler for the stream).

    Step s consumes the global batch at stream positions start_position + (s - start_step) * G .. + G,
    G = batch_size * world_size; rank r takes the r-th contiguous slice of batch_size keys. One process
    with batch G therefore sees exactly the images that world_size processes see together.
    """

    def __init__(
        self,
        mixed: MixedSampler,
        batch_size: int,
        start_step: int,
        end_step: int,
        start_position: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size} / rank={rank} / world_size={world_size}")
        self.mixed = mixed
        self.batch_size = batch_size
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        self.start_position = start_step * self.global_batch if start_position is None else start_position

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def stream_position(self, step: int) -> int:
        """Stream position of the first key of `step`'s global batch."""
        return self.start_position + (step - self.start_step) * self.global_batch

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start_step, self.end_step):
            keys = self.mixed.keys(self.stream_position(step), self.global_batch)
            yield keys[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


# ---------------------------------------------------------------------------------------------- dataset
class GroundingDataset(Dataset):
    """Mixed detection + grounding sources -> model-ready items.

    An item (for an int index or a `SampleKey`) is a dict:
      image          [3, h, w] float32, normalised, unpadded
      boxes          [G, 4] float32 "+1" xyxy in resized-image pixels
      positive_map   [G, T] float32 binary token map of each box (T = the caption's real tokens)
      input_ids      [T] int64, attention_mask [T] int64
      caption        str (for detection samples: the drawn prompt)
      meta           dict: sample_id, source, image_path, original_size (h, w), image_size (h, w),
                     flipped, epoch, position
    Plain int indices use epoch 0 and the index as position (deterministic, for inspection/eval).
    train=False uses the evaluation transform and fixed-order detection prompts.
    """

    def __init__(
        self,
        sources: Sequence[GroundingSource],
        config: GLIPConfig,
        train: bool = True,
        seed: int = 0,
        scales: Sequence[int] | None = None,
        max_size: int | None = None,
        flip_prob: float = 0.5,
        num_negatives: int = DEFAULT_NUM_NEGATIVES,
        disable_shuffle: bool = False,
        max_len: int | None = None,
    ) -> None:
        if not sources:
            raise ValueError("at least one data source is needed")
        self.sources = list(sources)
        self.config = config
        self.train = train
        self.seed = int(seed)
        self.num_negatives = num_negatives
        self.disable_shuffle = disable_shuffle or not train
        self.max_len = int(max_len or config.max_query_len)
        self.transform: GLIPTransform = build_transform(config, train, scales, max_size, flip_prob)
        self._offsets = np.cumsum([0] + [len(s.samples) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def source_sizes(self) -> list[int]:
        return [len(s.samples) for s in self.sources]

    @property
    def source_weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def sampler(self, seed: int | None = None, shuffle: bool = True) -> MixedSampler:
        """The weighted stream over this dataset's sources."""
        return MixedSampler(self.source_sizes, self.source_weights, self.seed if seed is None else seed, shuffle)

    def locate(self, sample_id: int) -> tuple[GroundingSource, GroundingSample]:
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} out of range 0..{len(self) - 1}")
        source_index = bisect.bisect_right(self._offsets, sample_id) - 1
        source = self.sources[source_index]
        return source, source.samples[sample_id - self._offsets[source_index]]

    def __getitem__(self, key: int | SampleKey | Sequence[int]) -> dict[str, Any]:
        if isinstance(key, (int, np.integer)):
            key = SampleKey(int(key), self.seed, 0, int(key))
        key = SampleKey(*[int(v) for v in key])
        rng = np.random.default_rng([key.seed, key.epoch, key.position, 2])
        sample_id = key.sample_id
        for _attempt in range(MAX_IMAGE_RETRIES):
            source, sample = self.locate(sample_id)
            loaded = load_sample_image(sample)
            if not isinstance(loaded, ImageError):
                break
            log.warning("skipping %s: %s", sample.image_path, loaded.reason)
            sample_id = int(rng.integers(len(self)))  # a deterministic stand-in keeps the batch full
        else:
            raise RuntimeError(f"{MAX_IMAGE_RETRIES} unreadable images in a row (last: {sample.image_path})")
        image = loaded.image
        boxes = sample.boxes
        if sample.is_detection:
            prompt = detection_prompt(
                sample.categories or [], source.categories or [], rng,
                max_len=self.max_len, num_negatives=self.num_negatives, disable_shuffle=self.disable_shuffle,
            )  # fmt: skip
            caption, spans, boxes = prompt.caption, prompt.spans, boxes[prompt.kept]
        else:
            caption, spans = sample.caption or "", sample.spans
        if (image.width, image.height) != (sample.width, sample.height):
            # The file's stated size disagrees with the pixels (EXIF rotation, a re-saved image): boxes
            # were made for the stated size, so rescale them rather than train on shifted boxes.
            scale = np.array([image.width / sample.width, image.height / sample.height] * 2)
            boxes = boxes * scale
        transformed = self.transform(image, boxes, caption, rng)
        spans = [spans[i] for i in transformed.keep]
        tokens, positive_map, kept = caption_positive_map(caption, spans, self.max_len)
        return {
            "image": transformed.image,
            "boxes": transformed.boxes[torch.as_tensor(kept, dtype=torch.long)],
            "positive_map": positive_map,
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "caption": caption,
            "meta": {
                "sample_id": sample_id,
                "source": sample.source,
                "image_path": str(sample.image_path),
                "original_size": transformed.original_size,
                "image_size": transformed.image_size,
                "flipped": transformed.flipped,
                "epoch": key.epoch,
                "position": key.position,
            },
        }


# ---------------------------------------------------------------------------------------------- batching
@dataclass
class GroundingBatch:
    """A padded batch.

    images:         [B, 3, H, W] zero-padded (after normalisation) to multiples of size_divisibility
    image_sizes:    per image (h, w) before padding
    input_ids:      [B, T] int64, T = longest caption of the batch; attention_mask [B, T]
    boxes:          per image [G_i, 4] "+1" xyxy (resized pixels)
    positive_maps:  per image [G_i, T] binary
    """

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    boxes: list[torch.Tensor]
    positive_maps: list[torch.Tensor]
    captions: list[str]
    meta: list[dict[str, Any]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GroundingBatch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return GroundingBatch(
            move(self.images), self.image_sizes, move(self.input_ids), move(self.attention_mask),
            [move(b) for b in self.boxes], [move(p) for p in self.positive_maps], self.captions, self.meta,
        )  # fmt: skip

    def pin_memory(self) -> GroundingBatch:
        return GroundingBatch(
            self.images.pin_memory(), self.image_sizes, self.input_ids.pin_memory(),
            self.attention_mask.pin_memory(), [b.pin_memory() for b in self.boxes],
            [p.pin_memory() for p in self.positive_maps], self.captions, self.meta,
        )  # fmt: skip

    def __len__(self) -> int:
        return int(self.images.shape[0])


class GroundingCollator:
    """Pads images to the batch maximum (rounded to size_divisibility) and token tensors to the batch's T."""

    def __init__(self, size_divisibility: int = 32) -> None:
        self.size_divisibility = size_divisibility

    def __call__(self, items: Sequence[dict[str, Any]]) -> GroundingBatch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        images, image_sizes = batch_images([item["image"] for item in items], self.size_divisibility)
        num_tokens = max(int(item["input_ids"].shape[0]) for item in items)
        input_ids = torch.zeros((len(items), num_tokens), dtype=torch.long)  # [B, T], PAD id 0
        attention_mask = torch.zeros((len(items), num_tokens), dtype=torch.long)  # [B, T]
        positive_maps = []
        for i, item in enumerate(items):
            length = int(item["input_ids"].shape[0])
            input_ids[i, :length] = item["input_ids"]
            attention_mask[i, :length] = item["attention_mask"]
            padded = torch.zeros((item["positive_map"].shape[0], num_tokens), dtype=torch.float32)  # [G, T]
            padded[:, :length] = item["positive_map"]
            positive_maps.append(padded)
        return GroundingBatch(
            images, image_sizes, input_ids, attention_mask, [item["boxes"] for item in items], positive_maps,
            [item["caption"] for item in items], [item["meta"] for item in items],
        )  # fmt: skip


__all__ = [
    "FORMATS",
    "DetectionPrompt",
    "GroundingBatch",
    "GroundingCollator",
    "GroundingDataset",
    "GroundingSample",
    "GroundingSource",
    "MixedSampler",
    "SampleKey",
    "StepBatchSampler",
    "caption_positive_map",
    "detect_format",
    "detection_prompt",
    "load_sample_image",
    "load_samples",
    "load_source",
    "parse_data_arg",
]
