"""`glip-label annotate` and `glip-label merge`: label an image folder, and join the folders of a sharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from glip_label.cli.app import app, config_arg, fail, run_labeling
from glip_label.cli.option_map import (
    OptionMap,
    comma_list,
    command_params,
    labeling_options,
    parse_tta_scales,
    path_text,
)
from glip_label.cli.params import LABELING_PARAMS, ConfigOpt, ModelOpt, with_params
from glip_label.runs.journal import JournalError

# annotate's CLI parameters -> AnnotateOptions fields; a parameter not named here sets the field of its name.
ANNOTATE_OPTIONS = OptionMap(
    "glip_label.runs.annotate_options:AnnotateOptions",
    renamed={"format": "formats", "threads": "torch_threads"},
    convert={"format": comma_list, "classes_file": path_text, "ontology": path_text, "thresholds": path_text,
             "config": config_arg, "tta_scales": parse_tta_scales},
    cli_only={"verbose": "logging of this process, not an option of the run"},
    computed={"model": "None with --random-init, else --model"},
)


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
@with_params(LABELING_PARAMS)
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
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUT (same options required).")] = False,
    shard: Annotated[str | None, typer.Option(help="Process only shard i of N ('i/N', 0-based), for several "
                                              "processes or machines; join with 'glip-label merge'.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Reject images larger than this many pixels (decompression "
                                            "bombs).")] = 178_956_970,
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    thresholds: Annotated[Path | None, typer.Option(help="thresholds.json written by 'glip-label calibrate': a score "
                                                    "threshold per class. [dim]e.g. runs/cal/thresholds.json[/]")
                          ] = None,
    **shared: Any,  # the parameter groups of @with_params
) -> None:
    """Label an image folder with GLIP: COCO JSON, ODVG JSONL, YOLO, Label Studio, pictures of the boxes."""
    options = labeling_options(ANNOTATE_OPTIONS, command_params(locals()))  # before any other name
    from glip_label.runs.annotate import annotate as run_annotate

    print_annotate_summary(run_labeling(run_annotate, options))


def print_annotate_summary(summary) -> None:
    """The classes' box counts as a table, then the run's counts and speed."""
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
    from glip_label.runs.annotate import merge as run_merge
    from glip_label.runs.annotate_options import AnnotateOptions
    from glip_label.runs.journal import read_run_key

    try:
        key = read_run_key(shards[0]) or {}
        options = AnnotateOptions(source=key.get("image_root", ""), out=out, model=key.get("model"),
                                  threshold=key.get("threshold", 0.35),
                                  formats=comma_list(format))
        summary = run_merge(shards, out, options)
    except (ValueError, FileNotFoundError, JournalError, KeyError) as exc:
        fail(str(exc))
    print_annotate_summary(summary)
