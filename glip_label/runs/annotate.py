"""`glip-label annotate`: label an image folder with GLIP and write COCO / ODVG / YOLO / Label Studio files.

Two phases, so that nothing is lost on interruption and the final files never depend on where a run
stopped: (1) labeling streams one JSON record per image into the run journal (`parts/`), (2) the final
files are written from the journal in image order. Batches are formed over the full, fixed image list
(not over what is left to do), so a resumed run pads and batches every image exactly as an uninterrupted
run would, and gives byte-identical annotation files.

Labeling runs on the shared run engine (`glip_label.runs.engine`): `AnnotateLabeler`
(`glip_label.runs.annotate_labeler`) labels one batch;
`--engine local` runs it here (images decoded by prefetch threads), `--engine ray` in long-lived Ray actors
(each decodes its batches' images), with the same batches and so the same records and files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from glip_label.data.image_discovery import IMAGE_EXTENSIONS, discover_images
from glip_label.data.images import ImageError, LoadedImage, iter_images
from glip_label.precision import dtype_name, parse_dtype
from glip_label.report import write_annotate_report
from glip_label.runs.annotate_labeler import AnnotateLabeler
from glip_label.runs.annotate_options import AnnotateOptions, AnnotateSummary
from glip_label.runs.annotate_outputs import write_outputs
from glip_label.runs.engine import label_into_journal
from glip_label.runs.journal import RunJournal, merge_run_dirs, parse_shard, read_run_key, shard_items
from glip_label.runs.ontology import Ontology, apply_thresholds, load_ontology, read_thresholds

log = logging.getLogger(__name__)


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
        "dtype": dtype_name(parse_dtype(options.dtype)),  # "half" and "fp16" are one run
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
        ontology = apply_thresholds(ontology, read_thresholds(options.thresholds), options.thresholds)
    root, names = discover_images(options.source, recursive=options.recursive)
    if not names:
        extensions = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise FileNotFoundError(f"no images found in {options.source} (extensions: {extensions})")
    if options.shard:
        found, names = len(names), shard_items(names, parse_shard(options.shard))
        if not names:
            raise FileNotFoundError(f"shard {options.shard} of the {found} images in {options.source} is empty "
                                    "(more shards than images)")
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
        label_into_journal(labeler, batches, options, journal, done, bar, on_batch)
    finally:
        journal.close()
    seconds = time.perf_counter() - started
    summary = write_outputs(out, names, ontology, root, options, labeling_seconds=seconds)
    if options.report:
        summary.files["report"] = write_annotate_report(out, names, ontology, root).name
    return summary


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="annotate", disable=not enabled, dynamic_ncols=True)


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
