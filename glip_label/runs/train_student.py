"""`glip-label train-student`: gold + pseudo data -> a student GLIP, evaluated on a validation set.

This module only wires the parts together (data in `glip_label.data`, the loop in
`glip_label.train.trainer`, metrics in `glip_label.train.evaluate`) so that the CLI, the demo and the
tests run the very same code. Under `torchrun` every process calls `train_student`; the loop joins
the process group and only rank 0 writes files and evaluates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from glip_label.config import GLIPConfig, resolve_config
from glip_label.data.dataset import GroundingDataset
from glip_label.data.detection_prompt import DEFAULT_NUM_NEGATIVES
from glip_label.data.samples import GroundingSource
from glip_label.data.sources import detect_format, load_source, parse_data_arg, read_detection_gold
from glip_label.data.sources.detect import sniff
from glip_label.io import atomic_write_json
from glip_label.model.glip import GLIP
from glip_label.train.config import TrainConfig
from glip_label.train.trainer import train

log = logging.getLogger(__name__)

# TrainConfig fields that train-student does not expose: they keep their TrainConfig defaults, the official
# values (warm-up factor 0.001, gamma 0.1, bias lr x2, bias weight decay 0). Every other TrainConfig field
# is filled from the TrainStudentOptions field of the same name (see `TrainStudentOptions.train_config`).
TRAIN_CONFIG_FIELDS_NOT_OPTIONS = frozenset({"warmup_factor", "gamma", "bias_lr_factor", "bias_weight_decay"})


@dataclass
class TrainStudentOptions:
    """Everything `train-student` takes; the CLI maps its options 1:1 onto these fields.

    gold / pseudo: data files ("FILE" or "FILE@ROOT"), any format `detect_format` knows. Boxes with a
    score (pseudo labels) are kept when score >= pseudo_min_score; pseudo boxes smaller than
    pseudo_min_box_size (either side, pixels) are dropped. pseudo_min_margin: keep only each phrase's
    best pseudo box, when it is a confident grounding (see `glip_label.data.pseudo_filter.BoxFilter`).
    gold_weight / pseudo_weight: copies of each file per epoch, so a small gold set can be seen as often
    as a large pseudo set.
    val: COCO detection files (box AP) and/or MDETR-style grounding files (Recall@k).
    config: the student's preset or official yaml, unless `init` (a checkpoint or hub preset whose
    weights the student starts from) brings its own; backbone: a timm model replacing Swin.
    """

    out: Path
    gold: Sequence[str] = ()
    pseudo: Sequence[str] = ()
    val: Sequence[str] = ()
    config: str | Path | GLIPConfig | None = None
    init: str | None = None
    backbone: str | None = None
    backbone_pretrained: bool = True
    tune: str = "full"
    max_steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-4
    lang_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int | None = None
    milestones: tuple[float, ...] = (0.67, 0.89)
    clip_grad_norm: float | None = 1.0
    amp: str | None = None
    ema_decay: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 2
    eval_every: int | None = None
    log_every: int = 20
    pseudo_min_score: float = 0.5
    pseudo_min_box_size: float = 4.0
    pseudo_min_margin: float | None = None
    gold_weight: float = 1.0
    pseudo_weight: float = 1.0
    scales: tuple[int, ...] | None = None
    flip_prob: float = 0.5
    num_negatives: int = DEFAULT_NUM_NEGATIVES
    seed: int = 0
    resume: bool = False
    deterministic: bool = False
    device: str | None = None
    num_workers: int = 0
    eval_batch_size: int = 1
    progress: bool = True

    def train_config(self) -> TrainConfig:
        """The loop's settings: each TrainConfig field from the option of the same name.

        Copied by name, not field by field, so a new training option needs no third edit here; the TrainConfig
        fields train-student does not expose are listed in TRAIN_CONFIG_FIELDS_NOT_OPTIONS.
        """
        return TrainConfig(**{field.name: getattr(self, field.name) for field in fields(TrainConfig)
                              if field.name not in TRAIN_CONFIG_FIELDS_NOT_OPTIONS})


def build_student(options: TrainStudentOptions) -> GLIP:
    """The model to train: a checkpoint's (fine-tuning), or a fresh one from a preset, optionally on timm."""
    if options.init is not None:
        if options.backbone:
            raise ValueError("--backbone builds a new student; it cannot be combined with --init (a checkpoint "
                             "already has its backbone)")
        from glip_label.predictor import load_model

        return load_model(options.init, config=options.config).model.float().train()
    config = resolve_config(options.config, default="glip-tiny")
    if options.backbone:
        config = config.replace(timm_backbone=options.backbone, name=f"{config.name}+{options.backbone}")
    torch.manual_seed(options.seed)
    return GLIP(config, pretrained_body=options.backbone_pretrained and bool(options.backbone))


def load_sources(options: TrainStudentOptions) -> list[GroundingSource]:
    """Read the gold and pseudo files; a pseudo file's boxes are filtered by score and size as read."""
    if not options.gold and not options.pseudo:
        raise ValueError("no training data: give at least one --gold or --pseudo file")
    sources = []
    for spec in options.gold:
        sources.append(load_source(spec, min_score=options.pseudo_min_score, weight=options.gold_weight,
                                   name=f"gold:{parse_data_arg(spec)[0].name}"))
    for spec in options.pseudo:
        sources.append(load_source(spec, min_score=options.pseudo_min_score, min_box_size=options.pseudo_min_box_size,
                                   weight=options.pseudo_weight, name=f"pseudo:{parse_data_arg(spec)[0].name}",
                                   min_margin=options.pseudo_min_margin))
    for source in sources:
        if not source.samples:
            raise ValueError(f"{source.path}: no usable training image (stats: {source.stats}); with pseudo labels, "
                             "check --pseudo-min-score")
    return sources


def evaluate_files(
    predictor: Any,
    val: Sequence[str],
    batch_size: int = 1,
    progress: bool = False,
    category_groups: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Evaluate on each validation file by its format; flat `ap`/`recall_at_k` keys plus one entry per file.

    The first COCO file gives the flat AP keys and the first grounding file the flat recall keys, so a
    run with one of each (the usual case) reads `metrics["ap"]` and `metrics["recall_at_1"]`.
    """
    from glip_label.train.evaluate import evaluate_detection, evaluate_grounding

    flat: dict[str, Any] = {}
    per_file: dict[str, Any] = {}
    for spec in val:
        path, root = parse_data_arg(spec)
        fmt = detect_format(path)
        if fmt in ("coco", "yolo"):
            metrics = evaluate_detection(predictor, path, root, batch_size=batch_size, progress=progress,
                                         category_groups=category_groups)
        elif fmt == "mdetr":
            metrics = evaluate_grounding(predictor, path, root, progress=progress)
        else:
            raise ValueError(f"{path}: validation needs a COCO detection file or YOLO data.yaml (box AP) or an "
                             f"MDETR-style grounding file (Recall@k), got {fmt}")
        per_file[str(path)] = metrics
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key not in flat:
                flat[key] = value
    return {**flat, "files": per_file}


def check_val_files(val: Sequence[str]) -> None:
    """Before training or evaluating (and before a model loads): each --val file is one evaluation reads, and its
    images can be read where evaluation looks."""
    from glip_label.train.evaluate import check_images_readable

    for spec in val:
        path, root = parse_data_arg(spec)
        if not path.is_file():
            raise FileNotFoundError(f"validation file {path} does not exist")
        fmt, data = sniff(path)
        if fmt not in ("coco", "yolo", "mdetr"):
            raise ValueError(f"{path}: --val takes COCO detection files, YOLO data.yaml files (their val split) or "
                             "MDETR-style grounding files")
        gold = read_detection_gold(path, root) if fmt == "yolo" else data
        check_images_readable(path, root, images=gold.get("images", []))


def train_student(options: TrainStudentOptions) -> dict[str, Any]:
    """Train, write OUT/model_final.{pth,safetensors}, config.yaml, checkpoints, metrics.csv and metrics.json.

    Returns the loop's summary plus `metrics` (the final evaluation, empty without --val).
    """
    from glip_label.predictor import GLIPPredictor

    check_val_files(options.val)
    sources = load_sources(options)
    model = build_student(options)
    dataset = GroundingDataset(sources, model.config, train=True, seed=options.seed, scales=options.scales,
                               flip_prob=options.flip_prob, num_negatives=options.num_negatives)
    total = sum(len(s.samples) for s in sources)
    log.info("training on %d images from %d files: %s", total, len(sources),
             ", ".join(f"{s.name} ({len(s.samples)})" for s in sources))

    val_fn = None
    if options.val:
        def val_fn(module: torch.nn.Module) -> dict[str, Any]:
            device = next(module.parameters()).device
            predictor = GLIPPredictor(module, device=device)
            return evaluate_files(predictor, options.val, options.eval_batch_size, options.progress)

    summary = train(model, dataset, options.train_config(), options.out, resume=options.resume, val_fn=val_fn)
    metrics: dict[str, Any] = {}
    if summary.get("validation"):
        metrics = {"step": summary["step"], **summary["validation"][-1]}
    if int(os.environ.get("RANK", "0")) == 0:
        data = {"sources": [{"name": s.name, "path": str(s.path), "format": s.format, "images": len(s.samples),
                             "weight": s.weight, "stats": s.stats} for s in sources]}
        atomic_write_json(Path(options.out) / "metrics.json", {**metrics, "data": data})
    return {**summary, "metrics": metrics}


__all__ = [
    "TRAIN_CONFIG_FIELDS_NOT_OPTIONS",
    "TrainStudentOptions",
    "build_student",
    "check_val_files",
    "evaluate_files",
    "load_sources",
    "train_student",
]
