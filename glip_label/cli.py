"""The `glip-label` command line. Each command parses options and calls one library function, nothing more."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="glip-label",
    help="Label images and caption corpora with the GLIP grounded detector, and train better students on them.\n\n"
    "Weights: --model takes a hub preset (glip-t, glip-t-c, glip-t-b, glip-t-a, glip-l; downloaded once from "
    "GLIPModel/GLIP) or a local .pth/.safetensors file.\n\n"
    "Every command lets glibc's malloc keep large freed blocks for the next image (faster on CPU); set "
    "GLIP_LABEL_DEFAULT_MALLOC=1 to keep the default allocator.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub preset (glip-t, glip-t-c, glip-t-b, glip-t-a, glip-l) or a local "
                 ".pth/.safetensors checkpoint. [dim]e.g. --model glip-t or --model runs/student/model_final.pth[/]"),
]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option("--config", "-c", metavar="PRESET|YAML",
                 help="Architecture: a preset (glip-t, glip-t-a, glip-l, glip-tiny) or an official GLIP yaml; "
                 "repeat it to merge a task yaml over its base, as the official tools do "
                 "(--config glip_Swin_T_O365_GoldG.yaml --config odinw/CottontailRabbits.yaml). Default: from the "
                 "hub preset, the checkpoint's own metadata, or recognised from the checkpoint's keys and shapes."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32 (default, exact), fp16 (T4/V100 GPUs) or bf16 (A100/H100): half "
                                       "precision, near-identical boxes; runs on CPU too, but is fast on GPUs only.")]
EngineOpt = Annotated[str, typer.Option(help="local, or ray (a pool of long-lived Ray actors; same records as "
                                        "local).")]
RayAddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address ('auto' after 'ray start'); default: "
                                                   "a local instance.")]
RayActorsOpt = Annotated[int, typer.Option(help="Model actors in the Ray pool (each loads the model once).")]
RayCpusOpt = Annotated[float, typer.Option(help="CPUs per actor (fractions allowed).")]
RayGpusOpt = Annotated[float, typer.Option(help="GPUs per actor. [dim]e.g. 1 with --ray-actors 8 on an 8-GPU node[/]")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch threads per process (equal counts give bit-identical "
                                                "records across engines).")]
ThresholdsOpt = Annotated[Path | None, typer.Option(help="thresholds.json written by 'glip-label calibrate': a score "
                                                   "threshold per class. [dim]e.g. runs/cal/thresholds.json[/]")]
TTAOpt = Annotated[bool, typer.Option(help="Test-time augmentation as the official GLIP test code offers it: every "
                                      "image at several scales and mirrored, boxes merged per class (slower: one "
                                      "forward pass per view).")]
TTAMergeOpt = Annotated[str, typer.Option(help="How --tta merges the views' boxes: nms (class-wise, official) or wbf "
                                          "(weighted box fusion).")]
TTAScalesOpt = Annotated[str, typer.Option(help="--tta scales, as factors of the model's test size.")]
ReportOpt = Annotated[bool, typer.Option(help="Also write OUT/report.html: boxes and score histograms per class, the "
                                         "highest- and lowest-scoring boxes as crops, the errors (one file, opens "
                                         "offline in any browser).")]


def _tta_scales(text: str) -> tuple[float, ...]:
    from glip_label.tta import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        _fail(str(exc))


@app.callback()
def _startup() -> None:
    # Large freed tensors are kept for reuse instead of being unmapped and faulted in again on every image
    # (glip_label.runtime; set GLIP_LABEL_DEFAULT_MALLOC=1 to keep the default allocator).
    from glip_label.runtime import keep_freed_memory

    keep_freed_memory()


def _setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _config_arg(config: list[str] | None) -> str | list[str] | None:
    """--config as load_model takes it: None, one preset/yaml, or yamls to merge in order."""
    if not config:
        return None
    return config[0] if len(config) == 1 else list(config)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, however narrow the terminal
    raise typer.Exit(code=2)


def _check_device_and_dtype(device: str | None, dtype: str | None = None, amp: str | None = None) -> None:
    """--device / --dtype / --amp checked before any work: one error line and exit 2 (e.g. cuda without a GPU)."""
    from glip_label.precision import check_device, parse_amp, parse_dtype

    try:
        check_device(device)
        if dtype is not None:
            parse_dtype(dtype)
        parse_amp(amp)
    except ValueError as exc:
        _fail(str(exc))


@app.command(
    epilog="Examples:\n\n"
    "  glip-label annotate ./images --prompt 'person. bicycle.' --out runs/people\n\n"
    "  glip-label annotate ./images --classes-file prompts/coco80.txt --format coco,yolo --save-vis 20\n\n"
    "  glip-label annotate ./images --ontology prompts/ontology-example.yaml --agnostic-nms\n\n"
    "  glip-label annotate 'data/**/*.jpg' --prompt 'car.' --shard 0/4 --out runs/cars-0   (then: glip-label merge)\n\n"
    "  glip-label annotate ./images --prompt 'cat.' --out runs/x --resume   (continue an interrupted run)\n\n"
    "  glip-label annotate /shared/images --classes-file prompts/lvis.txt --engine ray --ray-address auto "
    "--ray-actors 8 --ray-gpus-per-actor 1 --device cuda --out runs/lvis"
)
def annotate(
    source: Annotated[str, typer.Argument(help="Image folder (recursive), glob pattern ('data/**/*.jpg') or a .txt "
                                          "list of paths. Your images are never moved or modified.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: annotations.coco.json, "
                                      "annotations.odvg.jsonl, label_map.json, yolo/, labelstudio.json, errors.jsonl, "
                                      "vis/, run.json.")] = Path("runs/annotate"),
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Classes as 'a. b. c.' [dim]e.g. "
                                               "'person. bicycle. traffic light.'[/]")] = None,
    classes_file: Annotated[Path | None, typer.Option(help="One class name per line. [dim]e.g. prompts/coco80.txt, "
                                                      "prompts/lvis.txt (long lists are split into prompt chunks)"
                                                      "[/]")] = None,
    ontology: Annotated[Path | None, typer.Option(help="yaml/json mapping output classes to several prompts with "
                                                  "optional per-class thresholds. [dim]e.g. "
                                                  "prompts/ontology-example.yaml[/]")] = None,
    model: ModelOpt = "glip-t",
    config: ConfigOpt = None,
    random_init: Annotated[bool, typer.Option(help="Use an untrained model (tests and pipeline checks; boxes are "
                                              "meaningless). Uses --config, default glip-tiny.")] = False,
    threshold: Annotated[float, typer.Option(help="Keep boxes scoring at least this. [dim]e.g. 0.5 for fewer, "
                                             "surer boxes[/]")] = 0.35,
    nms_iou: Annotated[float | None, typer.Option(help="Extra class-aware NMS IoU after GLIP's own (0.6). Default: "
                                                  "on at 0.6 only when an ontology maps several prompts to one class."
                                                  )] = None,
    agnostic_nms: Annotated[bool, typer.Option(help="One box per object across classes (suppress overlapping boxes "
                                               "of different classes).")] = False,
    max_dets: Annotated[int, typer.Option(help="At most this many boxes per image.")] = 100,
    min_box_size: Annotated[float, typer.Option(help="Drop boxes narrower or shorter than this many pixels.")] = 0.0,
    format: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: coco, odvg, yolo, labelstudio. "
                                        "[dim]e.g. --format coco,odvg,yolo[/]")] = "coco,odvg",
    category_id_base: Annotated[int, typer.Option(help="First COCO category id (1 as COCO, 0 for some tools).")] = 1,
    save_vis: Annotated[int, typer.Option(help="Draw the boxes on this many images into OUT/vis/.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (batch 1 reproduces the official "
                                            "evaluation exactly).")] = 1,
    workers: Annotated[int, typer.Option(help="Background image-decoding threads.")] = 2,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUT (same options required).")] = False,
    shard: Annotated[str | None, typer.Option(help="Process only shard i of N ('i/N', 0-based), for several "
                                              "processes or machines; join with 'glip-label merge'.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Reject images larger than this many pixels (decompression "
                                            "bombs).")] = 178_956_970,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_actors: RayActorsOpt = 1,
    ray_cpus_per_actor: RayCpusOpt = 1.0,
    ray_gpus_per_actor: RayGpusOpt = 0.0,
    threads: ThreadsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    thresholds: ThresholdsOpt = None,
    tta: TTAOpt = False,
    tta_merge: TTAMergeOpt = "nms",
    tta_scales: TTAScalesOpt = "0.8,1,1.2",
    report: ReportOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Label an image folder with GLIP: COCO JSON, ODVG JSONL, YOLO, Label Studio, pictures of the boxes."""
    from glip_label.runs.annotate import annotate as run_annotate
    from glip_label.runs.annotate_options import AnnotateOptions
    from glip_label.runs.annotate_outputs import NoImageReadError
    from glip_label.runs.journal import JournalError

    _setup_logging(verbose)
    _check_device_and_dtype(device, dtype)
    options = AnnotateOptions(
        source=source, out=out, prompt=prompt, classes_file=str(classes_file) if classes_file else None,
        ontology=str(ontology) if ontology else None, model=None if random_init else model,
        config=_config_arg(config), random_init=random_init, seed=seed, threshold=threshold, nms_iou=nms_iou,
        agnostic_nms=agnostic_nms,
        max_dets=max_dets, min_box_size=min_box_size, formats=tuple(f.strip() for f in format.split(",") if f.strip()),
        category_id_base=category_id_base, save_vis=save_vis, batch_size=batch_size, workers=workers, device=device,
        dtype=dtype, resume=resume, shard=shard, max_pixels=max_pixels, engine=engine, ray_address=ray_address,
        ray_actors=ray_actors, ray_cpus_per_actor=ray_cpus_per_actor, ray_gpus_per_actor=ray_gpus_per_actor,
        torch_threads=threads, thresholds=str(thresholds) if thresholds else None, tta=tta, tta_merge=tta_merge,
        tta_scales=_tta_scales(tta_scales), report=report,
    )
    try:
        summary = run_annotate(options)
    except NoImageReadError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from exc
    except (ValueError, FileNotFoundError, JournalError) as exc:
        _fail(str(exc))
    _print_annotate_summary(summary)


def _print_annotate_summary(summary) -> None:
    table = Table(title=f"glip-label annotate → {summary.out}")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    for name, count in summary.boxes_per_class.items():
        table.add_row(name, str(count))
    out = Console()
    out.print(table)
    out.print(
        f"images {summary.images} · labeled {summary.labeled} · without boxes {summary.empty} · "
        f"errors {summary.errors}" + (f" (see {summary.out / 'errors.jsonl'})" if summary.errors else "")
        + (f" · {summary.images_per_second:.2f} img/s" if summary.images_per_second else "")
    )


@app.command(
    epilog="Examples:\n\n"
    "  glip-label calibrate --model glip-t --gold gold/coco.json@gold/images --classes-file classes.txt --out runs/cal"
    "\n\n  glip-label annotate ./images --classes-file classes.txt --thresholds runs/cal/thresholds.json --out runs/x"
    "\n\n  glip-label calibrate ... --target-precision 0.9   (per class: the most recall at 90% precision)"
)
def calibrate(
    gold: Annotated[str, typer.Option(help="A small gold set (tens of images), COCO detection json, as FILE or "
                                      "FILE@IMAGE_ROOT; its category names are matched to the classes.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: thresholds.json, ontology.calibrated.yaml, "
                                      "pr_curves/*.png.")] = Path("runs/calibrate"),
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Classes as 'a. b. c.'")] = None,
    classes_file: Annotated[Path | None, typer.Option(help="One class name per line.")] = None,
    ontology: Annotated[Path | None, typer.Option(help="Ontology yaml/json (classes with several prompts).")] = None,
    model: ModelOpt = "glip-t",
    config: ConfigOpt = None,
    target_precision: Annotated[float | None, typer.Option(help="Per class, the lowest threshold reaching this "
                                                           "precision (default: the threshold of best F1).")] = None,
    floor: Annotated[float, typer.Option(help="Lowest score considered (boxes below are never kept).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 1,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    tta: TTAOpt = False,
    tta_merge: TTAMergeOpt = "nms",
    tta_scales: TTAScalesOpt = "0.8,1,1.2",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Per-class score thresholds that maximise F1 (IoU 0.5) on a few gold images, for annotate --thresholds.

    Classes the gold set does not box get the single global threshold of best micro F1. Use the same --tta
    setting here as when labeling: scores shift under augmentation.
    """
    from glip_label.runs.calibrate import CalibrateOptions
    from glip_label.runs.calibrate import calibrate as run_calibrate
    from glip_label.tta import TTAOptions

    _setup_logging(verbose)
    try:
        tta_options = TTAOptions(scales=_tta_scales(tta_scales), merge=tta_merge) if tta else None
        result = run_calibrate(CalibrateOptions(
            gold=gold, out=out, prompt=prompt, classes_file=str(classes_file) if classes_file else None,
            ontology=str(ontology) if ontology else None, model=model, config=config,
            target_precision=target_precision, floor=floor, batch_size=batch_size, device=device, dtype=dtype,
            tta=tta_options), progress=verbose)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    table = Table(title=f"glip-label calibrate → {out / 'thresholds.json'}")
    for column in ("class", "threshold", "source", "gold boxes", "P", "R", "F1", "F1 at global"):
        table.add_column(column)
    for name, entry in result["classes"].items():
        at, at_global = entry.get("at_threshold"), entry.get("at_global")
        table.add_row(name, f"{entry['threshold']:.3f}", entry["source"], str(entry["gold_boxes"]),
                      *(f"{at[k]:.3f}" if at else "-" for k in ("precision", "recall", "f1")),
                      f"{at_global['f1']:.3f}" if at_global else "-")
    Console().print(table)
    Console().print(f"micro F1 on the gold set: per-class thresholds {result['per_class_micro']['f1']:.3f}, "
                    f"global threshold {result['default']:.3f}: {result['global']['f1']:.3f}")


@app.command(epilog="Example:\n\n  glip-label merge runs/cars-0 runs/cars-1 runs/cars-2 runs/cars-3 --out runs/cars")
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Output folders of 'annotate --shard i/N' runs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged output folder (must not exist).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Formats to write, as in annotate.")] = "coco,odvg",
) -> None:
    """Join the outputs of sharded 'annotate' runs into one dataset."""
    from glip_label.runs.annotate import merge as run_merge
    from glip_label.runs.annotate_options import AnnotateOptions
    from glip_label.runs.journal import JournalError, read_run_key

    try:
        key = read_run_key(shards[0]) or {}
        options = AnnotateOptions(source=key.get("image_root", ""), out=out, model=key.get("model"),
                                  threshold=key.get("threshold", 0.35),
                                  formats=tuple(f.strip() for f in format.split(",") if f.strip()))
        summary = run_merge(shards, out, options)
    except (ValueError, FileNotFoundError, JournalError, KeyError) as exc:
        _fail(str(exc))
    _print_annotate_summary(summary)


@app.command(
    "pseudo-caption",
    epilog="Examples:\n\n"
    "  glip-label pseudo-caption examples/captions.jsonl --out runs/captions\n\n"
    "  glip-label pseudo-caption cc3m/ --out runs/cc3m --batch-size 8 --device cuda"
    "\n\n"
    "  glip-label pseudo-caption 'shards/{00000..00999}.tar' --shard 3/8 --out runs/cc3m-3\n\n"
    "  glip-label pseudo-caption grit.jsonl --phrases column --phrases-column noun_chunks --out runs/grit\n\n"
    "  glip-label pseudo-caption coco_captions.json --image-root coco/train2017 --phrases vocab "
    "--classes-file prompts/coco80.txt\n\n"
    "  glip-label pseudo-caption cc12m/ --engine ray --ray-address auto --ray-actors 8 --ray-gpus-per-actor 1",
)
def pseudo_caption(
    source: Annotated[str, typer.Argument(help="Caption corpus: an img2dataset folder (image + .txt), webdataset .tar "
                                          "shards (a file, folder or glob), a .jsonl/.csv/.tsv with image and caption "
                                          "columns, a COCO captions json, or a Hugging Face dataset (hub name or "
                                          "saved folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: grounding.odvg.jsonl, grounding.mdetr.json, "
                                      "errors.jsonl, run.json.")] = Path("runs/pseudo-caption"),
    model: ModelOpt = "glip-t",
    config: ConfigOpt = None,
    random_init: Annotated[bool, typer.Option(help="Use an untrained model (pipeline checks only).")] = False,
    phrases: Annotated[str, typer.Option(help="Where phrases come from: auto (given per record, else spaCy if "
                                         "installed, else rules), spacy, rule, column (--phrases-column), vocab "
                                         "(names of --classes-file found in the caption).")] = "auto",
    phrases_column: Annotated[str | None, typer.Option(help="Record field with given phrases: GRIT noun_chunks "
                                                       "[[start,end,...]], spans or phrase strings.")] = None,
    classes_file: Annotated[Path | None, typer.Option(help="Class names for --phrases vocab.")] = None,
    image_column: Annotated[str, typer.Option(help="Image field of jsonl/csv/tsv/HF records.")] = "image",
    caption_column: Annotated[str, typer.Option(help="Caption field.")] = "caption",
    image_root: Annotated[str | None, typer.Option(help="Folder that relative image paths are resolved against "
                                                   "(default: the caption file's folder).")] = None,
    split: Annotated[str, typer.Option(help="Split of a Hugging Face dataset.")] = "train",
    box_floor: Annotated[float, typer.Option(help="Keep every box scoring above this, with its score; "
                                             "train-student filters later (--pseudo-min-score 0.5).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Image-caption pairs per forward pass.")] = 4,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUT.")] = False,
    shard: Annotated[str | None, typer.Option(help="Process only shard i of N ('i/N', 0-based).")] = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_actors: RayActorsOpt = 1,
    ray_cpus_per_actor: RayCpusOpt = 1.0,
    ray_gpus_per_actor: RayGpusOpt = 0.0,
    threads: ThreadsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    export_images: Annotated[bool, typer.Option(help="Also copy every grounded image to OUT/images/<file_name> "
                                                "(for tools that need image files, e.g. mmdet's ODVG loader on "
                                                "tar shards or a datasets folder; train-student and evaluate "
                                                "read those sources directly).")] = False,
    thresholds: Annotated[Path | None, typer.Option(help="thresholds.json from 'glip-label calibrate': phrases that "
                                                    "are one of its class names keep only boxes scoring at least "
                                                    "that class's threshold (others keep --box-floor).")] = None,
    tta: TTAOpt = False,
    tta_merge: TTAMergeOpt = "nms",
    tta_scales: TTAScalesOpt = "0.8,1,1.2",
    report: ReportOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ground the noun phrases of an image-caption corpus with GLIP (the paper's self-training data)."""
    from glip_label.runs.journal import JournalError
    from glip_label.runs.pseudo_caption import PseudoCaptionOptions
    from glip_label.runs.pseudo_caption import pseudo_caption as run

    _setup_logging(verbose)
    _check_device_and_dtype(device, dtype)
    options = PseudoCaptionOptions(
        source=source, out=out, model=None if random_init else model, config=_config_arg(config),
        random_init=random_init, seed=seed, phrases=phrases, phrases_column=phrases_column,
        classes_file=str(classes_file) if classes_file else None, image_column=image_column,
        caption_column=caption_column, image_root=image_root, split=split, box_floor=box_floor,
        batch_size=batch_size, device=device, dtype=dtype, resume=resume, shard=shard, engine=engine,
        ray_address=ray_address, ray_actors=ray_actors, ray_cpus_per_actor=ray_cpus_per_actor,
        ray_gpus_per_actor=ray_gpus_per_actor, torch_threads=threads, export_images=export_images,
        thresholds=str(thresholds) if thresholds else None, tta=tta, tta_merge=tta_merge,
        tta_scales=_tta_scales(tta_scales), report=report,
    )
    try:
        summary = run(options)
    except (ValueError, FileNotFoundError, JournalError, ImportError) as exc:
        _fail(str(exc))
    Console().print(f"pairs {summary.pairs} · grounded {summary.grounded} · skipped {summary.skipped} "
                    f"(see {summary.out / 'errors.jsonl'}) · boxes {summary.boxes} · "
                    f"{summary.pairs_per_second:.2f} pairs/s")


def _parse_scales(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        scales = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        _fail(f"--scales takes comma-separated integers, got {text!r}")
    if not scales or min(scales) < 32:
        _fail(f"--scales must be short sides of at least 32 pixels, got {text!r}")
    return scales


@app.command(
    "train-student",
    epilog="Examples:\n\n"
    "  glip-label train-student --gold coco/train.json@coco/train2017 --pseudo runs/cc3m/grounding.odvg.jsonl "
    "--val coco/val.json@coco/val2017 --init glip-t --out runs/student --max-steps 20000\n\n"
    "  glip-label train-student --gold gold.coco.json --config glip-tiny --out runs/tiny --max-steps 500\n\n"
    "  glip-label train-student --gold gold.coco.json --pseudo runs/ann/annotations.coco.json --backbone resnet50 "
    "--out runs/r50   (distil into a timm backbone)\n\n"
    "  torchrun --nproc_per_node 2 -m glip_label train-student --gold gold.coco.json --out runs/ddp  (DDP)\n\n"
    "  glip-label train-student ... --out runs/student --resume   (continue from the last checkpoint)",
)
def train_student(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: model_final.pth (official layout), "
                                      "model_final.safetensors, config.yaml, checkpoints/, metrics.csv, metrics.json."
                                      )],
    gold: Annotated[list[str] | None, typer.Option(help="Gold data file, repeatable: COCO detection, ODVG "
                                                   "(detection or grounding) or MDETR-style grounding, detected from "
                                                   "the content. Images resolve against the file's folder, or ROOT "
                                                   "when written FILE@ROOT.")] = None,
    pseudo: Annotated[list[str] | None, typer.Option(help="Pseudo-labelled file, repeatable (annotate's "
                                                     "annotations.coco.json / .odvg.jsonl, pseudo-caption's "
                                                     "grounding.*); boxes below --pseudo-min-score are dropped.")
                      ] = None,
    val: Annotated[list[str] | None, typer.Option(help="Validation file, repeatable: COCO detection (box AP) or "
                                                  "MDETR-style grounding (Recall@1/5/10); evaluated at the end.")
                   ] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="Student architecture: glip-tiny (default), "
                                               "glip-t, glip-l or an official yaml. With --init: the checkpoint's.")
                      ] = None,
    init: Annotated[str | None, typer.Option(help="Start from these weights (fine-tune a teacher): a hub preset or "
                                             "a .pth/.safetensors.")] = None,
    backbone: Annotated[str | None, typer.Option(help="A timm model with features_only (e.g. resnet50, "
                                                 "convnext_tiny) in place of Swin: a faster student.")] = None,
    backbone_pretrained: Annotated[bool, typer.Option(help="Load the timm backbone's ImageNet weights (needs the "
                                                      "hub or a filled cache).")] = True,
    tune: Annotated[str, typer.Option(help="full (everything), head (linear probing of the box/score heads) or "
                                      "prompt (the paper's prompt tuning: only the prompt embedding).")] = "full",
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Images per step and process (global batch = this x processes).")
                          ] = 2,
    lr: Annotated[float, typer.Option(help="Learning rate (official: 1e-4 pretraining, 1e-5 fine-tuning, 0.05 "
                                      "prompt tuning).")] = 1e-4,
    lang_lr: Annotated[float, typer.Option(help="Learning rate of the BERT text encoder.")] = 1e-5,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (0.25 for prompt tuning).")] = 1e-4,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warm-up steps (default: min(2000, max_steps/10))."
                                                     )] = None,
    amp: Annotated[str | None, typer.Option(help="Mixed precision: bf16 or fp16 autocast (fp16 with a gradient "
                                            "scaler). For GPUs; runs on CPU too, slower there.")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="Keep an EMA of the weights (e.g. 0.999): "
                                                    "model_final_ema.pth.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")] = 500,
    pseudo_min_score: Annotated[float, typer.Option(help="Keep pseudo boxes scoring at least this (paper: 0.5).")
                                ] = 0.5,
    pseudo_min_box_size: Annotated[float, typer.Option(help="Drop pseudo boxes narrower or shorter than this many "
                                                       "pixels.")] = 4.0,
    pseudo_min_margin: Annotated[float | None, typer.Option(
        help="Keep only each phrase's best pseudo box, and only if it beats the phrase's best box on another "
             "object by this margin and no other phrase scores higher on it (e.g. 0.1; off by default); captions "
             "are cut to the kept phrases. Fewer, surer boxes: what a student needs to learn words the "
             "teacher's gold data never had.")] = None,
    gold_weight: Annotated[float, typer.Option(help="Copies of each gold file per epoch.")] = 1.0,
    pseudo_weight: Annotated[float, typer.Option(help="Copies of each pseudo file per epoch (fractions sample).")
                             ] = 1.0,
    scales: Annotated[str | None, typer.Option(help="Training short sides, e.g. 480,560,640,720,800 (default: "
                                               "the official ones scaled to the preset).")] = None,
    flip_prob: Annotated[float, typer.Option(help="Horizontal flip probability (never for captions that say "
                                             "left/right).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, sampling and augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's newest checkpoint.")] = False,
    deterministic: Annotated[bool, typer.Option(help="Deterministic kernels (bit-identical resumes on CPU).")
                             ] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a student GLIP on gold plus pseudo data with the paper's losses, then evaluate it."""
    from glip_label.runs.train_student import TrainStudentOptions
    from glip_label.runs.train_student import train_student as run
    from glip_label.train.evaluate import print_metrics_table

    _setup_logging(verbose)
    _check_device_and_dtype(device, amp=amp)
    options = TrainStudentOptions(
        out=out, gold=gold or (), pseudo=pseudo or (), val=val or (), config=config, init=init, backbone=backbone,
        backbone_pretrained=backbone_pretrained, tune=tune, max_steps=max_steps, batch_size=batch_size, lr=lr,
        lang_lr=lang_lr, weight_decay=weight_decay, warmup_steps=warmup_steps, amp=amp, ema_decay=ema_decay,
        checkpoint_every=checkpoint_every, pseudo_min_score=pseudo_min_score,
        pseudo_min_box_size=pseudo_min_box_size, pseudo_min_margin=pseudo_min_margin,
        gold_weight=gold_weight, pseudo_weight=pseudo_weight,
        scales=_parse_scales(scales), flip_prob=flip_prob, seed=seed, resume=resume, deterministic=deterministic,
        device=device, num_workers=workers,
    )
    try:
        summary = run(options)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        _fail(str(exc))
    if summary["metrics"]:
        print_metrics_table(summary["metrics"], title=f"{out} (step {summary['step']})")
    Console().print(f"wrote {summary.get('model_final', out)}")


@app.command(
    epilog="Examples:\n\n"
    "  glip-label evaluate --model runs/student/model_final.pth --val coco/val.json@coco/val2017\n\n"
    "  glip-label evaluate --model glip-t --val flickr/final_flickr_separateGT_val.json@flickr/images "
    "--json runs/glip-t-flickr.json",
)
def evaluate(
    val: Annotated[list[str], typer.Option(help="COCO detection file (box mAP with COCOeval) or MDETR-style "
                                           "grounding file (Recall@1/5/10), repeatable; FILE@ROOT for images "
                                           "elsewhere.")],
    model: ModelOpt = "glip-t",
    config: ConfigOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass for detection (1 reproduces the "
                                            "official numbers).")] = 1,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Evaluate a model: COCO box AP on a gold set and/or grounding Recall@k on an MDETR-style set."""
    from glip_label.io import atomic_write_json
    from glip_label.predictor import load_model
    from glip_label.runs.train_student import evaluate_files
    from glip_label.train.evaluate import print_metrics_table
    from glip_label.weights import CheckpointError

    _setup_logging(verbose)
    _check_device_and_dtype(device, dtype)
    try:
        predictor = load_model(model, config=_config_arg(config), device=device, dtype=dtype)
        metrics = evaluate_files(predictor, val, batch_size=batch_size, progress=True)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        _fail(str(exc))
    print_metrics_table(metrics, title=f"{model}")
    for path, file_metrics in metrics["files"].items():
        if file_metrics.get("num_unreadable_images"):
            first = file_metrics["unreadable_images"][0]
            console.print(f"[yellow]{path}: {file_metrics['num_unreadable_images']} images could not be read "
                          f"(first: {first['file_name']}: {first['reason']})[/]")
    if json_out is not None:
        atomic_write_json(json_out, metrics)


@app.command(
    epilog="Examples:\n\n"
    "  glip-label demo                      (the full loop, about 15 minutes on 2 CPU cores)\n\n"
    "  glip-label demo --seed 1 --out runs/demo-1\n\n"
    "  glip-label demo --quick              (a smaller world and a few steps: checks that everything runs)",
)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: world/ (datasets), teacher/, pseudo/, "
                                      "student/ (checkpoints), vis/ (pictures), metrics.json.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the world, the sampling and the initialisations.")] = 0,
    quick: Annotated[bool, typer.Option(help="Tiny world, a few steps: every stage runs, metrics mean nothing.")
                     ] = False,
    teacher_steps: Annotated[int | None, typer.Option(help="Override the teacher's training steps.")] = None,
    student_steps: Annotated[int | None, typer.Option(help="Override the student's training steps.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """GLIP's self-training loop offline: teacher on gold -> pseudo-caption -> student, both evaluated.

    A generated world of coloured shapes: a small gold set boxes the base shapes only, a caption corpus
    also names novel shapes, a validation set boxes everything. The student, trained on gold plus the
    teacher's pseudo boxes, should beat the teacher on the novel shapes.
    """
    from glip_label.runs.demo import DemoOptions, run_demo

    _setup_logging(verbose)
    options = DemoOptions.quick(out, seed) if quick else DemoOptions(out=out, seed=seed)
    if teacher_steps is not None:
        options.teacher_steps = teacher_steps
    if student_steps is not None:
        options.student_steps = student_steps
    metrics = run_demo(options, on_stage=lambda stage: console.print(f"[bold]demo:[/] {stage}"))
    table = Table(title=f"teacher vs student on the held-out set (seed {seed})")
    table.add_column("metric")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    for key in ("ap", "ap50", "ap_base", "ap_novel", "recall_at_1", "recall_at_5"):
        table.add_row(key, f"{metrics['teacher'][key]:.3f}", f"{metrics['student'][key]:.3f}")
    Console().print(table)
    Console().print(f"{metrics['seconds']['total']:.0f} s in all; metrics, datasets, checkpoints and pictures "
                    f"in {out}")


@app.command("convert-weights", epilog="Example:\n\n  glip-label convert-weights glip_tiny_model_o365_goldg.pth "
             "glip-t.safetensors --dtype fp16")
def convert_weights(
    src: Annotated[Path, typer.Argument(help="Official GLIP .pth (memory-mapped, never loaded whole).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors with the model weights only.")],
    dtype: Annotated[str, typer.Option(help="fp32, fp16 or bf16 for float tensors.")] = "fp32",
    ema: Annotated[bool, typer.Option(help="Take 'model_ema' instead of 'model' (the authors advise 'model').")] = (
        False
    ),
) -> None:
    """Write a lean safetensors copy of a GLIP checkpoint (about a quarter of the official .pth)."""
    from glip_label.weights import CheckpointError
    from glip_label.weights import convert_weights as run_convert

    try:
        stats = run_convert(src, dst, dtype=dtype, prefer="model_ema" if ema else "model")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    Console().print(f"wrote {dst}: {stats['tensors']} tensors, {stats['bytes_out'] / 1e6:.1f} MB "
                    f"(from {stats['bytes_in'] / 1e6:.1f} MB)")


@app.command(epilog="Example:\n\n  glip-label info glip_large_model.pth")
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A .pth (official or glip-label) or .safetensors checkpoint.")],
    ema: Annotated[bool, typer.Option(help="Describe 'model_ema' instead of 'model'.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """What a checkpoint holds: architecture, parameter count, dtype, prompt tuning and stored metadata."""
    import json

    from glip_label.weights import CheckpointError, describe_checkpoint

    try:
        facts = describe_checkpoint(checkpoint, prefer="model_ema" if ema else "model")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if json_out:
        Console().print_json(json.dumps(facts))
        return
    prompt = facts["prompt_tuning"]
    chosen_by = facts["architecture_source"] or "no released layout matches"
    table = Table(title=str(checkpoint), show_header=False)
    rows = [
        ("architecture", f"{facts['architecture'] or 'unknown'} ({chosen_by})"),
        ("layout", facts["layout"]),
        ("parameters", f"{facts['parameters'] / 1e6:.1f} M in {facts['tensors']} tensors"),
        ("dtype", ", ".join(f"{k} ({v / 1e6:.1f} M)" for k, v in facts["dtypes"].items()) or "none"),
        ("prompt tuning", f"yes: {prompt['rows']} x {prompt['width']} prompt rows, {prompt['nonzero_rows']} non-zero"
         if prompt else "no"),
        ("entries", ", ".join(facts["entries"]) + f" (model from {facts['source_entry']!r})" if facts["entries"]
         else "a bare state dict"),
        ("module. prefix", "yes" if facts["module_prefix"] else "no"),
        ("stored config", json.dumps(facts["stored_config"]) if facts["stored_config"] else "none"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
