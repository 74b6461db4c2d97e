"""How the trained parameters are updated: the AdamW parameter groups and the learning-rate schedule.

Settings follow the official GLIP trainer (`maskrcnn_benchmark/solver/build.py`, `make_optimizer` and
`make_lr_scheduler`; `maskrcnn_benchmark/solver/lr_scheduler.py`, `WarmupMultiStepLR`): one parameter
group per (learning rate, weight decay); parameters whose name contains "language_backbone" use the
language learning rate, then every "bias" parameter gets x2 on that rate and no weight decay; the
learning rate warms up linearly from warmup_factor and drops by gamma at the milestones.
"""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch import nn

from glip_label.train.config import TrainConfig


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


def build_optimizer(model: nn.Module, train_config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the official per-parameter learning rates and weight decays (`solver/build.py`, `make_optimizer`).

    Same order of rules as `make_optimizer`: language_backbone -> lang_lr; then "bias" -> lr x
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


__all__ = ["WarmupMultiStep", "build_optimizer"]
