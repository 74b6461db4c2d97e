"""Modulated deformable convolution (DCNv2) with the official GLIP/DyHead offset semantics.

torchvision.ops.deform_conv2d has the official sampling semantics (bilinear, zero outside, a sample
counts only if -1 < y < H and -1 < x < W; offset channel 2k = dy, 2k+1 = dx of tap k) but, unlike the
official CUDA kernel, it insists that offsets have the output's spatial size. DyHead computes one
offset/mask map per level and reuses it for the neighbour levels; for the coarser neighbour the output
is smaller than the offset map, and the official kernel simply reads the first 18*Ho*Wo (offset) and
9*Ho*Wo (mask) floats of each image's channel-major block as if they were [18, Ho, Wo] / [9, Ho, Wo]
(spec §2.4.3). `reinterpret_offsets` reproduces that pointer arithmetic explicitly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d


def reinterpret_offsets(
    offset: torch.Tensor, mask: torch.Tensor, out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read [B, 2K, H, W] offsets / [B, K, H, W] masks as the official kernel does for an Ho x Wo output.

    Same size: returned unchanged. Smaller output: per image, the first 2K*Ho*Wo (K*Ho*Wo) values of the
    flattened channel-major block, reshaped to [2K, Ho, Wo] ([K, Ho, Wo]).
    """
    b, two_k, h, w = offset.shape
    ho, wo = out_size
    if (h, w) == (ho, wo):
        return offset, mask
    if ho * wo > h * w:
        raise ValueError(f"offset map {h}x{w} is smaller than the output {ho}x{wo}; the official kernel would read "
                         "past the buffer")
    k = mask.shape[1]
    offset = offset.reshape(b, -1)[:, : two_k * ho * wo].reshape(b, two_k, ho, wo)
    mask = mask.reshape(b, -1)[:, : k * ho * wo].reshape(b, k, ho, wo)
    return offset, mask


class ModulatedDeformConv(nn.Module):
    """`conv.weight` / `conv.bias` as in the official layer; offsets and masks come from the caller."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        stdv = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -stdv, stdv)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        offset, mask = reinterpret_offsets(offset, mask, self.output_size(*x.shape[-2:]))
        return deform_conv2d(x, offset.to(x.dtype), self.weight, self.bias, stride=self.stride,
                             padding=self.padding, mask=mask.to(x.dtype))
