"""The official tunable prompt: which module adds it, and where its weight lives in a state dict.

`rpn.tunable_linear` is the official ADD_LINEAR_LAYER of prompt tuning ("language_prompt_v2" in
`tools/finetune.py`, `tuning_highlevel_override`): created in
`maskrcnn_benchmark/modeling/rpn/vldyhead.py`, `VLDyHeadModule.__init__`, and added to the text
features in `VLDyHeadModule.forward`. `glip_label.predictor.load_model` builds a `PromptTunedGLIP` for
a checkpoint holding that weight; `glip_label.train` builds one for `--tune prompt`.
"""

from __future__ import annotations

import torch
from torch import nn

from glip_label.config import GLIPConfig
from glip_label.model.glip import GLIP
from glip_label.model.head import HeadOutputs
from glip_label.model.language import TextFeatures

PROMPT_ROWS = 1000  # official ADD_LINEAR_LAYER: Linear(768 -> 1000, bias=False)


class PromptTunedGLIP(nn.Module):
    """GLIP with the official tunable prompt (`rpn.tunable_linear`, `VLDyHeadModule` in vldyhead.py).

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


__all__ = ["PROMPT_ROWS", "PromptTunedGLIP"]
