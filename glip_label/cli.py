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
    "GLIPModel/GLIP) or a local .pth/.safetensors file.",
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
    str | None,
    typer.Option("--config", "-c", help="Architecture: a preset (glip-t, glip-t-a, glip-l, glip-tiny) or an official "
                 "GLIP yaml. Default: from the hub preset or the checkpoint's own metadata."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32 (default, exact), fp16 or bf16 (GPU).")]


def _setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command(
    epilog="Examples:\n\n"
    "  glip-label annotate ./images --prompt 'person. bicycle.' --out runs/people\n\n"
    "  glip-label annotate ./images --classes-file prompts/coco80.txt --format coco,yolo --save-vis 20\n\n"
    "  glip-label annotate ./images --ontology prompts/ontology-example.yaml --agnostic-nms\n\n"
    "  glip-label annotate 'data/**/*.jpg' --prompt 'car.' --shard 0/4 --out runs/cars-0   (then: glip-label merge)\n\n"
    "  glip-label annotate ./images --prompt 'cat.' --out runs/x --resume   (continue an interrupted run)"
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
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Label an image folder with GLIP: COCO JSON, ODVG JSONL, YOLO, Label Studio, pictures of the boxes."""
    from glip_label.runs.annotate import AnnotateOptions, NoImageReadError
    from glip_label.runs.annotate import annotate as run_annotate
    from glip_label.runs.journal import JournalError

    _setup_logging(verbose)
    options = AnnotateOptions(
        source=source, out=out, prompt=prompt, classes_file=str(classes_file) if classes_file else None,
        ontology=str(ontology) if ontology else None, model=None if random_init else model, config=config,
        random_init=random_init, seed=seed, threshold=threshold, nms_iou=nms_iou, agnostic_nms=agnostic_nms,
        max_dets=max_dets, min_box_size=min_box_size, formats=tuple(f.strip() for f in format.split(",") if f.strip()),
        category_id_base=category_id_base, save_vis=save_vis, batch_size=batch_size, workers=workers, device=device,
        dtype=dtype, resume=resume, shard=shard, max_pixels=max_pixels,
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


@app.command(epilog="Example:\n\n  glip-label merge runs/cars-0 runs/cars-1 runs/cars-2 runs/cars-3 --out runs/cars")
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Output folders of 'annotate --shard i/N' runs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged output folder (must not exist).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Formats to write, as in annotate.")] = "coco,odvg",
) -> None:
    """Join the outputs of sharded 'annotate' runs into one dataset."""
    from glip_label.runs.annotate import AnnotateOptions
    from glip_label.runs.annotate import merge as run_merge
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
    engine: Annotated[str, typer.Option(help="local, or ray (Ray Data actor pool; same records as local).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address ('auto' after 'ray start'); default: "
                                                    "a local instance.")] = None,
    ray_actors: Annotated[int, typer.Option(help="Model actors in the Ray pool.")] = 1,
    ray_cpus_per_actor: Annotated[float, typer.Option(help="CPUs per actor (fractions allowed).")] = 1.0,
    ray_gpus_per_actor: Annotated[float, typer.Option(help="GPUs per actor.")] = 0.0,
    threads: Annotated[int | None, typer.Option(help="torch threads per process (equal counts give bit-identical "
                                                "records across engines).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ground the noun phrases of an image-caption corpus with GLIP (the paper's self-training data)."""
    from glip_label.runs.journal import JournalError
    from glip_label.runs.pseudo_caption import PseudoCaptionOptions
    from glip_label.runs.pseudo_caption import pseudo_caption as run

    _setup_logging(verbose)
    options = PseudoCaptionOptions(
        source=source, out=out, model=None if random_init else model, config=config, random_init=random_init,
        seed=seed, phrases=phrases, phrases_column=phrases_column,
        classes_file=str(classes_file) if classes_file else None, image_column=image_column,
        caption_column=caption_column, image_root=image_root, split=split, box_floor=box_floor,
        batch_size=batch_size, device=device, dtype=dtype, resume=resume, shard=shard, engine=engine,
        ray_address=ray_address, ray_actors=ray_actors, ray_cpus_per_actor=ray_cpus_per_actor,
        ray_gpus_per_actor=ray_gpus_per_actor, torch_threads=threads,
    )
    try:
        summary = run(options)
    except (ValueError, FileNotFoundError, JournalError, ImportError) as exc:
        _fail(str(exc))
    Console().print(f"pairs {summary.pairs} · grounded {summary.grounded} · skipped {summary.skipped} "
                    f"(see {summary.out / 'errors.jsonl'}) · boxes {summary.boxes} · "
                    f"{summary.pairs_per_second:.2f} pairs/s")


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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
