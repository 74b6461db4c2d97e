"""`glip-label train-student`, `evaluate` and `demo`: train a student on gold plus pseudo data, measure a model,
and run the whole self-training loop offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from glip_label.cli.app import app, check_device_and_dtype, config_arg, console, fail, setup_logging
from glip_label.cli.option_map import OptionMap, command_params, or_empty
from glip_label.cli.params import ARCHITECTURES_TEXT, ConfigOpt, DeviceOpt, DtypeOpt, ModelOpt, VerboseOpt


def parse_scales(text: str | None) -> tuple[int, ...] | None:
    """--scales "480,560,640" as the options take it; a bad list is the one-line error exit."""
    if not text:
        return None
    try:
        scales = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"--scales takes comma-separated integers, got {text!r}")
    if not scales or min(scales) < 32:
        fail(f"--scales must be short sides of at least 32 pixels, got {text!r}")
    return scales


# train-student's CLI parameters -> TrainStudentOptions fields; a parameter not named here sets the field of its name.
TRAIN_STUDENT_OPTIONS = OptionMap(
    "glip_label.runs.train_student:TrainStudentOptions",
    renamed={"workers": "num_workers"},
    convert={"gold": or_empty, "pseudo": or_empty, "val": or_empty, "scales": parse_scales},
    cli_only={"verbose": "logging of this process, not an option of the run"},
)


@app.command(
    "train-student",
    epilog="Examples:\n\n"
    "  glip-label train-student --gold coco/train.json@coco/train2017 --pseudo runs/cc3m/grounding.odvg.jsonl "
    "--val coco/val.json@coco/val2017 --init glip-t --out runs/student --max-steps 20000\n\n"
    "  glip-label train-student --gold gold.coco.json --config glip-tiny --out runs/tiny --max-steps 500\n\n"
    "  glip-label train-student --gold gold.coco.json --pseudo runs/ann/annotations.coco.json --backbone resnet50 "
    "--out runs/r50   (distil into a timm backbone)\n\n"
    "  glip-label train-student --gold pets/data.yaml --val pets/data.yaml --init glip-t --out runs/pets   "
    "(a YOLO dataset, e.g. a Roboflow export: train and val splits)\n\n"
    "  torchrun --nproc_per_node 2 -m glip_label train-student --gold gold.coco.json --out runs/ddp  (DDP)\n\n"
    "  glip-label train-student ... --out runs/student --resume   (continue from the last checkpoint)",
)
def train_student(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: model_final.pth (official layout), "
                                      "model_final.safetensors, config.yaml, checkpoints/, metrics.csv, metrics.json."
                                      )],
    gold: Annotated[list[str] | None, typer.Option(help="Gold data file, repeatable: COCO detection, ODVG "
                                                   "(detection or grounding), MDETR-style grounding or a YOLO "
                                                   "data.yaml (its train split), detected from the content. Images "
                                                   "resolve against the file's folder, or ROOT when written "
                                                   "FILE@ROOT.")] = None,
    pseudo: Annotated[list[str] | None, typer.Option(help="Pseudo-labelled file, repeatable (annotate's "
                                                     "annotations.coco.json / .odvg.jsonl, pseudo-caption's "
                                                     "grounding.*); boxes below --pseudo-min-score are dropped.")
                      ] = None,
    val: Annotated[list[str] | None, typer.Option(help="Validation file, repeatable: COCO detection or a YOLO "
                                                  "data.yaml's val split (box AP), or MDETR-style grounding "
                                                  "(Recall@1/5/10); evaluated at the end.")
                   ] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="Student architecture: a preset "
                                               f"({ARCHITECTURES_TEXT}; default glip-tiny) or an official yaml. "
                                               "With --init: the checkpoint's.")
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
    verbose: VerboseOpt = False,
) -> None:
    """Train a student GLIP on gold plus pseudo data with the paper's losses, then evaluate it."""
    params = command_params(locals())  # before any other name is bound

    from glip_label.runs.train_student import train_student as run
    from glip_label.train.evaluate import print_metrics_table

    setup_logging(verbose)
    check_device_and_dtype(device, amp=amp)
    options = TRAIN_STUDENT_OPTIONS.build(params)
    try:
        summary = run(options)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        fail(str(exc))
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
    val: Annotated[list[str], typer.Option(help="COCO detection file or YOLO data.yaml (its val split; box mAP "
                                           "with COCOeval) or MDETR-style grounding file (Recall@1/5/10), "
                                           "repeatable; FILE@ROOT for images elsewhere.")],
    model: ModelOpt = "glip-t",
    config: ConfigOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass for detection (1 reproduces the "
                                            "official numbers).")] = 1,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a model: COCO box AP on a gold set and/or grounding Recall@k on an MDETR-style set."""
    from glip_label.io import atomic_write_json
    from glip_label.predictor import load_model
    from glip_label.runs.train_student import check_val_files, evaluate_files
    from glip_label.train.evaluate import print_metrics_table
    from glip_label.weights import CheckpointError

    setup_logging(verbose)
    check_device_and_dtype(device, dtype)
    try:
        check_val_files(val)  # a wrong --val fails before the model loads
        predictor = load_model(model, config=config_arg(config), device=device, dtype=dtype)
        metrics = evaluate_files(predictor, val, batch_size=batch_size, progress=True)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        fail(str(exc))
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
    verbose: VerboseOpt = False,
) -> None:
    """GLIP's self-training loop offline: teacher on gold -> pseudo-caption -> student, both evaluated.

    A generated world of coloured shapes: a small gold set boxes the base shapes only, a caption corpus
    also names novel shapes, a validation set boxes everything. The student, trained on gold plus the
    teacher's pseudo boxes, should beat the teacher on the novel shapes.
    """
    from glip_label.runs.demo import DemoOptions, run_demo

    setup_logging(verbose)
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

