"""DyHead blocks of GLIP's VLDyHead tower: DyConv (`DyConv.{0,1,2}`, `offset`, `AttnConv`, `relu`),
DyReLU, and the head's BERT layer (`attention.*`, `intermediate.*`, `output.*`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glip_label.model.dcn import ModulatedDeformConv
from glip_label.model.fusion import transpose_contiguous
from glip_label.precision import HALF_DTYPES

CLAMP = 50000.0


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    # Official: ReLU6(x + 3) * (h_max / 6) with h_max = 1.
    return F.relu6(x + 3.0) * (1.0 / 6.0)


def contiguous_nchw(x: torch.Tensor) -> torch.Tensor:
    """An NCHW-contiguous copy of x (x itself if it is one), by a blocked transpose for channels-last layouts.

    VLFuse hands DyConv its levels as channels-last views of one [B, N, C] tensor. At batch 1 conv2d makes a
    slow strided NCHW copy of such a view (the offset conv then takes ~4x its time at P3), so converting it
    first gives the same numbers faster; at batch > 1 conv2d took its channels-last algorithm instead, so
    now every batch size computes the offsets as batch 1 does.
    """
    if x.is_contiguous():
        return x
    b, c, h, w = x.shape
    return transpose_contiguous(x.permute(0, 2, 3, 1).reshape(b, h * w, c)).view(b, c, h, w)


class Conv3x3Norm(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, gn_groups: int) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv(in_channels, out_channels, 3, stride, 1)
        self.bn = nn.GroupNorm(gn_groups, out_channels)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x, offset, mask))


class DyReLU(nn.Module):
    """Dynamic ReLU-B with bias: out = max(x*a1 + b1, x*a2 + b2), coefficients from global context."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        # fc.1 is ReLU; the final h_sigmoid (fc.3 in the official code) owns no weights.
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True), nn.Linear(channels // reduction,
                                                                                          4 * channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        coeffs = h_sigmoid(self.fc(x.mean(dim=(2, 3)))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(coeffs, c, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0 + 0.0
        b1 = b1 - 0.5 + 0.0
        b2 = b2 - 0.5 + 0.0
        return torch.max(x * a1 + b1, x * a2 + b2)


class DyConv(nn.Module):
    """One DyHead block over the 5 pyramid levels (official ``maskrcnn_benchmark/modeling/rpn/vldyhead.py::DyConv``).

    Per level l: offsets/masks come from level l and are shared by the three deformable convs: on level l
    (stride 1), on the finer level l-1 (stride 2) and on the coarser level l+1 (stride 1, then bilinear
    upsampling with align_corners=True). Scale attention weights each term, the mean is taken, then DyReLU.
    """

    def __init__(self, channels: int, gn_groups: int) -> None:
        super().__init__()
        self.DyConv = nn.ModuleList([
            Conv3x3Norm(channels, channels, 1, gn_groups),  # coarser neighbour
            Conv3x3Norm(channels, channels, 1, gn_groups),  # same level
            Conv3x3Norm(channels, channels, 2, gn_groups),  # finer neighbour
        ])
        self.AttnConv = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1, 1), nn.ReLU(inplace=True))
        self.relu = DyReLU(channels)
        self.offset = nn.Conv2d(channels, 27, 3, 1, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.DyConv.modules():
            if isinstance(module, ModulatedDeformConv):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.AttnConv[1].weight, std=0.01)
        nn.init.zeros_(self.AttnConv[1].bias)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, visual: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, feature in enumerate(visual):
            offset_mask = self.offset(contiguous_nchw(feature))  # [B, 27, H, W]
            offset = offset_mask[:, :18]
            mask = offset_mask[:, 18:].sigmoid()
            terms = [self.DyConv[1](feature, offset, mask)]
            if level > 0:
                terms.append(self.DyConv[2](visual[level - 1], offset, mask))
            if level < len(visual) - 1:
                coarser = self.DyConv[0](visual[level + 1], offset, mask)
                terms.append(F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            stacked = torch.stack(terms)  # [n_terms, B, C, H, W]
            attention = h_sigmoid(torch.stack([self.AttnConv(term) for term in terms]))  # [n_terms, B, 1, 1, 1]
            outputs.append(torch.mean(stacked * attention, dim=0))
        return [self.relu(x) for x in outputs]


class BertSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = hidden.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, T, hd]

        q, k, v = heads(self.query(hidden)), heads(self.key(hidden)), heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if scores.dtype in HALF_DTYPES:  # fp32 island: clamp + a dtype-min mask overflows fp16; fp32 softmax
            scores = scores.float()
        # GLIP clamps the scores BEFORE adding the mask (CLAMP_BERTATTN_*_FOR_*), unlike HF's BertLayer.
        scores = scores.clamp(-CLAMP, CLAMP) + additive_mask
        context = torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)
        return context.transpose(1, 2).reshape(b, t, d)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden_size: int, in_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden_size, num_heads)
        self.output = BertSelfOutput(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, additive_mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertEncoderLayer(nn.Module):
    """A post-LN BERT layer on the prompt inside the tower; its own weights, not the backbone's."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int) -> None:
        super().__init__()
        self.attention = BertAttention(hidden_size, num_heads)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size)
        self.output = BertSelfOutput(hidden_size, intermediate_size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, text_hidden: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        # HF's extended mask: 0 for valid keys, dtype-min for PAD keys, broadcast over heads and queries.
        additive = (1.0 - text_mask[:, None, None, :].to(text_hidden.dtype)) * torch.finfo(text_hidden.dtype).min
        attended = self.attention(text_hidden, additive)
        return self.output(self.intermediate(attended), attended)
