"""How a student is trained: `TrainConfig`, the settings of one run (the model's own live in GLIPConfig).

The defaults follow the official GLIP-T pretraining settings (`maskrcnn_benchmark/config/defaults.py`
merged with the pretrain yamls, read by `maskrcnn_benchmark/solver/build.py`, `make_optimizer` and
`make_lr_scheduler`); `glip_label.runs.train_student.TrainStudentOptions` fills it from the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from glip_label.precision import AMP_NAMES, parse_amp

TUNE_MODES = ("full", "head", "prompt")
AMP_MODES = (None, *AMP_NAMES)


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


__all__ = ["AMP_MODES", "TUNE_MODES", "TrainConfig"]
