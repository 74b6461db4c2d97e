"""`glip-label pseudo-caption`: ground the noun phrases of an image-caption corpus with the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from glip_label.cli.app import app, config_arg, run_labeling
from glip_label.cli.option_map import OptionMap, command_params, labeling_options, parse_tta_scales, path_text
from glip_label.cli.params import LABELING_PARAMS, ConfigOpt, ModelOpt, with_params

# pseudo-caption's CLI parameters -> PseudoCaptionOptions fields; a parameter not named here sets the field of its
# name.
PSEUDO_CAPTION_OPTIONS = OptionMap(
    "glip_label.runs.pseudo_caption:PseudoCaptionOptions",
    renamed={"threads": "torch_threads"},
    convert={"classes_file": path_text, "thresholds": path_text, "config": config_arg, "tta_scales": parse_tta_scales},
    cli_only={"verbose": "logging of this process, not an option of the run"},
    computed={"model": "None with --random-init, else --model"},
)


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
@with_params(LABELING_PARAMS)
def pseudo_caption(
    source: Annotated[str, typer.Argument(help=(
        "Caption corpus: an img2dataset folder (image + .txt), webdataset .tar shards (a file, a folder, a glob, or "
        "webdataset's quoted brace pattern 'shards/{00000..00999}.tar'), a Hugging Face ImageFolder (images + "
        "metadata.jsonl/.csv with file_name and caption or text columns), a .jsonl/.csv/.tsv with image and "
        "caption columns, a COCO captions json, or a Hugging Face dataset (hub name or saved folder)."))],
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
    split: Annotated[str, typer.Option(help="Split of a Hugging Face dataset or ImageFolder.")] = "train",
    box_floor: Annotated[float, typer.Option(help="Keep every box scoring above this, with its score; "
                                             "train-student filters later (--pseudo-min-score 0.5).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Image-caption pairs per forward pass.")] = 4,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUT.")] = False,
    shard: Annotated[str | None, typer.Option(help="Process only shard i of N ('i/N', 0-based).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    export_images: Annotated[bool, typer.Option(help="Also copy every grounded image to OUT/images/<file_name> "
                                                "(for tools that need image files, e.g. mmdet's ODVG loader on "
                                                "tar shards or a datasets folder; train-student and evaluate "
                                                "read those sources directly).")] = False,
    thresholds: Annotated[Path | None, typer.Option(help="thresholds.json from 'glip-label calibrate': phrases that "
                                                    "are one of its class names keep only boxes scoring at least "
                                                    "that class's threshold (others keep --box-floor).")] = None,
    **shared: Any,  # the parameter groups of @with_params
) -> None:
    """Ground the noun phrases of an image-caption corpus with GLIP (the paper's self-training data)."""
    options = labeling_options(PSEUDO_CAPTION_OPTIONS, command_params(locals()))  # before any other name
    from glip_label.runs.pseudo_caption import pseudo_caption as run

    summary = run_labeling(run, options, bad_input=(ImportError,))  # ImportError: a corpus kind's optional library
    Console().print(f"pairs {summary.pairs} · grounded {summary.grounded} · skipped {summary.skipped} "
                    f"(see {summary.out / 'errors.jsonl'}) · boxes {summary.boxes} · "
                    f"{summary.pairs_per_second:.2f} pairs/s")
