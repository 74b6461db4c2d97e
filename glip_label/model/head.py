"""VLDyHead: the fusion/DyHead tower and the box, centerness and token-logit heads (`rpn.head.*`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def fp32_island(device_type: str) -> Iterator[bool]:
    """Under AMP, run the scores in fp32 (yields True; the caller casts its inputs); else do nothing.

    The token logits are dot products divided by the temperature, which multiplies a half-precision rounding
    error many times (x90 at log_scale -4.5); these 1x1 convs and one matmul per level cost little next to the
    tower.
    """
    if not torch.is_autocast_enabled(device_type):
        yield False
        return
    with torch.autocast(device_type, enabled=False):
        yield True


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

    @property
    def tower_uses_text(self) -> bool:
        """False for GLIP-T(A) (no fusion): the tower, box and centerness outputs depend on the image alone."""
        return self.config.early_fuse

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> HeadOutputs:
        visual, text_hidden = self.run_tower(visual, text)
        box_regression, centerness = self.box_outputs(visual)
        return HeadOutputs(box_regression, centerness, self.token_logits(visual, text, text_hidden))

    def box_outputs(self, tower_visual: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: box deltas [B, 4, H_l, W_l] after the level scale, centerness logits [B, 1, H_l, W_l]."""
        with fp32_island(tower_visual[0].device.type) as island:
            return self._box_outputs([v.float() for v in tower_visual] if island else tower_visual)

    def _box_outputs(self, tower_visual: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        box_regression = [self.scales[level](self.bbox_pred(feature)) for level, feature in enumerate(tower_visual)]
        return box_regression, [self.centerness(feature) for feature in tower_visual]

    def run_visual_tower(self, visual: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tower of a no-fusion head (DyConv blocks only), which needs no text.

        Computed once per image batch and finished for each prompt chunk by `token_logits`: a large
        vocabulary then costs one visual pass plus one dot product per chunk.
        """
        if self.tower_uses_text:
            raise ValueError("this tower fuses text into the image features: run the whole head per prompt chunk")
        for block in self.dyhead_tower:
            visual = block(visual)
        return visual

    def token_logits(
        self, tower_visual: list[torch.Tensor], text: TextFeatures, text_hidden: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per level [B, H_l*W_l, T]: the scaled, biased dot product of tower features and token embeddings.

        text_hidden: the tower's text output (fused models); None means the BERT output `text.hidden`.
        """
        text_hidden = text.hidden if text_hidden is None else text_hidden
        with fp32_island(tower_visual[0].device.type) as island:
            if island:
                tower_visual, text_hidden = [v.float() for v in tower_visual], text_hidden.float()
                text = TextFeatures(text.hidden.float(), text.embedded.float(), text.mask)
            return self._token_logits(tower_visual, text, text_hidden)

    def _token_logits(
        self, tower_visual: list[torch.Tensor], text: TextFeatures, text_hidden: torch.Tensor
    ) -> list[torch.Tensor]:
        embedding = text_hidden if self.config.fused_features_dot_product else text.embedded
        embedding = F.normalize(embedding, p=2, dim=-1)  # [B, T, D]
        token_embeds = self.dot_product_projection_text(embedding / 2.0)  # [B, T, C]
        token_bias = torch.matmul(embedding, self.bias_lang) + self.bias0  # [B, T]
        inv_temperature = self.log_scale.exp()
        token_logits = []
        for feature in tower_visual:
            queries = feature.flatten(2).transpose(1, 2)  # [B, H*W, C]
            logits = torch.matmul(queries, token_embeds.transpose(-1, -2)) / inv_temperature + token_bias[:, None, :]
            token_logits.append(logits.clamp(-CLAMP, CLAMP))  # [B, H*W, T]
        return token_logits


class VLDyHeadModule(nn.Module):
    """Holds the head as `rpn.head` (the official anchor buffers are recomputed, not stored)."""

    def __init__(self, config: GLIPConfig) -> None:
        super().__init__()
        self.head = VLDyHead(config)
