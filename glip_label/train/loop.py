"""The student training loop: AdamW + warm-up/multistep schedule, AMP, EMA, checkpoints, resume, DDP.

Settings follow the official GLIP trainer (glip-spec.md §6.5, `solver/build.py`, `engine/trainer.py`):
one parameter group per (learning rate, weight decay); parameters whose name contains
"language_backbone" use the language learning rate, then every "bias" parameter gets x2 on that rate
and no weight decay; the learning rate warms up linearly from warmup_factor and drops by gamma at the
milestones; gradients are clipped on the L2 norm over all trained parameters.

Crash safety: a checkpoint holds everything the next step depends on — weights, optimizer, scheduler,
AMP scaler, EMA, the RNG states of python/numpy/torch (per rank), the step and the position in the
data stream. The data stream itself is a pure function of (seed, position) (see
`glip_label.data.grounding.MixedSampler`), so a run killed at any moment and resumed from its last
checkpoint produces bit-identical weights to an uninterrupted run on CPU in deterministic mode.

DDP: under torchrun (WORLD_SIZE > 1) the process group is initialised here (gloo on CPU, nccl on
CUDA), every rank takes its slice of the global batch (batch_size x world_size) and the loss
normalisers are averaged over ranks inside `glip_losses`, so the gradient equals the one-process
gradient of the whole global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from glip_label.config import GLIPConfig
from glip_label.data.dataset import GroundingBatch, GroundingCollator, GroundingDataset
from glip_label.data.samplers import StepBatchSampler
from glip_label.io import atomic_open, atomic_write_json, atomic_write_text
from glip_label.model.anchors import grid_anchors
from glip_label.model.box_coder import BoxCoder
from glip_label.model.glip import GLIP
from glip_label.model.head import HeadOutputs
from glip_label.model.language import TextFeatures
from glip_label.precision import AMP_NAMES, check_device, parse_amp
from glip_label.train.assign import build_targets
from glip_label.train.losses import flatten_level_outputs, glip_losses

log = logging.getLogger(__name__)

TUNE_MODES = ("full", "head", "prompt")
AMP_MODES = (None, *AMP_NAMES)
# Linear probing (glip-spec §6.6): the only parameters `--tune head` trains.
HEAD_PARAMETER_PATTERN = re.compile(
    r"^rpn\.head\.(bbox_pred\.|centerness\.|dot_product_projection_text\.|log_scale$|bias_lang$|bias0$)"
)
PROMPT_PARAMETER_NAME = "rpn.tunable_linear.weight"
PROMPT_ROWS = 1000  # official ADD_LINEAR_LAYER: Linear(768 -> 1000, bias=False)
LOSS_NAMES = ("loss_dot_product_token", "loss_reg", "loss_centerness")
METRIC_FIELDS = ("step", "epoch", "loss", *LOSS_NAMES, "lr", "grad_norm", "step_time_s")
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """How to train (the model's own settings live in GLIPConfig).

    batch_size is per process; the global batch is batch_size x world size. warmup_steps None means
    min(2000, max_steps // 10) (official: 2000 iterations of runs that are far longer than 20k).
    milestones < 1 are fractions of max_steps (official round(f x MAX_ITER)), >= 1 absolute steps.
    Official values: pretraining lr 1e-4 / lang_lr 1e-5 / wd 1e-4; COCO fine-tuning lr 1e-5; prompt
    tuning lr 0.05, wd 0.25 (set them when choosing tune="prompt"). clip_grad_norm None or 0 = no clipping.
    """

    max_steps: int
    batch_size: int = 2
    lr: float = 1e-4
    lang_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int | None = None
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = (0.67, 0.89)
    gamma: float = 0.1
    clip_grad_norm: float | None = 1.0
    amp: str | None = None
    ema_decay: float | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = None
    seed: int = 0
    tune: str = "full"
    num_workers: int = 0
    log_every: int = 20
    eval_every: int | None = None
    deterministic: bool = False
    bias_lr_factor: float = 2.0
    bias_weight_decay: float = 0.0
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tune not in TUNE_MODES:
            raise ValueError(f"tune must be one of {TUNE_MODES}, got {self.tune!r}")
        parse_amp(self.amp)  # ValueError for anything but None, "fp16" or "bf16"
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1 (or None to keep all)")
        if list(self.milestone_steps) != sorted(self.milestone_steps):
            raise ValueError(f"milestones must increase, got {self.milestones}")

    @property
    def resolved_warmup_steps(self) -> int:
        return min(2000, self.max_steps // 10) if self.warmup_steps is None else int(self.warmup_steps)

    @property
    def milestone_steps(self) -> tuple[int, ...]:
        return tuple(int(round(m * self.max_steps)) if m < 1 else int(m) for m in self.milestones)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class WarmupMultiStep:
    """LR factor of step s: linear warm-up from `warmup_factor`, then x gamma at each milestone (official).

    A class rather than a lambda so that LambdaLR can put it into its state dict.
    """

    def __init__(self, warmup_steps: int, warmup_factor: float, milestones: tuple[int, ...], gamma: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            alpha = float(step) / self.warmup_steps
            factor = self.warmup_factor * (1 - alpha) + alpha
        return factor * self.gamma ** bisect_right(self.milestones, step)


# ---------------------------------------------------------------------------------------------- prompt tuning
class PromptTunedGLIP(nn.Module):
    """GLIP with the official tunable prompt (`rpn.tunable_linear`, ADD_LINEAR_LAYER, glip-spec §6.6).

    Row t of the Linear(D -> 1000, no bias) weight is added to the text features of position t (both
    `hidden` and `embedded`) before the fusion tower. The wrapper shares the GLIP's submodules and
    registers the linear inside `rpn`, so its state dict has exactly the official keys
    (`backbone.*`, `language_backbone.*`, `rpn.head.*`, `rpn.tunable_linear.weight`): the saved file
    loads into the official code with ADD_LINEAR_LAYER. An existing `rpn.tunable_linear` is reused,
    so wrapping a tuned GLIP again does not reset its prompt. `GLIPPredictor(PromptTunedGLIP(glip))`
    runs inference with the prompt.
    """

    def __init__(self, glip: GLIP, num_rows: int = PROMPT_ROWS) -> None:
        super().__init__()
        self.config: GLIPConfig = glip.config
        self.backbone = glip.backbone
        self.language_backbone = glip.language_backbone
        self.rpn = glip.rpn
        existing = getattr(glip.rpn, "tunable_linear", None)
        if not isinstance(existing, nn.Linear):
            reference = glip.rpn.head.bias_lang
            linear = nn.Linear(
                self.config.text_hidden_size, num_rows, bias=False, device=reference.device, dtype=reference.dtype
            )
            nn.init.zeros_(linear.weight)  # official init: the untuned prompt changes nothing
            glip.rpn.tunable_linear = linear

    @property
    def tunable_linear(self) -> nn.Linear:
        return self.rpn.tunable_linear

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        text = self.language_backbone(input_ids, attention_mask)
        num_tokens = input_ids.shape[1]
        rows = self.tunable_linear.weight  # [1000, D]
        if num_tokens > rows.shape[0]:
            raise ValueError(f"prompt of {num_tokens} tokens is longer than the {rows.shape[0]} tunable rows")
        prompt = rows[:num_tokens].unsqueeze(0).to(text.hidden.dtype)  # [1, T, D]
        return TextFeatures(hidden=text.hidden + prompt, embedded=text.embedded + prompt, mask=text.mask)

    def forward(self, images: torch.Tensor, text: TextFeatures) -> HeadOutputs:
        visual = self.backbone(images)  # [P3..P7]
        return self.rpn.head(visual, text.expand(images.shape[0]))


def load_prompt_tuned(
    weights: str | Path,
    config: GLIPConfig | str | Path | None = None,
    device: str | torch.device = "cpu",
):
    """A GLIPPredictor for a checkpoint that holds `rpn.tunable_linear.weight` (prompt-tuned).

    `glip_label.load_model` drops that key (with a warning) because a plain GLIP has no prompt; this
    keeps it and runs inference through `PromptTunedGLIP`.
    """
    from glip_label.config import resolve_config
    from glip_label.predictor import GLIPPredictor
    from glip_label.weights import load_state_dict_strict, read_checkpoint, read_config_metadata, resolve_weights

    path, preset = resolve_weights(weights)
    if config is None:
        stored = read_config_metadata(path)
        cfg = GLIPConfig.from_dict(stored) if stored else resolve_config(preset)
    else:
        cfg = resolve_config(config)
    state = read_checkpoint(path)
    if PROMPT_PARAMETER_NAME not in state:
        raise ValueError(f"{path}: no {PROMPT_PARAMETER_NAME}; this is not a prompt-tuned checkpoint (use load_model)")
    model = PromptTunedGLIP(GLIP(cfg), num_rows=int(state[PROMPT_PARAMETER_NAME].shape[0]))
    load_state_dict_strict(model, state, source=str(path))
    return GLIPPredictor(model, device, source=str(path))


def _frozen_by_config(name: str, config: GLIPConfig) -> bool:
    """Swin parts frozen by FREEZE_CONV_BODY_AT (patch_embed from 0, stage i below freeze_at - 1)."""
    freeze_at = config.freeze_backbone_at
    if freeze_at >= 0 and name.startswith("backbone.body.patch_embed."):
        return True
    match = re.match(r"^backbone\.body\.layers\.(\d+)\.", name)
    return bool(match) and int(match.group(1)) < freeze_at - 1


def prepare_model_for_tuning(model: GLIP | PromptTunedGLIP, tune: str) -> nn.Module:
    """Set requires_grad for a tuning mode and return the module to train.

    full:   everything except the Swin stages the config freezes (GLIP-L freezes patch_embed + stage 0);
    head:   linear probing — bbox_pred, centerness, dot_product_projection_text, log_scale, bias_lang, bias0;
    prompt: only the tunable prompt rows (the model is wrapped in `PromptTunedGLIP`).
    """
    if tune not in TUNE_MODES:
        raise ValueError(f"tune must be one of {TUNE_MODES}, got {tune!r}")
    if tune == "prompt" and not isinstance(model, PromptTunedGLIP):
        model = PromptTunedGLIP(model)
    config: GLIPConfig = model.config
    for name, parameter in model.named_parameters():
        if tune == "full":
            trainable = not _frozen_by_config(name, config)
        elif tune == "head":
            trainable = HEAD_PARAMETER_PATTERN.match(name) is not None
        else:
            trainable = name == PROMPT_PARAMETER_NAME
        parameter.requires_grad_(trainable)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"tune={tune!r} leaves no parameter to train")
    return model


def build_optimizer(model: nn.Module, train_config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the official per-parameter learning rates and weight decays (glip-spec §6.5).

    Same order of rules as `solver/build.py`: language_backbone -> lang_lr; then "bias" -> lr x
    bias_lr_factor and weight decay bias_weight_decay. Parameters sharing (lr, wd) share a group.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = train_config.lang_lr if "language_backbone" in name else train_config.lr
        weight_decay = train_config.weight_decay
        if "bias" in name:
            lr *= train_config.bias_lr_factor
            weight_decay = train_config.bias_weight_decay
        groups.setdefault((lr, weight_decay), []).append(parameter)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    # foreach: one fused kernel per group instead of a Python loop over ~300 small tensors (CPU defaults to
    # the loop, which made the optimizer step a sizeable share of a glip-tiny step).
    return torch.optim.AdamW(param_groups, lr=train_config.lr, weight_decay=train_config.weight_decay, foreach=True)


class ModelEma:
    """Exponential moving average of every floating state entry (official `utils/ema.py::ModelEma`)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model_state = model.state_dict()
        for key, ema_value in self.module.state_dict().items():
            value = model_state[key].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(self.decay).add_(value.to(ema_value.dtype), alpha=1.0 - self.decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


class _TrainForward(nn.Module):
    """Text encoding + detector in one forward, so DDP sees (and synchronises) the whole graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        text = self.model.encode_text(input_ids, attention_mask)
        outputs = self.model(images, text)
        return outputs.box_regression, outputs.centerness, outputs.token_logits


# ---------------------------------------------------------------------------------------------- distributed
@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = check_device(device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.type == "cuda":
        if world_size > 1:
            chosen = torch.device("cuda", local_rank)
        elif chosen.index is None:
            chosen = torch.device("cuda", 0)
        torch.cuda.set_device(chosen)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        created = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world_size, local_rank, chosen, created)


def _gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# ---------------------------------------------------------------------------------------------- RNG / files
def _rng_state() -> dict[str, Any]:
    """RNG states in types `torch.load(weights_only=True)` accepts (no numpy objects)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename: a kill never leaves half a file."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of out_dir/checkpoints/ckpt-{step}.pt, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1][1] if checkpoints else None


class _MetricsWriter:
    """metrics.csv (one row per logged step) and, when `torch.utils.tensorboard` imports, TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        self.path = out_dir / "metrics.csv"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step)
        except Exception as exc:  # noqa: BLE001 - tensorboard is optional (ImportError or a broken install)
            log.debug("TensorBoard logging disabled: %s", exc)

    def _truncate_after(self, step: int) -> None:
        """Rows logged after the checkpoint belong to the killed run; the resumed run writes them again."""
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.DictReader(fh) if int(row["step"]) <= step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        new_file = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, lineterminator="\n")
            if new_file:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})
        if self._tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, float) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"train/{key}", value, row["step"])

    def write_validation(self, step: int, metrics: dict[str, Any]) -> None:
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"val/{key}", value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run into `out_dir` (see the module docstring; `train` is the usual entry point)."""

    def __init__(
        self,
        model: GLIP | PromptTunedGLIP,
        dataset: GroundingDataset,
        train_config: TrainConfig,
        out_dir: str | Path,
        resume: bool = False,
        val_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
        ctx: DistContext | None = None,
    ) -> None:
        self.train_config = train_config
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.val_fn = val_fn
        self.ctx = ctx or setup_distributed(train_config.device)
        self.device = self.ctx.device
        self.config: GLIPConfig = model.config

        existing = latest_checkpoint(self.out_dir)
        if existing is not None and not resume:
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints ({existing.name}); resume with resume=True "
                "(--resume) or choose a new output folder"
            )
        if not (resume and existing is not None):
            _seed_everything(train_config.seed + self.ctx.rank)

        self.model = prepare_model_for_tuning(model, train_config.tune).to(self.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # The official trainer puts a frozen language backbone in eval mode (LANGUAGE_BACKBONE.FREEZE):
        # frozen BERT then gives the same features every time (no dropout).
        self.language_frozen = not any(p.requires_grad for p in self.model.language_backbone.parameters())
        self.optimizer = build_optimizer(self.model, train_config)
        self.schedule = WarmupMultiStep(
            train_config.resolved_warmup_steps, train_config.warmup_factor, train_config.milestone_steps,
            train_config.gamma,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        amp_dtype = parse_amp(train_config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None
        self.ema = ModelEma(self.model, train_config.ema_decay) if train_config.ema_decay else None
        forward = _TrainForward(self.model)
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(forward, device_ids=device_ids)
        self.forward = forward
        self.box_coder = BoxCoder()
        self._anchor_cache: dict[tuple, list[torch.Tensor]] = {}

        self.mixed = dataset.sampler(seed=train_config.seed)
        self.global_batch = train_config.batch_size * self.ctx.world_size
        self.step = 0
        self.stream_position = 0
        self.skipped_steps = 0
        self.last_losses: dict[str, float] = {}
        self.validation: list[dict[str, Any]] = []
        resumed_from = None
        if resume and existing is not None:
            resumed_from = existing
            self._load_checkpoint(existing)
        elif resume:
            log.info("resume requested but %s holds no checkpoint: starting from scratch", self.out_dir)
        self.resumed_from = resumed_from
        self.metrics = (
            _MetricsWriter(self.out_dir, self.step if resumed_from else None) if self.ctx.is_main else None
        )

    # ------------------------------------------------------------------ helpers
    def _set_train_mode(self) -> None:
        self.model.train()
        if self.language_frozen:
            self.model.language_backbone.eval()

    def _anchors(self, feature_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        key = tuple(feature_sizes)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = grid_anchors(
                feature_sizes, self.config.anchor_strides, self.config.anchor_sizes, device=self.device
            )
        return self._anchor_cache[key]

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = parse_amp(self.train_config.amp)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.ctx.world_size
        return values

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: GroundingBatch) -> tuple[dict[str, float], float]:
        """Forward, losses, backward, clip, optimizer and scheduler step. Returns (losses, grad norm)."""
        batch = batch.to(self.device, non_blocking=True)
        with self._autocast():
            box_regression, centerness, token_logits = self.forward(batch.images, batch.input_ids, batch.attention_mask)
        feature_sizes = [tuple(level.shape[-2:]) for level in centerness]
        anchors = self._anchors(feature_sizes)
        num_tokens = batch.input_ids.shape[1]
        targets = [
            build_targets(anchors, boxes, positive_map, num_tokens, self.box_coder, topk=self.config.atss_topk)
            for boxes, positive_map in zip(batch.boxes, batch.positive_maps, strict=True)
        ]
        flat = flatten_level_outputs(box_regression, centerness, token_logits)
        loss_dict = glip_losses(
            flat, targets, self.box_coder, reg_loss_weight=self.config.reg_loss_weight, text_mask=batch.attention_mask
        )
        loss = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        max_norm = self.train_config.clip_grad_norm or float("inf")
        # After DDP's all-reduce every rank holds the same gradients, hence the same norm and decision.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        values = torch.stack([loss.detach().float()] + [loss_dict[k].detach().float() for k in LOSS_NAMES])
        values = self._mean_over_ranks(values)
        # The step's one host sync (on CUDA): the logged losses and the norm that decides the update, together.
        *values, grad_norm_value = torch.cat([values, grad_norm.detach().float().reshape(1)]).tolist()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips by itself on inf/NaN gradients
            self.scaler.update()
        elif math.isfinite(grad_norm_value):
            self.optimizer.step()
        else:
            # The official trainer zeroes NaN losses and steps on; skipping the update is the same
            # intent without pushing NaN moments into AdamW.
            self.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, update skipped", self.step + 1)
        self.scheduler.step()

        losses = {"loss": values[0], **dict(zip(LOSS_NAMES, values[1:], strict=True))}
        return losses, grad_norm_value

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self, step: int) -> Path:
        return self.out_dir / "checkpoints" / f"ckpt-{step}.pt"

    def save_checkpoint(self) -> Path | None:
        rng_states = _gather_objects(_rng_state(), self.ctx)
        path = self._checkpoint_path(self.step)
        if self.ctx.is_main:
            epoch, offset = self.mixed.position(self.stream_position)
            payload = {
                "version": CHECKPOINT_VERSION,
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng_states,
                "data": {"stream_position": self.stream_position, "epoch": epoch, "offset": offset},
                "skipped_steps": self.skipped_steps,
                "world_size": self.ctx.world_size,
                "train_config": self.train_config.to_dict(),
                "glip_config": self.config.to_dict(),
            }
            _atomic_torch_save(payload, path)
            keep = self.train_config.keep_checkpoints
            if keep is not None:
                for _step, old in list_checkpoints(self.out_dir)[:-keep]:
                    old.unlink(missing_ok=True)
        _barrier(self.ctx)
        return path if self.ctx.is_main else None

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        saved = state["train_config"]
        for key in ("tune", "seed"):
            if saved.get(key) != getattr(self.train_config, key):
                now = getattr(self.train_config, key)
                raise ValueError(f"{path}: was trained with {key}={saved.get(key)!r}, now {key}={now!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule is rebuilt from this run's TrainConfig (a longer max_steps moves the milestones).
        self.scheduler.lr_lambdas[0] = self.schedule
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.stream_position = int(state["data"]["stream_position"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            _set_rng_state(rng_states[self.ctx.rank])
        else:
            log.warning("%s was written by %d processes, now %d: RNG streams restart", path, len(rng_states),
                        self.ctx.world_size)
            _seed_everything(self.train_config.seed + self.ctx.rank + self.step)
        log.info("resumed from %s at step %d (stream position %d)", path, self.step, self.stream_position)

    # ------------------------------------------------------------------ run
    def _loader(self) -> DataLoader:
        batches = StepBatchSampler(
            self.mixed, self.train_config.batch_size, self.step, self.train_config.max_steps,
            start_position=self.stream_position, rank=self.ctx.rank, world_size=self.ctx.world_size,
        )  # fmt: skip
        # Its own generator: creating a DataLoader iterator draws a base seed, and from the global RNG
        # that draw would shift the dropout stream of a resumed run against an uninterrupted one.
        generator = torch.Generator().manual_seed(self.train_config.seed * 1_000_003 + self.ctx.rank + self.step)
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=GroundingCollator(self.config.size_divisibility),
            num_workers=self.train_config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )

    def _progress(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=self.train_config.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.ctx.is_main and self.train_config.progress),
        )

    def _validate(self) -> None:
        if self.val_fn is None:
            return
        if self.ctx.is_main:
            self.model.eval()
            with torch.no_grad():
                metrics = dict(self.val_fn(self.model))
            self._set_train_mode()
            record = {"step": self.step, **metrics}
            self.validation.append(record)
            with open(self.out_dir / "val_metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=float) + "\n")
            if self.metrics is not None:
                self.metrics.write_validation(self.step, metrics)
        _barrier(self.ctx)

    def run(self) -> dict[str, Any]:
        cfg = self.train_config
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out_dir / "train_config.json", cfg.to_dict())
        self._set_train_mode()
        started = time.perf_counter()
        last_checkpoint_step = self.step if self.resumed_from else -1
        progress = self._progress()
        tick = time.perf_counter()
        try:
            for batch in self._loader():
                losses, grad_norm = self.train_step(batch)
                self.step += 1
                self.stream_position += self.global_batch
                if self.ema is not None:
                    self.ema.update(self.model)
                now = time.perf_counter()
                self.last_losses = losses
                lr = cfg.lr * self.schedule(self.step - 1)  # the base lr this step was taken with
                if self.ctx.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    epoch, _ = self.mixed.position(self.stream_position - 1)
                    row = {"step": self.step, "epoch": epoch, **losses, "grad_norm": grad_norm,
                           "lr": lr, "step_time_s": now - tick}  # fmt: skip
                    self.metrics.write(row)
                progress.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}")
                progress.update(1)
                tick = now
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
                    last_checkpoint_step = self.step
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != cfg.max_steps:
                    self._validate()
        finally:
            progress.close()
        if last_checkpoint_step != self.step:
            self.save_checkpoint()
        self._validate()
        outputs = self._write_final_outputs()
        if self.metrics is not None:
            self.metrics.close()
        return {
            "step": self.step,
            "out_dir": str(self.out_dir),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "world_size": self.ctx.world_size,
            "global_batch": self.global_batch,
            "skipped_steps": self.skipped_steps,
            "last_losses": self.last_losses,
            "validation": self.validation,
            "wall_s": time.perf_counter() - started,
            **outputs,
        }

    def _write_final_outputs(self) -> dict[str, Any]:
        from glip_label.weights import save_checkpoint

        outputs: dict[str, Any] = {}
        if self.ctx.is_main:
            import yaml

            config_dict = self.config.to_dict()
            pth = self.out_dir / "model_final.pth"
            safetensors = self.out_dir / "model_final.safetensors"
            save_checkpoint(self.model, pth, config_dict=config_dict)
            save_checkpoint(self.model, safetensors, config_dict=config_dict)
            atomic_write_text(self.out_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))
            outputs = {"model_final": str(pth), "model_final_safetensors": str(safetensors)}
            if self.ema is not None:
                ema_path = self.out_dir / "model_final_ema.pth"
                save_checkpoint(self.ema.module, ema_path, config_dict=config_dict)
                outputs["model_final_ema"] = str(ema_path)
            summary = {k: v for k, v in outputs.items()} | {
                "step": self.step, "last_losses": self.last_losses, "skipped_steps": self.skipped_steps
            }
            atomic_write_json(self.out_dir / "train_summary.json", summary)
        _barrier(self.ctx)
        return outputs


def _restore_determinism(enabled: bool, warn_only: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the run only (the setting is process-global, so it is restored after)."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: ops without a deterministic kernel warn instead of failing ("where possible").
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        _restore_determinism(*previous)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous_cudnn


def train(
    model: GLIP | PromptTunedGLIP,
    dataset: GroundingDataset,
    train_config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    val_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train `model` in place on `dataset`; write checkpoints, metrics.csv and the final weights to out_dir.

    resume=True continues from the newest out_dir/checkpoints/ckpt-{step}.pt (or starts fresh if there
    is none); resume=False refuses a folder that already has checkpoints. val_fn(model) -> metrics is
    called on rank 0 every eval_every steps and at the end (results in val_metrics.jsonl).
    With tune="prompt" the trained module is `PromptTunedGLIP(model)` (wrapping again returns it).
    Returns a JSON-serialisable summary (final step, last losses, output paths, validation results).
    """
    ctx = setup_distributed(train_config.device)
    try:
        with _determinism(train_config.deterministic):
            trainer = Trainer(model, dataset, train_config, out_dir, resume=resume, val_fn=val_fn, ctx=ctx)
            return trainer.run()
    finally:
        if ctx.created_group:
            dist.destroy_process_group()


__all__ = [
    "ModelEma",
    "PromptTunedGLIP",
    "TrainConfig",
    "Trainer",
    "WarmupMultiStep",
    "build_optimizer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_prompt_tuned",
    "prepare_model_for_tuning",
    "setup_distributed",
    "train",
]
