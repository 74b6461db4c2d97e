"""`glip-label annotate`: label an image folder with GLIP and write COCO / ODVG / YOLO / Label Studio files.

Two phases, so that nothing is lost on interruption and the final files never depend on where a run
stopped: (1) labeling streams one JSON record per image into the run journal (`parts/`), (2) the final
files are written from the journal in image order. Batches are formed over the full, fixed image list
(not over what is left to do), so a resumed run pads and batches every image exactly as an uninterrupted
run would, and gives byte-identical annotation files.

Labeling runs on the shared run engine (`glip_label.runs.engine`): `AnnotateLabeler` labels one batch;
`--engine local` runs it here (images decoded by prefetch threads), `--engine ray` in long-lived Ray actors
(each decodes its batches' images), with the same batches and so the same records and files.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glip_label import __version__
from glip_label.data.image_discovery import discover_images
from glip_label.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    LoadedImage,
    iter_images,
    load_image,
)
from glip_label.io import atomic_open, atomic_write_json, atomic_write_text, write_json_array
from glip_label.records import Detections, ImageRecord, clip_to_image
from glip_label.runs.engine import ItemResult, PredictorLabeler, RayOptions, run_batches
from glip_label.runs.journal import RunJournal, merge_run_dirs, parse_shard, read_run_key, shard_items

log = logging.getLogger(__name__)

FORMATS = ("coco", "odvg", "yolo", "labelstudio")
DEFAULT_FORMATS = ("coco", "odvg")


# ---------------------------------------------------------------------------------------------- ontology


@dataclass
class Ontology:
    """What to ask the model (phrases) and what to write (categories).

    Several phrases may map to one category ("man", "woman" -> person); per-category thresholds override
    the global one.
    """

    categories: list[str]
    phrases: list[str]
    phrase_category: list[int]
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Ontology:
        names = _unique_names(names, "class names")
        return cls(list(names), list(names), list(range(len(names))))

    @classmethod
    def from_mapping(cls, classes: dict[str, Any], where: str) -> Ontology:
        categories, phrases, phrase_category, thresholds = [], [], [], {}
        for name, spec in classes.items():
            name = str(name).strip()
            if not name:
                raise ValueError(f"{where}: empty class name")
            if spec is None:
                prompts: list[str] = [name]
            elif isinstance(spec, str):
                prompts = [spec]
            elif isinstance(spec, list):
                prompts = [str(p) for p in spec]
            elif isinstance(spec, dict):
                unknown = set(spec) - {"prompts", "threshold"}
                if unknown:
                    raise ValueError(f"{where}: class {name!r} has unknown keys {sorted(unknown)} "
                                     "(allowed: prompts, threshold)")
                prompts = [str(p) for p in spec.get("prompts", [name])]
                if "threshold" in spec:
                    value = float(spec["threshold"])
                    if not 0.0 <= value <= 1.0:
                        raise ValueError(f"{where}: threshold of {name!r} must be in [0, 1], got {value}")
                    thresholds[name] = value
            else:
                raise ValueError(f"{where}: class {name!r} must map to a list of prompts or a mapping")
            if not prompts:
                raise ValueError(f"{where}: class {name!r} has no prompts")
            categories.append(name)
            for prompt in prompts:
                phrases.append(prompt.strip())
                phrase_category.append(len(categories) - 1)
        _unique_names(categories, f"{where} classes")
        _unique_names(phrases, f"{where} prompts")
        return cls(categories, phrases, phrase_category, thresholds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unique_names(names: Sequence[str], what: str) -> list[str]:
    cleaned = [n.strip() for n in names]
    if not cleaned or any(not n for n in cleaned):
        raise ValueError(f"{what}: empty name in {list(names)!r}")
    dup = [n for n, c in Counter(cleaned).items() if c > 1]
    if dup:
        raise ValueError(f"{what}: duplicated names {dup}")
    return cleaned


def load_ontology(prompt: str | None = None, classes_file: str | Path | None = None,
                  ontology: str | Path | None = None) -> Ontology:
    """Exactly one of: a "a. b. c." prompt, a classes file (one name per line), an ontology yaml/json."""
    given = [x is not None for x in (prompt, classes_file, ontology)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --prompt, --classes-file or --ontology")
    if prompt is not None:
        return Ontology.from_names([p for p in prompt.split(".") if p.strip()])
    if classes_file is not None:
        path = Path(classes_file)
        if not path.exists():
            raise FileNotFoundError(f"classes file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return Ontology.from_names([line for line in lines if line and not line.startswith("#")])
    path = Path(ontology)  # type: ignore[arg-type]
    if not path.exists():
        raise FileNotFoundError(f"ontology file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    classes = data.get("classes", data) if isinstance(data, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{path}: expected a mapping 'classes: {{name: {{prompts: [...], threshold: 0.4}}}}'")
    return Ontology.from_mapping(classes, str(path))


# ---------------------------------------------------------------------------------------------- options


@dataclass
class AnnotateOptions:
    source: str
    out: Path
    prompt: str | None = None
    classes_file: str | None = None
    ontology: str | None = None
    model: str | None = "glip-t"
    config: str | list[str] | None = None  # a preset, a yaml, or yamls merged in order
    random_init: bool = False
    seed: int = 0
    threshold: float = 0.35
    nms_iou: float | None = None
    agnostic_nms: bool = False
    max_dets: int = 100
    min_box_size: float = 0.0
    formats: tuple[str, ...] = DEFAULT_FORMATS
    category_id_base: int = 1
    save_vis: int = 0
    batch_size: int = 1
    workers: int = 2
    device: str = "cpu"
    dtype: str = "fp32"
    resume: bool = False
    shard: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    recursive: bool = True
    flush_every: int = 64
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int = 1
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0
    torch_threads: int | None = None
    thresholds: str | None = None
    tta: bool = False
    tta_merge: str = "nms"
    tta_scales: tuple[float, ...] = (0.8, 1.0, 1.2)
    report: bool = False

    def validate(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, got {self.engine!r}")
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"--nms-iou must be in (0, 1], got {self.nms_iou}")
        if self.batch_size < 1 or self.max_dets < 1:
            raise ValueError("--batch-size and --max-dets must be >= 1")
        if self.model is None and not self.random_init:
            raise ValueError("no --model given (pass --random-init to label with an untrained model)")
        if self.tta:
            self.tta_options()

    def tta_options(self):
        """The test-time augmentation settings (glip_label.tta), or None without --tta."""
        from glip_label.tta import TTAOptions

        return TTAOptions(scales=tuple(self.tta_scales), merge=self.tta_merge, max_detections=self.max_dets) \
            if self.tta else None


@dataclass
class AnnotateSummary:
    out: Path
    images: int
    labeled: int
    errors: int
    empty: int
    boxes_per_class: dict[str, int]
    seconds: float
    images_per_second: float
    files: dict[str, str]


# ---------------------------------------------------------------------------------------------- labeling


def postprocess_for_ontology(det: Detections, ontology: Ontology, options: AnnotateOptions,
                             image_size: tuple[int, int] | None = None) -> Detections:
    """Phrase labels -> category labels, clip to the image, per-class thresholds, minimum size, NMS, cap.

    Boxes are clipped to the image and degenerate ones dropped (`clip_to_image`).
    """
    if image_size is not None:
        det = clip_to_image(det, *image_size)
    categories = np.asarray(ontology.phrase_category, dtype=np.int64)[det.labels] if len(det) else det.labels
    out = Detections(det.boxes, det.scores, categories, ontology.categories)
    limits = np.array([ontology.thresholds.get(name, options.threshold) for name in ontology.categories])
    keep = out.scores >= limits[out.labels] if len(out) else np.zeros(0, dtype=bool)
    if options.min_box_size > 0 and len(out):
        wh = out.boxes[:, 2:] - out.boxes[:, :2] + 1
        keep &= (wh >= options.min_box_size).all(axis=1)
    out = out.select(keep)
    many_prompts = len(ontology.phrases) > len(ontology.categories)
    nms_iou = options.nms_iou if options.nms_iou is not None else (0.6 if many_prompts or options.agnostic_nms
                                                                   else None)
    from glip_label.predictor import filter_detections

    return filter_detections(out, 0.0, nms_iou, options.agnostic_nms, options.max_dets)


def _record(item: LoadedImage, det: Detections) -> dict[str, Any]:
    return {
        "file_name": item.file_name,
        "width": item.width,
        "height": item.height,
        "boxes": det.boxes.tolist(),
        "scores": det.scores.tolist(),
        "labels": det.labels.tolist(),
    }


class AnnotateLabeler(PredictorLabeler):
    """The run engine's labeler for annotate: a batch of images (names or decoded) -> one result per image."""

    def __init__(self, options: AnnotateOptions, ontology: Ontology, root: Path, predictor=None) -> None:
        super().__init__(options, predictor)
        self.ontology = ontology
        self.root = Path(root)

    def label_batch(self, batch: Sequence[str | LoadedImage | ImageError]) -> list[ItemResult]:
        """Names are decoded here (Ray actors); the local engine passes images its threads decoded."""
        items = [load_image(self.root, x, self.options.max_pixels) if isinstance(x, str) else x for x in batch]
        good = [x for x in items if isinstance(x, LoadedImage)]
        predict = _predict_fn(self.predictor, self.options)
        dets = predict([x.image for x in good], self.ontology.phrases, threshold=_min_threshold(
            self.options, self.ontology), batch_size=self.options.batch_size) if good else []
        found = dict(zip((x.file_name for x in good), dets, strict=True))
        results = []
        for item in items:
            if isinstance(item, ImageError):
                results.append(ItemResult(item.file_name, error=item.to_dict()))
                continue
            det = postprocess_for_ontology(found[item.file_name], self.ontology, self.options,
                                           (item.width, item.height))
            results.append(ItemResult(item.file_name, record=_record(item, det)))
        return results


def _batches(names: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(names), size):
        yield list(names[start : start + size])


def run_key_for(options: AnnotateOptions, ontology: Ontology, root: Path, predictor_source: str | None) -> dict:
    """The options that decide the labels; resuming with different ones is refused."""
    return {
        "tool": "annotate",
        "model": options.model if not options.random_init else f"random-init(seed={options.seed})",
        "weights_file": predictor_source,
        "config": options.config,
        "ontology": ontology.to_dict(),
        "threshold": options.threshold,
        "nms_iou": options.nms_iou,
        "agnostic_nms": options.agnostic_nms,
        "max_dets": options.max_dets,
        "min_box_size": options.min_box_size,
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "image_root": str(root),
        "shard": options.shard,
        "max_pixels": options.max_pixels,
        **({"tta": options.tta_options().to_dict()} if options.tta else {}),
    }


def annotate(options: AnnotateOptions, predictor=None, progress: bool = True,
             on_batch: Callable[[int], None] | None = None) -> AnnotateSummary:
    """Label `options.source` into `options.out` (see the module docstring). Returns the run's summary."""
    options.validate()
    ontology = load_ontology(options.prompt, options.classes_file, options.ontology)
    if options.thresholds:
        from glip_label.runs.calibrate import apply_thresholds, read_thresholds

        ontology = apply_thresholds(ontology, read_thresholds(options.thresholds), options.thresholds)
    root, names = discover_images(options.source, recursive=options.recursive)
    if options.shard:
        names = shard_items(names, parse_shard(options.shard))
    if not names:
        raise FileNotFoundError(f"no images found in {options.source} (extensions: jpg, jpeg, png, bmp, webp, tif)")
    labeler = AnnotateLabeler(options, ontology, root, predictor)
    if options.engine == "local":
        labeler.load()
        weights = labeler.predictor.source
    else:  # the model loads in the actors; the run key names the same file the local engine would load
        from glip_label.weights import resolve_weights

        weights = None if options.random_init else str(resolve_weights(options.model)[0])
    out = Path(options.out)
    started = time.perf_counter()
    key = run_key_for(options, ontology, root, weights)
    journal = RunJournal(out, key, shard_size=max(options.flush_every, options.batch_size), resume=options.resume)
    try:
        done = journal.done_ids()
        todo_batches = [b for b in _batches(names, options.batch_size) if not all(n in done for n in b)]
        todo = [n for b in todo_batches for n in b]
        bar = _progress(len(names), len(names) - len(todo), progress)

        def decoded_batches() -> Iterator[list[LoadedImage | ImageError]]:
            loaded = iter_images(root, todo, num_workers=options.workers, prefetch=max(8, 2 * options.batch_size),
                                 max_pixels=options.max_pixels)
            for batch_names in todo_batches:
                yield [next(loaded) for _ in batch_names]

        batches = decoded_batches() if options.engine == "local" else iter(todo_batches)
        ray = RayOptions(options.ray_address, options.ray_actors, options.ray_cpus_per_actor,
                         options.ray_gpus_per_actor)
        for results in run_batches(labeler, batches, options.engine, ray):
            for result in results:
                if result.key not in done:
                    journal.add(result.key, record=result.record, error=result.error)
            bar.update(len(results))
            if on_batch is not None:
                on_batch(len(results))
        bar.close()
        journal.flush()
    finally:
        journal.close()
    seconds = time.perf_counter() - started
    summary = write_outputs(out, names, ontology, root, options, labeling_seconds=seconds)
    if options.report:
        from glip_label.report import write_annotate_report

        summary.files["report"] = write_annotate_report(out, names, ontology, root).name
    return summary


def _predict_fn(predictor, options: AnnotateOptions) -> Callable[..., list[Detections]]:
    """predictor.predict, or its test-time-augmented version with --tta (same call signature)."""
    tta = options.tta_options()
    if tta is None:
        return predictor.predict
    from glip_label.tta import predict_tta

    def predict(images, prompt, threshold: float, batch_size: int) -> list[Detections]:
        return predict_tta(predictor, images, prompt, tta, threshold=threshold, batch_size=batch_size)

    return predict


def _min_threshold(options: AnnotateOptions, ontology: Ontology) -> float:
    return min([options.threshold, *ontology.thresholds.values()])


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="annotate", disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- final files


def iter_records(out: Path, names: Sequence[str]) -> Iterator[dict[str, Any]]:
    journal = RunJournal.reopen(out)
    try:
        yield from journal.results_in_order(names)
    finally:
        journal.close()


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
        for result in iter_records(out, names):
            if result["ok"]:
                yield _image_record(result["record"], categories)

    counts: Counter[str] = Counter()
    errors = labeled = empty = 0
    with atomic_open(out / "errors.jsonl") as fh:
        for result in iter_records(out, names):
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
        raise NoImageReadError(f"none of the {len(names)} images could be read; see {out / 'errors.jsonl'}")
    return summary


class NoImageReadError(RuntimeError):
    """Every input failed to load: the CLI exits non-zero."""


def merge(shard_dirs: Sequence[Path], out: Path, options: AnnotateOptions | None = None) -> AnnotateSummary:
    """Join `--shard i/N` outputs into one run folder and write its final files."""
    merge_run_dirs(shard_dirs, out)
    key = read_run_key(out) or {}
    ontology = Ontology(**key["ontology"])
    journal = RunJournal.reopen(out)
    try:
        names = sorted(r["id"] for r in journal.iter_results())
    finally:
        journal.close()
    if options is None:
        options = AnnotateOptions(source=key["image_root"], out=out, model=key.get("model"),
                                  threshold=key["threshold"], nms_iou=key["nms_iou"],
                                  agnostic_nms=key["agnostic_nms"], max_dets=key["max_dets"],
                                  min_box_size=key["min_box_size"])
    return write_outputs(out, names, ontology, Path(key["image_root"]), options)
