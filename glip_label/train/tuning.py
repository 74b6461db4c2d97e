"""Which parameters a tuning mode trains (`--tune full|head|prompt`), and which the config freezes.

The official fine-tuning script sets the same flags: `tools/finetune.py`, `tuning_highlevel_override`
("full", "linear_prob", "language_prompt_v2") and the requires_grad rules in its `train`; the frozen
Swin stages are those of FREEZE_CONV_BODY_AT (`maskrcnn_benchmark/modeling/backbone/swint.py`,
`SwinTransformer._freeze_stages`).
"""

from __future__ import annotations

import re

from torch import nn

from glip_label.config import GLIPConfig
from glip_label.model.glip import GLIP
from glip_label.model.prompt_tuned import PromptTunedGLIP
from glip_label.train.config import TUNE_MODES
from glip_label.weights.keys import PROMPT_KEY

# Linear probing (`tools/finetune.py`, MODEL.LINEAR_PROB): the only parameters `--tune head` trains.
HEAD_PARAMETER_PATTERN = re.compile(
    r"^rpn\.head\.(bbox_pred\.|centerness\.|dot_product_projection_text\.|log_scale$|bias_lang$|bias0$)"
)


def frozen_by_config(name: str, config: GLIPConfig) -> bool:
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
            trainable = not frozen_by_config(name, config)
        elif tune == "head":
            trainable = HEAD_PARAMETER_PATTERN.match(name) is not None
        else:
            trainable = name == PROMPT_KEY
        parameter.requires_grad_(trainable)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"tune={tune!r} leaves no parameter to train")
    return model


__all__ = ["HEAD_PARAMETER_PATTERN", "frozen_by_config", "prepare_model_for_tuning"]
