"""VLFuse: GLIP's bidirectional image<->text cross-attention (`rpn.head.dyhead_tower.{3i}.b_attn.*`).

Follows the official BiAttentionBlockForCheckpoint / BiMultiHeadAttention (spec §2.4.1), including
its quirks: the residuals are added to the LayerNorm-ed inputs, attention logits are clamped to
+-50000, the text side softmax (over all visual positions) has no mask, and on the image side PAD
tokens get -9e15 while valid tokens get +1 (which cancels in the softmax but is kept for bit parity).
"""

from __future__ import annotations

import torch
from torch import nn

CLAMP = 50000.0


class BiMultiHeadAttention(nn.Module):
    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for linear in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                       self.out_l_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, E] -> [B * heads, S, head_dim] (head-major, as the official `_shape`)."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2).reshape(b * self.num_heads, s, -1)

    def _merge(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        s = x.shape[1]
        return x.view(batch, self.num_heads, s, self.head_dim).transpose(1, 2).reshape(batch, s, -1)

    def forward(
        self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = visual.shape  # visual [B, N, Cv], text [B, T, Cl]
        t = text.shape[1]
        query = self._heads(self.v_proj(visual) * self.scale)
        key = self._heads(self.l_proj(text))
        value_v = self._heads(self.values_v_proj(visual))
        value_l = self._heads(self.values_l_proj(text))

        logits = torch.bmm(query, key.transpose(1, 2)).clamp(-CLAMP, CLAMP)  # [B*h, N, T]

        logits_l = logits.transpose(1, 2)  # [B*h, T, N]
        logits_l = logits_l - logits_l.max(dim=-1, keepdim=True)[0]
        probs_l = logits_l.clamp(-CLAMP, CLAMP).softmax(dim=-1)

        if text_mask is not None:
            mask = text_mask[:, None, None, :].to(logits.dtype)  # [B, 1, 1, T]: 1 valid, 0 PAD
            mask = mask.masked_fill(mask == 0, -9e15)
            logits = (logits.view(b, self.num_heads, n, t) + mask).view(b * self.num_heads, n, t)
        probs_v = logits.softmax(dim=-1)

        out_v = self.out_v_proj(self._merge(torch.bmm(probs_v, value_l), b))  # [B, N, Cv]
        out_l = self.out_l_proj(self._merge(torch.bmm(probs_l, value_v), b))  # [B, T, Cl]
        return out_v, out_l


class BiAttentionBlock(nn.Module):
    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, init_values: float) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self, visual: list[torch.Tensor], text_hidden: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        sizes = [feature.shape[-2:] for feature in visual]
        # Levels flattened row-major and concatenated P3..P7: [B, N, C]
        flat = torch.cat([feature.flatten(2).transpose(1, 2) for feature in visual], dim=1)
        v = self.layer_norm_v(flat)
        l = self.layer_norm_l(text_hidden)
        delta_v, delta_l = self.attn(v, l, text_mask)
        v = v + self.gamma_v * delta_v
        l = l + self.gamma_l * delta_l
        fused, start = [], 0
        for h, w in sizes:
            fused.append(v[:, start : start + h * w].transpose(1, 2).reshape(v.shape[0], -1, h, w))
            start += h * w
        return fused, l


class VLFuse(nn.Module):
    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, init_values: float) -> None:
        super().__init__()
        self.b_attn = BiAttentionBlock(v_dim, l_dim, embed_dim, num_heads, init_values)

    def forward(
        self, visual: list[torch.Tensor], text_hidden: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.b_attn(visual, text_hidden, text_mask)
