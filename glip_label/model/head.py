"""VLDyHead: the fusion/DyHead tower and the box, centerness and token-logit heads (`rpn.head.*`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glip_label.config import GLIPConfig
from glip_label.model.dyhead import BertEncoderLayer, DyConv
from glip_label.model.fusion import VLFuse
from glip_label.model.language import TextFeatures

CLAMP = 50000.0


@dataclass
class HeadOutputs:
    """Raw per-level head outputs for levels P3..P7.

    box_regression: [B, 4, H_l, W_l] deltas in the (10, 10, 5, 5) parametrisation, after the level scale
    centerness:     [B, 1, H_l, W_l] logits
    token_logits:   [B, H_l*W_l, T] one logit per location and prompt token (row-major locations)
    """

    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    token_logits: list[torch.Tensor]

    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        return [tuple(x.shape[-2:]) for x in self.centerness]


class Scale(nn.Module):
    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TextPassThrough(nn.Module):
    """Stands where the official code puts a parameter-free DummyLayer (keeps the tower's indices)."""

    def forward(self, text_hidden: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return text_hidden


class VLDyHead(nn.Module):
    def __init__(self, config: GLIPConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config.channels, config.text_hidden_size
        tower: list[nn.Module] = []
        for i in range(config.num_convs):
            if config.early_fuse:
                tower.append(VLFuse(c, d, config.fusion_embed_dim, config.fusion_num_heads, 1.0 / config.num_convs))
                if config.fused_features_dot_product or i < config.num_convs - 1:
                    tower.append(BertEncoderLayer(d, config.text_num_heads, config.text_intermediate_size))
                else:
                    tower.append(TextPassThrough())
            tower.append(DyConv(c, config.gn_groups))
        self.dyhead_tower = nn.ModuleList(tower)

        self.bbox_pred = nn.Conv2d(c, 4, 1)
        self.centerness = nn.Conv2d(c, 1, 1)
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.ModuleList(Scale(1.0) for _ in config.anchor_strides)
        self.dot_product_projection_text = nn.Linear(d, c, bias=True)
        self.log_scale = nn.Parameter(torch.tensor([config.log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(d))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - config.prior_prob) / config.prior_prob)]))

    def run_tower(self, visual: list[torch.Tensor], text: TextFeatures) -> tuple[list[torch.Tensor], torch.Tensor]:
        text_hidden = text.hidden
        for block in self.dyhead_tower:
            if isinstance(block, VLFuse):
                visual, text_hidden = block(visual, text_hidden, text.mask)
            elif isinstance(block, DyConv):
                visual = block(visual)
            else:
                text_hidden = block(text_hidden, text.mask)
        return visual, text_hidden

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> HeadOutputs:
        visual, text_hidden = self.run_tower(visual, text)
        device_type = visual[0].device.type
        if not torch.is_autocast_enabled(device_type):
            return self.predict_outputs(visual, text_hidden, text.embedded)
        # fp32 island under AMP (the scores): the token logits are dot products divided by the temperature, which
        # multiplies a half-precision rounding error many times (x90 at log_scale -4.5); these 1x1 convs and one
        # matmul per level cost little next to the tower.
        with torch.autocast(device_type, enabled=False):
            return self.predict_outputs([v.float() for v in visual], text_hidden.float(), text.embedded.float())

    def predict_outputs(
        self, visual: list[torch.Tensor], text_hidden: torch.Tensor, text_embedded: torch.Tensor
    ) -> HeadOutputs:
        """Box deltas, centerness and token logits from the tower's outputs (levels P3..P7)."""
        embedding = text_hidden if self.config.fused_features_dot_product else text_embedded
        embedding = F.normalize(embedding, p=2, dim=-1)  # [B, T, D]
        token_embeds = self.dot_product_projection_text(embedding / 2.0)  # [B, T, C]
        token_bias = torch.matmul(embedding, self.bias_lang) + self.bias0  # [B, T]
        inv_temperature = self.log_scale.exp()
        box_regression, centerness, token_logits = [], [], []
        for level, feature in enumerate(visual):
            box_regression.append(self.scales[level](self.bbox_pred(feature)))
            centerness.append(self.centerness(feature))
            queries = feature.flatten(2).transpose(1, 2)  # [B, H*W, C]
            logits = torch.matmul(queries, token_embeds.transpose(-1, -2)) / inv_temperature + token_bias[:, None, :]
            token_logits.append(logits.clamp(-CLAMP, CLAMP))  # [B, H*W, T]
        return HeadOutputs(box_regression, centerness, token_logits)


class VLDyHeadModule(nn.Module):
    """Holds the head as `rpn.head` (the official anchor buffers are recomputed, not stored)."""

    def __init__(self, config: GLIPConfig) -> None:
        super().__init__()
        self.head = VLDyHead(config)
