"""The exponential moving average of the weights kept beside the trained model (`--ema-decay`).

Official: `maskrcnn_benchmark/utils/ema.py`, `ModelEma`, updated after every step in
`maskrcnn_benchmark/engine/trainer.py`, `do_train` (SOLVER.MODEL_EMA).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


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


__all__ = ["ModelEma"]
