"""`glip-label pseudo-caption`: the teacher grounds the noun phrases of image-caption pairs.

This is the data side of the GLIP paper's self-training (Li et al., CVPR 2022, section 3.3): a teacher
grounds the noun phrases of web captions, and the student trains on these boxes. The official code
never released its caption pipeline; its free-text phrase finder is `find_noun_phrases` in
`maskrcnn_benchmark/engine/predictor_glip.py` (`glip_label.text.phrases` says what stands in for it).

The caption source is streamed (never loaded whole) and cut into fixed batches by stream position, so
the same input always gives the same batches: a resumed run, a sharded run and the Ray engine all give
records identical to one uninterrupted local run. One labeler, `PseudoCaptionLabeler` (the run engine's
interface, `glip_label.runs.labeler`), does the work of a batch for every engine.

Per pair: find the phrases (given per record, spaCy / rule-based chunks, or the classes of a
vocabulary that occur in the caption), fit the caption into the 256-token text limit (at a word
boundary, dropping phrases past the cut, said in the record), ground the phrases with the teacher, keep
every box above a low score floor (`train-student` chooses its own confidence; the paper uses 0.5).
Pairs without a phrase or without a box are written to errors.jsonl with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glip_label import __version__
from glip_label.data.captions import CaptionError, CaptionItem, detect_source_kind, iter_captions, load_caption_image
from glip_label.data.images import LoadedImage
from glip_label.io import atomic_open, atomic_write_json
from glip_label.precision import dtype_name, parse_dtype
from glip_label.records import clip_to_image
from glip_label.report import write_pseudo_caption_report
from glip_label.runs.engine import label_into_journal
from glip_label.runs.journal import RunJournal, parse_shard, read_results_in_order, read_run_key, shard_of
from glip_label.runs.labeler import ItemResult, NothingLabeledError, PredictorLabeler
from glip_label.runs.ontology import read_thresholds
from glip_label.runs.run_options import RunOptions

log = logging.getLogger(__name__)

PHRASE_MODES = ("auto", "spacy", "rule", "column", "vocab")


@dataclass
class PseudoCaptionOptions(RunOptions):
    """Everything `pseudo-caption` takes: the caption source and how to read it, where phrases come from, the box
    floor; the teacher, engine, resume, tta and report options are `RunOptions`'."""

    source: str
    out: Path
    phrases: str = "auto"
    phrases_column: str | None = None
    classes_file: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    image_root: str | None = None
    split: str = "train"
    box_floor: float = 0.05
    batch_size: int = 4
    export_images: bool = False

    def tta_options(self):
        """The test-time augmentation settings (glip_label.tta), or None without --tta."""
        from glip_label.tta import TTAOptions

        return TTAOptions(scales=tuple(self.tta_scales), merge=self.tta_merge) if self.tta else None

    def phrase_thresholds(self) -> dict[str, float] | None:
        """--thresholds as {lower-cased class name: threshold}: a phrase whose text is a class name keeps
        only boxes scoring at least that class's threshold; other phrases keep the box floor."""
        if not self.thresholds:
            return None
        return {name.strip().lower(): value for name, value in read_thresholds(self.thresholds).items()}

    def validate(self) -> None:
        if self.phrases not in PHRASE_MODES:
            raise ValueError(f"--phrases must be one of {', '.join(PHRASE_MODES)}, got {self.phrases!r}")
        if self.phrases == "column" and not self.phrases_column:
            raise ValueError("--phrases column needs --phrases-column NAME")
        if self.phrases == "vocab" and not self.classes_file:
            raise ValueError("--phrases vocab needs --classes-file FILE")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, got {self.engine!r}")
        if not 0.0 <= self.box_floor <= 1.0:
            raise ValueError(f"--box-floor must be in [0, 1], got {self.box_floor}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.model is None and not self.random_init:
            raise ValueError("no --model given (pass --random-init to run with an untrained model)")
        if self.tta and self.engine != "local":
            raise ValueError("--tta runs with --engine local only")
        self.tta_options()


@dataclass
class PseudoCaptionSummary:
    out: Path
    pairs: int
    grounded: int
    skipped_kinds: Counter[str]  # skipped pairs by the `kind` of their error
    boxes: int
    seconds: float
    pairs_per_second: float

    @property
    def skipped(self) -> int:
        return sum(self.skipped_kinds.values())


# ------------------------------------------------------------------------------------------- phrases


class PhraseFinder:
    """Phrases with spans into the caption, by the chosen mode; picklable for Ray actors."""

    def __init__(self, mode: str, class_names: Sequence[str] | None = None) -> None:
        self.mode = mode
        self.class_names = list(class_names or [])
        self._chunker = None

    @property
    def name(self) -> str:
        if self.mode in ("column", "vocab"):
            return self.mode
        return self._get_chunker().name

    def _get_chunker(self):
        if self._chunker is None:
            from glip_label.text.chunkers import get_chunker

            self._chunker = get_chunker(self.mode)
        return self._chunker

    def __call__(self, item: CaptionItem) -> list:
        from glip_label.text.phrases import Phrase, vocabulary_phrases

        if self.mode == "column" or (item.spans is not None and self.mode == "auto"):
            if not item.spans:
                return []
            return [Phrase(item.caption[s[0][0] : s[0][1]], s[0][0], s[0][1]) for s in item.spans]
        if self.mode == "vocab":
            return vocabulary_phrases(item.caption, self.class_names)
        return list(self._get_chunker()(item.caption))

    def __getstate__(self) -> dict:
        return {"mode": self.mode, "class_names": self.class_names, "_chunker": None}


# ------------------------------------------------------------------------------------------- one batch


class PseudoCaptionLabeler(PredictorLabeler):
    """The run engine's labeler for pseudo-caption: picklable options, the teacher loaded by `load`."""

    def __init__(self, options: PseudoCaptionOptions, finder: PhraseFinder, predictor=None) -> None:
        super().__init__(options, predictor)
        self.finder = finder
        self.tta, self.thresholds = options.tta_options(), options.phrase_thresholds()

    def label_batch(self, batch: Sequence[tuple[str, CaptionItem | CaptionError]]) -> list[ItemResult]:
        return label_batch(self.predictor, self.finder, batch, self.options.box_floor, self.options.max_pixels,
                           self.tta, self.thresholds)


def label_batch(predictor, finder: PhraseFinder, entries: Sequence[tuple[str, CaptionItem | CaptionError]],
                box_floor: float, max_pixels: int | None, tta=None,
                thresholds: dict[str, float] | None = None) -> list[ItemResult]:
    """Ground one batch. entries: (journal key, item); returns one result per entry, in order.

    tta: glip_label.tta.TTAOptions to ground every pair under test-time augmentation; thresholds:
    {lower-cased phrase: minimum score} for phrases that are calibrated class names.

    A failed entry's error is {"id", "reason", "kind"}.
    """
    from glip_label.text.phrases import fit_caption, phrases_to_prompt

    results: list[ItemResult | None] = [None] * len(entries)
    ready: list[tuple[int, CaptionItem, LoadedImage, Any, str | None]] = []
    for i, (key, item) in enumerate(entries):
        if isinstance(item, CaptionError):
            results[i] = _error(key, item.id, item.reason, "bad_record")
            continue
        phrases = finder(item)
        if not phrases:
            results[i] = _error(key, item.id, "no noun phrase found in the caption", "no_phrase")
            continue
        caption, phrases, note = fit_caption(item.caption, phrases)
        if not phrases:
            results[i] = _error(key, item.id, f"no phrase left after fitting the token limit ({note})", "too_long")
            continue
        loaded = load_caption_image(item, max_pixels=max_pixels)
        if not isinstance(loaded, LoadedImage):
            results[i] = _error(key, item.id, loaded.reason, getattr(loaded, "kind", "image"))
            continue
        ready.append((i, item, loaded, phrases_to_prompt(caption, phrases), note))
    if ready:
        if tta is not None:
            from glip_label.tta import predict_grounding_tta

            detections = predict_grounding_tta(predictor, [r[2].image for r in ready], [r[3] for r in ready], tta,
                                               box_floor)
        else:
            detections = predictor.predict_grounding([r[2].image for r in ready], [r[3] for r in ready], box_floor)
        for (i, item, loaded, prompt, note), det in zip(ready, detections, strict=True):
            key = entries[i][0]
            if thresholds and len(det):
                floors = np.array([thresholds.get(p.strip().lower(), box_floor) for p in prompt.phrases])
                det = det.select(det.scores >= floors[det.labels])
            if len(det) == 0:
                results[i] = _error(key, item.id, f"no box scored above the floor {box_floor}", "no_box")
                continue
            w, h = loaded.width, loaded.height
            det = clip_to_image(det, w, h)
            if len(det) == 0:
                results[i] = _error(key, item.id, "every box was degenerate after clipping to the image", "no_box")
                continue
            regions = [
                {"bbox": [float(v) for v in box], "phrase": prompt.phrases[int(label)],
                 "tokens_positive": [list(span) for span in prompt.spans[int(label)]], "score": float(score),
                 "phrase_id": int(label)}
                for box, label, score in zip(det.boxes, det.labels, det.scores, strict=True)
            ]
            record = {"id": item.id, "file_name": loaded.file_name, "width": w, "height": h,
                      "caption": prompt.text, "regions": regions}
            if note:
                record["note"] = note
            if item.meta:
                record["meta"] = item.meta
            results[i] = ItemResult(key, record=record)
    return results  # type: ignore[return-value]


def _error(key: str, item_id: str, reason: str, kind: str) -> ItemResult:
    return ItemResult(key, error={"id": item_id, "reason": reason, "kind": kind})


# ------------------------------------------------------------------------------------------- the stream


def keyed_batches(options: PseudoCaptionOptions) -> Iterator[list[tuple[str, CaptionItem | CaptionError]]]:
    """The source as fixed batches of (key, item); key = stream position, so duplicates stay distinct."""
    shard = parse_shard(options.shard) if options.shard else None
    items = _source_items(options)
    batch: list[tuple[str, CaptionItem | CaptionError]] = []
    for position, item in enumerate(items):
        if shard is not None and shard_of(item.id, shard[1]) != shard[0]:
            continue
        batch.append((f"{position:012d}", item))
        if len(batch) == options.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _source_items(options: PseudoCaptionOptions) -> Iterator[CaptionItem | CaptionError]:
    return iter_captions(options.source, options.image_column, options.caption_column,
                         options.phrases_column if options.phrases == "column" or options.phrases_column else None,
                         split=options.split, image_root=options.image_root)


def check_source(options: PseudoCaptionOptions) -> None:
    """Fail before the model loads when the corpus cannot be read at all: a path that is not there, a layout not
    recognised, a csv without the caption column, an ImageFolder without the split, a json that is not COCO
    captions (the first record is read; hub datasets are left to the run, which may have to download them)."""
    if detect_source_kind(options.source) != "hf" or Path(os.path.expanduser(str(options.source))).exists():
        next(_source_items(options), None)


def _class_names(options: PseudoCaptionOptions) -> list[str] | None:
    if options.classes_file is None:
        return None
    path = Path(options.classes_file)
    if not path.exists():
        raise FileNotFoundError(f"classes file {path} does not exist")
    return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip() and not x.startswith("#")]


def run_key_for(options: PseudoCaptionOptions, finder: PhraseFinder, weights: str | None) -> dict[str, Any]:
    return {
        "tool": "pseudo-caption",
        "source": str(options.source),
        "model": options.model if not options.random_init else f"random-init(seed={options.seed})",
        "weights_file": weights,
        "config": options.config,
        "phrases": finder.name,
        "classes": finder.class_names,
        "box_floor": options.box_floor,
        "batch_size": options.batch_size,
        "dtype": dtype_name(parse_dtype(options.dtype)),  # "half" and "fp16" are one run
        "shard": options.shard,
        "max_pixels": options.max_pixels,
        **({"tta": options.tta_options().to_dict()} if options.tta else {}),
        **({"thresholds": options.phrase_thresholds()} if options.thresholds else {}),
    }


def pseudo_caption(options: PseudoCaptionOptions, predictor=None, progress: bool = True,
                   on_batch: Callable[[int], None] | None = None) -> PseudoCaptionSummary:
    """Ground a caption corpus into `options.out` (see the module docstring)."""
    options.validate()
    finder = PhraseFinder(options.phrases, _class_names(options))
    check_source(options)
    out = Path(options.out)
    started = time.perf_counter()
    labeler = PseudoCaptionLabeler(options, finder, predictor)
    if options.engine == "ray":
        weights = None if options.random_init else options.model
    else:
        labeler.load()
        weights = labeler.predictor.source
    journal = RunJournal(out, run_key_for(options, finder, weights),
                         shard_size=max(options.flush_every, options.batch_size), resume=options.resume)
    keys: list[str] = []
    try:
        done = journal.done_ids()
        from tqdm.auto import tqdm

        bar = tqdm(unit="pair", desc="pseudo-caption", disable=not progress, dynamic_ncols=True)

        def todo() -> Iterator[list[tuple[str, CaptionItem | CaptionError]]]:
            for batch in keyed_batches(options):
                keys.extend(k for k, _ in batch)
                if all(k in done for k, _ in batch):
                    bar.update(len(batch))
                    continue
                yield batch

        label_into_journal(labeler, todo(), options, journal, done, bar, on_batch)
    finally:
        journal.close()
    seconds = time.perf_counter() - started
    summary = write_outputs(out, keys, options, seconds)
    if options.report:
        write_pseudo_caption_report(out, _recorded_root(_image_source(options)))
    if summary.grounded == 0:
        raise NothingLabeledError(_nothing_grounded(summary, options))
    return summary


def _nothing_grounded(summary: PseudoCaptionSummary, options: PseudoCaptionOptions) -> str:
    """Why a run grounded no pair: an empty corpus (or shard), or every pair skipped, with the commonest reasons."""
    where = f"shard {options.shard} of {options.source}" if options.shard else str(options.source)
    if summary.pairs == 0:
        return f"no image-caption pairs found in {where}"
    reasons = ", ".join(f"{kind} {n}" for kind, n in summary.skipped_kinds.most_common(3))
    return (f"none of the {summary.pairs} pairs of {where} could be grounded (errors: {reasons}); "
            f"see {summary.out / 'errors.jsonl'}")


# ------------------------------------------------------------------------------------------- final files


def _recorded_root(images: dict[str, Any]) -> str | None:
    """run.json's ``image_root``: the folder file names are relative to; None for streamed sources."""
    from glip_label.data.image_refs import STREAMED_KINDS

    if images["kind"] in STREAMED_KINDS:
        return None
    if images["image_root"]:
        return images["image_root"]
    source = Path(images["source"])
    return str(source if source.is_dir() else source.parent)


def _image_source(options: PseudoCaptionOptions) -> dict[str, Any]:
    """run.json's record of the caption source, read by `glip_label.data.image_refs.image_resolver` to find
    the images of webdataset shards and Hugging Face datasets (whose file names are not files on disk)."""
    from glip_label.data.image_refs import image_source_spec

    return image_source_spec(options.source, options.image_root, options.split, options.image_column,
                             options.caption_column)


def export_grounded_images(out: Path, keys: Sequence[str], images: dict[str, Any]) -> dict[str, int]:
    """``--export-images``: OUT/images/<file_name> for every grounded pair, the original bytes."""
    from glip_label.data.image_refs import ImageResolver, export_images

    root = _recorded_root(images)
    resolver = ImageResolver(Path(root)) if root else ImageResolver(spec=images, origin=str(out / "run.json"))
    names = (r["record"]["file_name"] for r in read_results_in_order(out, keys) if r["ok"])
    return export_images(resolver, names, out / "images")


def write_outputs(out: Path, keys: Sequence[str], options: PseudoCaptionOptions,
                  seconds: float = 0.0) -> PseudoCaptionSummary:
    """grounding.odvg.jsonl, grounding.mdetr.json, errors.jsonl, run.json; streamed, each file atomic."""
    from glip_label.formats.mdetr import MdetrStreamWriter
    from glip_label.formats.odvg import odvg_grounding_record

    grounded = boxes = 0
    skipped_kinds: Counter[str] = Counter()
    mdetr_info = {"description": "pseudo grounding boxes written by glip-label pseudo-caption",
                  "version": __version__, "model": options.model, "box_floor": options.box_floor}
    with (
        atomic_open(out / "grounding.odvg.jsonl") as odvg,
        atomic_open(out / "errors.jsonl") as errors,
        MdetrStreamWriter(out / "grounding.mdetr.json", info=mdetr_info) as mdetr,
    ):
        for result in read_results_in_order(out, keys):
            if not result["ok"]:
                errors.write(json.dumps(result["error"], ensure_ascii=False) + "\n")
                skipped_kinds[result["error"].get("kind", "error")] += 1
                continue
            rec = result["record"]
            grounded += 1
            boxes += len(rec["regions"])
            line = odvg_grounding_record(rec["file_name"], rec["height"], rec["width"], rec["caption"], rec["regions"])
            line["id"] = rec["id"]
            if "note" in rec:
                line["note"] = rec["note"]
            odvg.write(json.dumps(line, ensure_ascii=False) + "\n")
            fields = {"pair_id": rec["id"], **({"note": rec["note"]} if "note" in rec else {})}
            mdetr.add(rec["file_name"], rec["height"], rec["width"], rec["caption"], rec["regions"], fields)
    summary = PseudoCaptionSummary(out, len(keys), grounded, skipped_kinds, boxes, seconds,
                                   len(keys) / seconds if seconds > 0 else 0.0)
    images = _image_source(options)
    files = {"odvg": "grounding.odvg.jsonl", "mdetr": "grounding.mdetr.json", "errors": "errors.jsonl"}
    if options.export_images:
        files["images"] = "images/"
        images["exported"] = export_grounded_images(out, keys, images)
    atomic_write_json(out / "run.json", {
        "version": __version__,
        "image_root": _recorded_root(images),
        "images": images,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "run_key": read_run_key(out),
        "counts": {"pairs": len(keys), "grounded": grounded, "skipped": summary.skipped, "boxes": boxes},
        "timings": {"seconds": seconds, "pairs_per_second": summary.pairs_per_second},
        "files": files,
    })
    return summary
