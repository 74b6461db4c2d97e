"""The language backbone: transformers' BertModel under GLIP's names (`language_backbone.body.model.*`).

Built from a config, never from the hub: the GLIP checkpoint carries every BERT weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig, BertModel


@dataclass
class TextFeatures:
    """Encoded prompt(s).

    hidden:   [B, T, D] last BERT layer, PAD rows not zeroed (the fusion tower's input)
    embedded: [B, T, D] the same with PAD rows zeroed (GLIP-T(A)'s token-head input)
    mask:     [B, T] int64 attention mask, 1 for [CLS], tokens and [SEP]
    """

    hidden: torch.Tensor
    embedded: torch.Tensor
    mask: torch.Tensor

    def expand(self, batch_size: int) -> TextFeatures:
        """One prompt shared by a batch of images, without copying."""
        if self.hidden.shape[0] == batch_size:
            return self
        if self.hidden.shape[0] != 1:
            raise ValueError(f"cannot expand text features of batch {self.hidden.shape[0]} to {batch_size}")
        return TextFeatures(
            self.hidden.expand(batch_size, -1, -1),
            self.embedded.expand(batch_size, -1, -1),
            self.mask.expand(batch_size, -1),
        )


def bert_config(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_positions: int,
) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )


class BertEncoder(nn.Module):
    """Holds `model` so that keys read `language_backbone.body.model.*` as in the official code."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.model = BertModel(config, add_pooling_layer=False)


class LanguageBackbone(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.body = BertEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        out = self.body.model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state  # [B, T, D]
        embedded = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=embedded, mask=attention_mask)
