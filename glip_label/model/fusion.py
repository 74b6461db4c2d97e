"""VLFuse: GLIP's bidirectional image<->text cross-attention (`rpn.head.dyhead_tower.{3i}.b_attn.*`).

Follows the official ``maskrcnn_benchmark/utils/fuse_helper.py`` BiAttentionBlockForCheckpoint /
BiMultiHeadAttention (built by ``VLFuse`` in ``maskrcnn_benchmark/modeling/rpn/vldyhead.py``), including
its quirks: the residuals are added to the LayerNorm-ed inputs, attention logits are clamped to
+-50000, the text side softmax (over all visual positions) has no mask, and on the image side PAD
tokens get -9e15 while valid tokens get +1 (which cancels in the softmax but is kept for bit parity).

Half precision (fp16/bf16 models, or autocast in training) keeps the official AMP code's fp32 islands: both
softmaxes, and the PAD mask added before the image-side one, are computed in fp32 (-9e15 does not fit in fp16)
and the probabilities are cast back to the model's dtype for the matmuls that follow.
"""

from __future__ import annotations

import torch
from torch import nn

from glip_label.precision import HALF_DTYPES

CLAMP = 50000.0
TRANSPOSE_ROWS = 512
# Inference blocks of the folded attention: about this many logits per block (4 MB in fp32; see
# benchmarks/README.md for the sizes tried), at least CHUNK_MIN_ROWS visual positions.
CHUNK_ELEMENTS = 1 << 20
CHUNK_MIN_ROWS = 64


def softmax_fp32(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of x along `dim` computed in fp32 and returned in x's dtype; fp32/fp64 x take the plain softmax.

    The official code runs its attention softmaxes in fp32 under AMP: in fp16 the sum over 20k visual
    positions would lose most of its bits, and the -9e15 PAD mask would not even be representable.
    """
    if x.dtype not in HALF_DTYPES:
        return x.softmax(dim=dim)
    return x.softmax(dim=dim, dtype=torch.float32).to(x.dtype)


def transpose_contiguous(x: torch.Tensor, rows: int = TRANSPOSE_ROWS) -> torch.Tensor:
    """x [B, N, M] -> a contiguous [B, M, N] copy, `rows` rows of x at a time.

    The same values as `x.transpose(1, 2).contiguous()`; on CPU the one-shot strided copy of a
    [20k, 1.5k] attention map runs out of cache and is about 5x slower than copying it in blocks.
    """
    b, n, m = x.shape
    if x.device.type != "cpu" or n <= rows or (torch.is_grad_enabled() and x.requires_grad):
        return x.transpose(1, 2).contiguous()
    out = x.new_empty(b, m, n)
    for start in range(0, n, rows):
        out[:, :, start : start + rows] = x[:, start : start + rows].transpose(1, 2)
    return out


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
        if self.num_heads * text.shape[1] < self.v_proj.out_features:
            return self._forward_folded(visual, text, text_mask)
        return self._forward_projected(visual, text, text_mask)

    def _softmaxes(
        self, logits: torch.Tensor, text_mask: torch.Tensor | None, batch: int, heads_first: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both softmaxes of the attention logits; `logits` must be a fresh tensor (it is modified in place).

        logits [B*h, N, T] (heads_first) or [B, N, h*T] -> (image-side probs over T, in the layout of `logits`;
        text-side probs over N, [B*h, T, N] or [B, h*T, N]).
        """
        logits = logits.clamp_(-CLAMP, CLAMP)
        # Text side, officially: x - max(x) over N, clamped to +-50000, softmax. softmax subtracts the same row
        # maximum itself and exp() of anything under -50000 is 0 either way, so the softmax of the clamped
        # logits alone is bit-identical and saves two passes over the [heads, N, T] logits.
        probs_l = softmax_fp32(transpose_contiguous(logits), dim=-1)
        return self._image_side_softmax(logits, text_mask, batch, heads_first), probs_l

    def _image_side_softmax(
        self, logits: torch.Tensor, text_mask: torch.Tensor | None, batch: int, heads_first: bool
    ) -> torch.Tensor:
        """Softmax over each head's T tokens of the clamped logits, PAD tokens masked (in place on fp32 `logits`).

        Half-precision logits are masked and soft-maxed in an fp32 copy (the mask value does not fit in fp16);
        the probabilities come back in the logits' dtype.
        """
        n, t = logits.shape[1], logits.shape[2] if heads_first else logits.shape[2] // self.num_heads
        by_head = logits.view(batch, self.num_heads, n, t) if heads_first else logits.view(batch, n, self.num_heads, t)
        if logits.dtype in HALF_DTYPES:
            by_head = by_head.float()
        if text_mask is not None:
            mask = text_mask[:, None, None, :].to(by_head.dtype)  # [B, 1, 1, T]: 1 valid, 0 PAD
            by_head.add_(mask.masked_fill(mask == 0, -9e15))
        return by_head.softmax(dim=-1).view(logits.shape).to(logits.dtype)

    def _attend_in_chunks(
        self, visual: torch.Tensor, fold_q: torch.Tensor, bias_q: torch.Tensor, fold_v: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded attention for inference, a block of visual positions at a time: (out_v [B, N, Cv], pooled
        [B, h*T, Cv], the text side's softmax-over-N-weighted sum of `visual`).

        Why: at 800x1200 with 80 classes the [N, h*T] logits are 124 MB, and the clamp, both softmaxes and the
        text side's transpose each stream them through memory. A block of CHUNK_ELEMENTS logits stays in cache
        from its GEMM to the next. The image side (softmax over each row's tokens) is per row anyway; the text
        side (softmax over all N positions) is accumulated online as in FlashAttention: a running column
        maximum, the sum of exp(logit - maximum) and the weighted sum of visual rows, rescaled whenever the
        maximum grows. Equal to the unblocked maths up to float round-off.
        """
        b, n, cv = visual.shape
        columns = fold_q.shape[-1]  # h*T
        rows = max(CHUNK_MIN_ROWS, CHUNK_ELEMENTS // columns)
        out_v = visual.new_empty(b, n, cv)
        pooled = visual.new_zeros(b, columns, cv)
        for i in range(b):
            image_mask = None if text_mask is None else text_mask[i : i + 1]
            col_max = visual.new_full((1, columns), float("-inf"))
            col_sum = visual.new_zeros(1, columns)
            for start in range(0, n, rows):
                block = visual[i, start : start + rows]  # [c, Cv]
                logits = torch.addmm(bias_q[i], block, fold_q[i]).clamp_(-CLAMP, CLAMP)  # [c, h*T]
                # Text side: clamped logits, officially softmax-ed over N (max subtraction included).
                new_max = torch.maximum(col_max, logits.amax(dim=0, keepdim=True))
                rescale = torch.exp(col_max - new_max)  # [1, h*T]; 0 on the first block (exp(-inf))
                weights = torch.sub(logits, new_max).exp_()  # [c, h*T]
                pooled[i].mul_(rescale.t()).addmm_(weights.t(), block)
                col_sum.mul_(rescale).add_(weights.sum(dim=0, keepdim=True))
                col_max = new_max
                probs = self._image_side_softmax(logits[None], image_mask, 1, heads_first=False)[0]  # [c, h*T]
                torch.addmm(self.out_v_proj.bias, probs, fold_v[i], out=out_v[i, start : start + rows])
            pooled[i].div_(col_sum.t())
        return out_v, pooled

    def _forward_projected(
        self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official order: project both sides to embed_dim, attend per head, project back."""
        b = visual.shape[0]  # visual [B, N, Cv], text [B, T, Cl]
        query = self._heads(self.v_proj(visual) * self.scale)
        key = self._heads(self.l_proj(text))
        value_v = self._heads(self.values_v_proj(visual))
        value_l = self._heads(self.values_l_proj(text))
        probs_v, probs_l = self._softmaxes(torch.bmm(query, key.transpose(1, 2)), text_mask, b)
        out_v = self.out_v_proj(self._merge(torch.bmm(probs_v, value_l), b))  # [B, N, Cv]
        out_l = self.out_l_proj(self._merge(torch.bmm(probs_l, value_v), b))  # [B, T, Cl]
        return out_v, out_l

    def _forward_folded(
        self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same attention with the short text folded into the visual projections.

        Every visual-side projection is linear, so per head h:
          q_h k_h^T          = v (s Wq_h^T k_h^T) + s bq_h k_h^T          (a [Cv, T] map instead of [Cv, d])
          P_v,h val_l,h Wo_h^T = P_v,h (val_l,h Wo_h^T)                  (a [T, Cv] map)
          P_l,h (v Wvv_h^T + bvv_h) = (P_l,h v) Wvv_h^T + bvv_h          (rows of P_l sum to 1)
        so the N x Cv x embed_dim projections become N x Cv x (heads*T): identical maths, summed in another order.
        """
        b, n, cv = visual.shape
        t, h, d = text.shape[1], self.num_heads, self.head_dim
        key = self.l_proj(text).view(b, t, h, d)  # [B, T, h, d]
        w_q = self.v_proj.weight.view(h, d, cv)  # [h, d, Cv]
        fold_q = torch.einsum("hdc,bthd->bcht", w_q, key).reshape(b, cv, h * t) * self.scale  # [B, Cv, h*T]
        bias_q = torch.einsum("hd,bthd->bht", self.v_proj.bias.view(h, d), key).reshape(b, 1, h * t) * self.scale
        value_l = self.values_l_proj(text).view(b, t, h, d)
        w_out_v = self.out_v_proj.weight.view(cv, h, d)  # [Cv, h, d]
        fold_v = torch.einsum("bthd,chd->bhtc", value_l, w_out_v).reshape(b, h * t, cv)  # [B, h*T, Cv]
        # Half precision takes the unblocked path too: the blocked one accumulates sums over all N positions
        # (the online softmax) that fp16 cannot hold; unblocked, the softmaxes run in fp32 (`softmax_fp32`).
        training = torch.is_grad_enabled() and any(x.requires_grad for x in (visual, fold_q, fold_v))
        if training or visual.dtype in HALF_DTYPES or torch.is_autocast_enabled(visual.device.type):
            logits = torch.baddbmm(bias_q, visual, fold_q)  # [B, N, h*T], kept in this layout (no head-major copy)
            probs_v, probs_l = self._softmaxes(logits, text_mask, b, heads_first=False)  # [B, N, h*T], [B, h*T, N]
            out_v = torch.baddbmm(self.out_v_proj.bias.expand(b, 1, cv), probs_v, fold_v)  # [B, N, Cv]
            pooled = torch.bmm(probs_l, visual)  # [B, h*T, Cv]
        else:
            out_v, pooled = self._attend_in_chunks(visual, fold_q, bias_q, fold_v, text_mask)

        pooled = pooled.view(b, h, t, cv)  # [B, h, T, Cv]
        w_vv = self.values_v_proj.weight.view(h, d, cv)
        value_v = torch.einsum("bhtc,hdc->bthd", pooled, w_vv) + self.values_v_proj.bias.view(h, d)
        out_l = self.out_l_proj(value_v.reshape(b, t, h * d))  # [B, T, Cl]
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
