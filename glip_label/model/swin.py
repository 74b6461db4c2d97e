"""Swin Transformer v1, object-detection flavour, with GLIP's parameter names (`backbone.body.*`).

Follows the Swin-Transformer-Object-Detection code that GLIP vendors: zero padding of every block's
map to whole windows AFTER `norm1` (the padded tokens are not masked in unshifted windows, so they do
influence real tokens), a -100 mask for shifted windows computed on the padded size, PatchMerging in
the original sub-grid order, and output LayerNorms `norm1..3` (the stride-4 output has none: GLIP's
"-RETINANET" bodies use an Identity `norm0`, which owns no weights). timm's `Mlp` and `DropPath` are
used because their parameter names (`fc1`, `fc2`) and arithmetic are those of the original code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from glip_label.model.fusion import transpose_contiguous


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the (2ws-1)^2 bias table for every pair of positions in a window: [ws*ws, ws*ws] int64."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # [2, ws*ws]
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [ws*ws, ws*ws, 2]
    relative = relative + (window_size - 1)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, ws*ws, C] (H, W multiples of ws)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, ws*ws, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent, as in the official code: the checkpoints carry it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows, n, c = x.shape  # [B*nW, N, C]
        qkv = self.qkv(x).reshape(windows, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B*nW, heads, N, head_dim]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # [1, heads, N, N]
        # 4-D masks only: with a 3-D one torch 2.x's CPU SDPA takes its unfused math path (3.5x slower here).
        if mask is not None:
            num_windows = mask.shape[0]
            bias = bias + mask.unsqueeze(1)  # [nW, heads, N, N]
            bias = bias.unsqueeze(0).expand(windows // num_windows, -1, -1, -1, -1).reshape(windows, -1, n, n)
        # Fused attention; the official q*scale @ k^T + bias, softmax, @ v up to float round-off.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(windows, n, c))


class SwinBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        b, _, c = x.shape  # [B, H*W, C]
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # zeros after the norm, as in the official code
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        x = window_reverse(self.attn(window_partition(x, ws), shift_mask if self.shift_size else None), ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token, as ``maskrcnn_benchmark/modeling/backbone/swint.py::PatchMerging``.

    Sub-grid order is the original Swin's; mmcv/timm differ (mmdet's ``tools/model_converters/glip_to_mmdet.py``
    permutes these weights for that reason).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, mlp_ratio, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """-100 between tokens that came from different regions after the cyclic shift: [nW, N, N]."""
        ws, shift = self.window_size, self.shift_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        region = torch.zeros(1, hp, wp, 1, device=device)
        count = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                region[:, hs, wsl, :] = count
                count += 1
        windows = window_partition(region, ws).squeeze(-1)  # [nW, N]
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = self.shift_mask(h, w, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, h, w, mask)
        down = self.downsample(x, h, w) if self.downsample is not None else None
        return x, down


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        p = self.patch_size
        _, _, h, w = images.shape
        images = F.pad(images, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(images)  # [B, E, H/4, W/4]
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # [B, H/4 * W/4, E]


class SwinTransformer(nn.Module):
    """Returns the four stage outputs (strides 4, 8, 16, 32) as NCHW maps, after the output norms."""

    def __init__(
        self,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        self.frozen_stages = frozen_stages
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    self.num_features[i],
                    depth,
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    rates[start : start + depth],
                    downsample=i < len(depths) - 1,
                )
            )
        # norm0 is an Identity in GLIP's RETINANET bodies (no weights), norm1..3 are LayerNorms.
        self.norm0 = nn.Identity()
        for i in range(1, len(depths)):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._freeze()

    def _freeze(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.requires_grad_(False)
        for i in range(max(0, self.frozen_stages - 1)):
            self.layers[i].requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, h, w = self.patch_embed(images)  # [B, H*W, E]
        outputs = []
        for i, stage in enumerate(self.layers):
            x_out, x = stage(x, h, w)
            norm = getattr(self, f"norm{i}")
            # [B, H*W, C] -> NCHW by a blocked transpose: the same copy as permute().contiguous(), 4x faster at stride 4
            outputs.append(transpose_contiguous(norm(x_out)).view(-1, self.num_features[i], h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
        return outputs
