"""Modulated deformable convolution (DCNv2) with the official GLIP/DyHead offset semantics.

torchvision.ops.deform_conv2d has the official sampling semantics (bilinear, zero outside, a sample
counts only if -1 < y < H and -1 < x < W; offset channel 2k = dy, 2k+1 = dx of tap k) but, unlike the
official CUDA kernel, it insists that offsets have the output's spatial size. DyHead computes one
offset/mask map per level and reuses it for the neighbour levels; for the coarser neighbour the output
is smaller than the offset map, and the official kernel simply reads the first 18*Ho*Wo (offset) and
9*Ho*Wo (mask) floats of each image's channel-major block as if they were [18, Ho, Wo] / [9, Ho, Wo]
(official ``maskrcnn_benchmark/modeling/rpn/vldyhead.py::DyConv.forward`` feeding
``maskrcnn_benchmark/layers/deform_conv.py::ModulatedDeformConv``, whose
``csrc/cuda/deform_conv_kernel_cuda.cu::modulated_deformable_im2col_gpu_kernel`` indexes the raw pointers).
`reinterpret_offsets` reproduces that pointer arithmetic explicitly.

On CPU, inference uses `deform_conv2d_cpu`, a pure-PyTorch version of the same op (one `embedding_bag`
gathers the bilinear samples of all taps, masks folded into the weights, into an im2col tensor; one
matmul), about four times as fast as torchvision's CPU kernel at DyHead sizes (benchmarks/README.md);
training on CPU uses `deform_conv2d_cpu_autograd` (grid_sample and a matmul, differentiable).
torchvision's op runs everywhere else (CUDA included).

Every dtype is accepted, as the official layer does under AMP (`custom_fwd(cast_inputs=torch.float32)`): fp16
and bf16 inputs, and any input under autocast, are convolved in fp32 with autocast off (torchvision's kernels
have no bf16, the CPU paths no half at all, and the sampled sums want fp32). The result is fp32 under autocast
(as the official layer returns it) and the input's dtype otherwise; fp32 inputs outside autocast take the
exact fp32 paths above unchanged.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

# Set to False to always use torchvision's kernel (for comparisons); read at every forward.
FAST_CPU_DCN = True


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


@functools.lru_cache(maxsize=64)
def _base_grid(h: int, w: int, ho: int, wo: int, kh: int, kw: int, stride: int, padding: int,
               dtype: torch.dtype) -> torch.Tensor:
    """Undeformed sampling positions of every tap, normalised for grid_sample: [kh*kw, Ho, Wo, 2] as (x, y).

    Cached, so it must be a normal tensor even when first built under torch.inference_mode.
    """
    with torch.inference_mode(False):
        return _make_base_grid(h, w, ho, wo, kh, kw, stride, padding).to(dtype)


def _make_base_grid(h: int, w: int, ho: int, wo: int, kh: int, kw: int, stride: int, padding: int) -> torch.Tensor:
    f64 = torch.float64
    rows = torch.arange(kh, dtype=f64).view(kh, 1, 1, 1) + torch.arange(ho, dtype=f64).view(1, 1, ho, 1) * stride
    cols = torch.arange(kw, dtype=f64).view(1, kw, 1, 1) + torch.arange(wo, dtype=f64).view(1, 1, 1, wo) * stride
    gy = ((rows - padding) * (2.0 / h) + (1.0 / h - 1.0)).expand(kh, kw, ho, wo)  # rows: [kh, 1, Ho, 1]
    gx = ((cols - padding) * (2.0 / w) + (1.0 / w - 1.0)).expand(kh, kw, ho, wo)  # cols: [1, kw, 1, Wo]
    return torch.stack([gx, gy], dim=-1).reshape(kh * kw, ho, wo, 2)


def _dcn_shapes(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> tuple[int, ...]:
    """(B, C, H, W, Cout, K, Ho, Wo), refusing the layouts the CPU kernels do not implement."""
    b, c, h, w = x.shape
    cout, cin, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    if cin != c or offset.shape[1] != 2 * k or mask.shape[1] != k:
        raise ValueError("the CPU deformable conv supports one offset group and one weight group only")
    return b, c, h, w, cout, k, ho, wo


def _sampling_grid(offset: torch.Tensor, h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> torch.Tensor:
    """grid_sample coordinates of every tap: offset [B, K, 2, Ho, Wo] (dy, dx) -> [B, K*Ho, Wo, 2] as (x, y).

    grid_sample(align_corners=False) maps g to the pixel ((g + 1) * size - 1) / 2 (valid for size 1 too,
    unlike align_corners=True), so pixel p is g = p * 2 / size + 1 / size - 1: the tap's base position from
    the cache plus the offset times 2 / size.
    """
    b, k, _, ho, wo = offset.shape
    base = _base_grid(h, w, ho, wo, kh, kw, stride, padding, offset.dtype).to(offset.device)  # [K, Ho, Wo, 2]
    grid_x = torch.add(base[..., 0], offset[:, :, 1], alpha=2.0 / w)
    grid_y = torch.add(base[..., 1], offset[:, :, 0], alpha=2.0 / h)
    return torch.stack([grid_x, grid_y], dim=-1).view(b, k * ho, wo, 2)


def _bilinear_taps(
    offset: torch.Tensor, mask: torch.Tensor, h: int, w: int, kh: int, kw: int, stride: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices and weights of the 4 bilinear corners of every tap, for one image.

    offset [K, 2, Ho, Wo] (dy, dx), mask [K, Ho, Wo] -> (index [Ho*Wo*K, 4] into the H*W pixels, weight
    [Ho*Wo*K, 4]), rows ordered (output position, tap). A corner outside the image gets weight 0, which
    is torchvision's rule (zero outside; a sample is non-zero only if -1 < y < H and -1 < x < W); the
    mask is folded into the weights.
    """
    k, _, ho, wo = offset.shape
    dtype, device = offset.dtype, offset.device
    # Everything in [Ho, Wo, K] order, so that the stacked corners are [Ho, Wo, K, 4] without a permuted copy.
    offset, mask = offset.permute(2, 3, 0, 1), mask.permute(1, 2, 0)  # [Ho, Wo, K, 2], [Ho, Wo, K]
    taps = torch.arange(k, device=device)
    tap_y = torch.div(taps, kw, rounding_mode="floor").to(dtype)  # [K]
    tap_x = (taps % kw).to(dtype)
    rows = (torch.arange(ho, device=device, dtype=dtype) * stride - padding).view(ho, 1, 1)
    cols = (torch.arange(wo, device=device, dtype=dtype) * stride - padding).view(1, wo, 1)
    y = tap_y + rows + offset[..., 0]  # [Ho, Wo, K] sampling rows, in pixels
    x = tap_x + cols + offset[..., 1]
    y0, x0 = torch.floor(y), torch.floor(x)
    frac_y, frac_x = y - y0, x - x0
    y0, x0 = y0.long(), x0.long()
    # Per axis, the two neighbours' weights (zero for a neighbour outside the image) and clamped indices: a
    # corner's weight is the product, so a corner outside gets 0 and its index only has to be valid.
    weights_y = ((1.0 - frac_y) * ((y0 >= 0) & (y0 < h)), frac_y * ((y0 >= -1) & (y0 < h - 1)))
    weights_x = ((1.0 - frac_x) * ((x0 >= 0) & (x0 < w)), frac_x * ((x0 >= -1) & (x0 < w - 1)))
    rows_y = (y0.clamp(0, h - 1) * w, (y0 + 1).clamp(0, h - 1) * w)
    cols_x = (x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1))
    index, weight = [], []
    for row, weight_y in zip(rows_y, weights_y, strict=True):
        for col, weight_x in zip(cols_x, weights_x, strict=True):
            index.append(row + col)
            weight.append(weight_y * weight_x * mask)
    index = torch.stack(index, dim=-1).view(-1, 4)  # [Ho*Wo*K, 4]: rows read as [Ho*Wo, K*C] im2col columns
    weight = torch.stack(weight, dim=-1).view(-1, 4)
    return index, weight


def deform_conv2d_cpu(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      mask: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask) in plain PyTorch.

    Same layout and semantics for one offset group, one weight group and dilation 1: offset [B, 2K, Ho, Wo]
    holds (dy, dx) per tap k (row-major over the kernel), mask [B, K, Ho, Wo]; tap k of output (i, j) samples
    x at (i*stride - padding + ky + dy, j*stride - padding + kx + dx) bilinearly, with zeros outside the
    image. The im2col columns are built by `F.embedding_bag`: each (position, tap) is a bag of the 4 corner
    pixels of a channels-last [H*W, C] view of x, summed with the bilinear weights times the mask, so one
    fused gather writes the [Ho*Wo, K*C] buffer (what grid_sample plus a mask pass did, about twice as fast
    on CPU, and in pixel coordinates, without grid_sample's normalise/unnormalise rounding). Then one GEMM
    with the weight's columns ordered (ky, kx, c). Images are done one at a time so that the buffer (140 MB
    at P3 of an 800x1200 image) is not multiplied by the batch size. Inference only.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, offset, weight, bias, mask)):
        raise RuntimeError("deform_conv2d_cpu is inference-only; use torchvision.ops.deform_conv2d for gradients")
    b, c, h, w, cout, k, ho, wo = _dcn_shapes(x, offset, weight, mask)
    kh, kw = weight.shape[-2:]
    dtype = x.dtype
    offset = offset.to(dtype).reshape(b, k, 2, ho, wo)
    mask = mask.to(dtype).reshape(b, k, ho, wo)
    w_mat = weight.permute(0, 2, 3, 1).reshape(cout, k * c)  # columns (ky, kx, c), as the gathered rows
    bias_col = None if bias is None else bias.reshape(cout, 1)
    pixels = x.permute(0, 2, 3, 1)  # [B, H, W, C], a view when x is channels-last (VLFuse's output)
    if not pixels[0].is_contiguous():  # NCHW x: torch's channels-last conversion beats a strided reshape 2x
        pixels = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    out = torch.empty(b, cout, ho, wo, dtype=dtype, device=x.device)
    for i in range(b):
        index, tap_weight = _bilinear_taps(offset[i], mask[i], h, w, kh, kw, stride, padding)
        cols = F.embedding_bag(index, pixels[i].reshape(h * w, c), per_sample_weights=tap_weight,
                               mode="sum")  # [Ho*Wo*K, C]
        cols_t = cols.view(ho * wo, k * c).t()  # [K*C, Ho*Wo], a transposed view the GEMM reads as is
        out_i = out[i].view(cout, ho * wo)
        if bias_col is None:
            torch.mm(w_mat, cols_t, out=out_i)
        else:
            torch.addmm(bias_col, w_mat, cols_t, out=out_i)
    return out


def deform_conv2d_cpu_autograd(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               mask: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """`deform_conv2d_cpu` built from differentiable ops, for training on CPU.

    torchvision's CPU backward of deform_conv2d is slow (most of a glip-tiny training step); autograd
    through grid_sample and a batched matmul gives the same gradients several times faster. The
    whole batch is sampled at once, which is fine at training sizes.
    """
    b, c, h, w, cout, k, ho, wo = _dcn_shapes(x, offset, weight, mask)
    kh, kw = weight.shape[-2:]
    dtype = x.dtype
    offset = offset.to(dtype).reshape(b, k, 2, ho, wo)
    grid = _sampling_grid(offset, h, w, kh, kw, stride, padding)  # [B, K*Ho, Wo, 2]
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, C, K*Ho, Wo]
    cols = (cols.view(b, c, k, ho * wo) * mask.to(dtype).reshape(b, 1, k, ho * wo)).reshape(b, c * k, ho * wo)
    out = torch.matmul(weight.reshape(cout, c * k), cols)  # [B, Cout, Ho*Wo]
    if bias is not None:
        out = out + bias.reshape(1, cout, 1)
    return out.view(b, cout, ho, wo)


def _fast_cpu_applies(x: torch.Tensor, *others: torch.Tensor) -> bool:
    if not FAST_CPU_DCN or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others)))


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
        autocast = torch.is_autocast_enabled(x.device.type)
        if x.dtype in (torch.float32, torch.float64) and not autocast:
            return self._deform(x, offset, mask, self.weight.to(x.dtype), self.bias.to(x.dtype))
        # The official fp32 island (custom_fwd(cast_inputs=torch.float32)): fp32 inputs, autocast off.
        with torch.autocast(x.device.type, enabled=False):
            out = self._deform(x.float(), offset.float(), mask.float(), self.weight.float(), self.bias.float())
        return out if autocast else out.to(x.dtype)

    def _deform(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        """The convolution on same-dtype fp32/fp64 tensors: the fast CPU paths, else torchvision's op."""
        if _fast_cpu_applies(x, offset, mask, weight, bias):
            return deform_conv2d_cpu(x, offset, weight, bias, mask, stride=self.stride, padding=self.padding)
        if FAST_CPU_DCN and x.device.type == "cpu":
            return deform_conv2d_cpu_autograd(x, offset, weight, bias, mask, stride=self.stride, padding=self.padding)
        return deform_conv2d(x, offset.to(x.dtype), weight, bias, stride=self.stride, padding=self.padding,
                             mask=mask.to(x.dtype))
