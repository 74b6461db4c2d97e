"""Unit tests of model components whose official semantics are easy to get subtly wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import deform_conv2d

from glip_label.config import PRESETS, get_preset
from glip_label.model.dcn import ModulatedDeformConv, reinterpret_offsets
from glip_label.model.dyhead import DyConv
from glip_label.model.glip import GLIP
from glip_label.model.swin import SwinStage, relative_position_index


def _conv(weight: np.ndarray, bias: np.ndarray, stride: int) -> ModulatedDeformConv:
    conv = ModulatedDeformConv(weight.shape[1], weight.shape[0], 3, stride, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        conv.bias.copy_(torch.from_numpy(bias))
    return conv


def test_dcn_offset_quirk_matches_official_kernel(parity_dir):
    case = np.load(parity_dir / "dcn_quirk_case.npz")
    om = torch.from_numpy(case["offset_conv_output"])
    offset, mask = om[:, :18], om[:, 18:].sigmoid()
    conv1 = _conv(case["w_stride1"], case["b_stride1"], 1)
    conv2 = _conv(case["w_stride2"], case["b_stride2"], 2)
    with torch.no_grad():
        same = conv1(torch.from_numpy(case["x_same"]), offset, mask)
        fine = conv2(torch.from_numpy(case["x_fine"]), offset, mask)
        coarse = conv1(torch.from_numpy(case["x_coarse"]), offset, mask)
    np.testing.assert_allclose(same.numpy(), case["y_same"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(fine.numpy(), case["y_fine"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(coarse.numpy(), case["y_coarse"], atol=2e-5, rtol=0)


def test_dcn_quirk_differs_from_a_naive_resize(parity_dir):
    """The reinterpretation is not a spatial crop or resize of the offset map: those give other numbers."""
    case = np.load(parity_dir / "dcn_quirk_case.npz")
    om = torch.from_numpy(case["offset_conv_output"])
    offset, mask = om[:, :18], om[:, 18:].sigmoid()
    x = torch.from_numpy(case["x_coarse"])
    w, b = torch.from_numpy(case["w_stride1"]), torch.from_numpy(case["b_stride1"])
    cropped = deform_conv2d(x, offset[:, :, :5, :7].contiguous(), w, b, padding=1, mask=mask[:, :, :5, :7].contiguous())
    assert np.abs(cropped.numpy() - case["y_coarse"]).max() > 1e-3


def test_reinterpret_offsets_reads_flat_prefix_per_image():
    offset = torch.arange(2 * 18 * 4 * 6, dtype=torch.float32).view(2, 18, 4, 6)
    mask = torch.arange(2 * 9 * 4 * 6, dtype=torch.float32).view(2, 9, 4, 6)
    new_offset, new_mask = reinterpret_offsets(offset, mask, (2, 3))
    assert new_offset.shape == (2, 18, 2, 3) and new_mask.shape == (2, 9, 2, 3)
    # Image 1 starts at its own block, not at image 0's continuation.
    assert new_offset[1].flatten()[0].item() == 18 * 4 * 6
    assert torch.equal(new_offset[0].flatten(), torch.arange(18 * 6, dtype=torch.float32))
    same = reinterpret_offsets(offset, mask, (4, 6))
    assert same[0] is offset and same[1] is mask
    with pytest.raises(ValueError, match="smaller than the output"):
        reinterpret_offsets(offset, mask, (5, 6))


def test_relative_position_index_is_standard_swin():
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.dtype == torch.int64
    assert index[0, 0] == 6 * 13 + 6  # zero offset is the centre of the 13x13 table
    assert index.max() == 13 * 13 - 1 and index.min() == 0


def test_shifted_window_mask_uses_minus_100_on_padded_size():
    stage = SwinStage(dim=8, depth=2, num_heads=1, window_size=7, mlp_ratio=4.0, drop_path=[0.0, 0.0],
                      downsample=False)
    mask = stage.shift_mask(10, 10, torch.device("cpu"))  # padded to 14x14 -> 4 windows of 49
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region only


def test_dyconv_keeps_level_sizes_including_odd_ones():
    torch.manual_seed(0)
    block = DyConv(channels=16, gn_groups=4).eval()
    sizes = [(25, 34), (13, 17), (7, 9), (4, 5), (2, 3)]  # ceil-halving as P3..P7 of an odd input
    visual = [torch.randn(2, 16, h, w) for h, w in sizes]
    with torch.no_grad():
        out = block(visual)
    assert [tuple(o.shape[-2:]) for o in out] == sizes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run(name):
    if name != "glip-tiny":
        with torch.device("meta"):
            model = GLIP(get_preset(name))
        assert sum(p.numel() for p in model.parameters()) > 1e8
        return
    torch.manual_seed(0)
    model = GLIP(get_preset(name)).eval()
    ids = torch.tensor([[101, 2711, 1012, 3899, 102]])
    with torch.no_grad():
        text = model.encode_text(ids, torch.ones_like(ids))
        out = model(torch.randn(2, 3, 128, 160), text)
    assert [tuple(x.shape) for x in out.token_logits] == [(2, 16 * 20, 5), (2, 80, 5), (2, 20, 5), (2, 6, 5), (2, 2, 5)]
    assert all(torch.isfinite(x).all() for x in out.box_regression + out.centerness + out.token_logits)


def test_fast_deform_conv_matches_torchvision():
    """The pure-PyTorch CPU DCN used at inference equals torchvision's op, border and quirk cases included."""
    from glip_label.model import dcn

    gen = torch.Generator().manual_seed(0)
    conv1, conv2 = ModulatedDeformConv(8, 6, 3, 1, 1), ModulatedDeformConv(8, 6, 3, 2, 1)
    with torch.no_grad():
        for conv in (conv1, conv2):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    cases = []  # (conv, x, offset, mask): offset/mask at the "same level" size, as DyConv passes them
    for h, w in ((9, 13), (5, 1), (1, 4), (12, 7)):
        x = torch.randn(2, 8, h, w, generator=gen)
        offset = torch.randn(2, 18, h, w, generator=gen) * 3  # many samples fall outside the image
        mask = torch.rand(2, 9, h, w, generator=gen)
        cases.append((conv1, x, offset, mask))
    # Samples exactly on and just inside the -1 / H / W limits (integer and near-integer offsets).
    h, w = 6, 8
    offset = torch.randint(-9, 10, (2, 18, h, w), generator=gen).float()
    offset[:, :, ::2] += torch.tensor([1e-3, -1e-3])[torch.randint(0, 2, (1,), generator=gen)]
    cases.append((conv1, torch.randn(2, 8, h, w, generator=gen), offset, torch.rand(2, 9, h, w, generator=gen)))
    # Finer neighbour (stride 2) and coarser neighbour (the reinterpret_offsets case) of a 9x13 level.
    offset, mask = torch.randn(2, 18, 9, 13, generator=gen) * 2, torch.rand(2, 9, 9, 13, generator=gen)
    cases.append((conv2, torch.randn(2, 8, 18, 26, generator=gen), offset, mask))
    cases.append((conv2, torch.randn(2, 8, 17, 25, generator=gen), offset, mask))
    cases.append((conv1, torch.randn(2, 8, 5, 7, generator=gen), offset, mask))
    for conv, x, offset, mask in cases:
        o, m = reinterpret_offsets(offset, mask, conv.output_size(*x.shape[-2:]))
        expected = deform_conv2d(x, o, conv.weight, conv.bias, stride=conv.stride, padding=1, mask=m).detach()
        with torch.no_grad():
            got = conv(x, offset, mask)
            direct = dcn.deform_conv2d_cpu(x, o, conv.weight, conv.bias, m, stride=conv.stride, padding=1)
        scale = expected.abs().max().item()
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4 * scale, (conv.stride, tuple(x.shape))
        assert (direct - expected).abs().max().item() <= 1e-4 * scale
        # float64: the same maths, so it agrees to rounding.
        with torch.no_grad():
            args64 = (x.double(), o.double(), conv.weight.double(), conv.bias.double())
            exact = deform_conv2d(*args64, stride=conv.stride, padding=1, mask=m.double())
            fast = dcn.deform_conv2d_cpu(*args64, m.double(), stride=conv.stride, padding=1)
        assert (fast - exact).abs().max().item() <= 1e-9 * scale
    # With gradients needed the layer falls back to torchvision's op, so training still works.
    conv, x, offset, mask = cases[0]
    x = x.clone().requires_grad_(True)
    conv(x, offset, mask).sum().backward()
    assert x.grad is not None and conv1.weight.grad is not None
    with pytest.raises(RuntimeError, match="inference-only"):
        dcn.deform_conv2d_cpu(x, offset, conv.weight, conv.bias, mask, padding=1)
    # The switch turns the fast path off.
    dcn.FAST_CPU_DCN = False
    try:
        with torch.no_grad():
            assert torch.equal(conv(x, offset, mask), deform_conv2d(x, offset, conv.weight, conv.bias, padding=1,
                                                                    mask=mask))
    finally:
        dcn.FAST_CPU_DCN = True


@pytest.mark.parametrize("chunk_elements", [1 << 20, 100])
def test_fusion_fast_paths_match_official_formulation(monkeypatch, chunk_elements):
    """VLFuse's in-place softmaxes and blocked transpose give the official op sequence's numbers bit for bit,
    and the folded short-prompt path (at inference: in blocks of visual positions, one block or 11 here)
    equals the projected one up to float round-off."""
    from glip_label.model import fusion
    from glip_label.model.fusion import CLAMP, BiMultiHeadAttention, transpose_contiguous

    monkeypatch.setattr(fusion, "CHUNK_ELEMENTS", chunk_elements)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1300, 37, generator=gen)
    assert torch.equal(transpose_contiguous(x, rows=512), x.transpose(1, 2).contiguous())

    def official(attn, v, l, text_mask):  # BiMultiHeadAttention.forward of the official code, fp32
        b, n, _ = v.shape
        h, t = attn.num_heads, l.shape[1]
        q = attn._heads(attn.v_proj(v) * attn.scale)
        k = attn._heads(attn.l_proj(l))
        val_v, val_l = attn._heads(attn.values_v_proj(v)), attn._heads(attn.values_l_proj(l))
        w = torch.bmm(q, k.transpose(1, 2)).clamp(min=-CLAMP).clamp(max=CLAMP)
        w_t = w.transpose(1, 2)
        w_l = (w_t - torch.max(w_t, dim=-1, keepdim=True)[0]).clamp(min=-CLAMP).clamp(max=CLAMP).softmax(dim=-1)
        mask = text_mask[:, None, None, :].to(w.dtype)
        mask = mask.masked_fill(mask == 0, -9e15)
        w_v = (w.view(b, h, n, t) + mask).view(b * h, n, t).softmax(dim=-1)
        return (attn.out_v_proj(attn._merge(torch.bmm(w_v, val_l), b)),
                attn.out_l_proj(attn._merge(torch.bmm(w_l, val_v), b)))

    torch.manual_seed(0)
    attn = BiMultiHeadAttention(32, 24, 64, 4).eval()
    v = torch.randn(2, 700, 32, generator=gen)
    for t in (9, 16, 40):  # 4 * 9 < 64 folded; 4 * 16 = 64 and 4 * 40 projected
        l = torch.randn(2, t, 24, generator=gen)
        text_mask = torch.ones(2, t, dtype=torch.long)
        text_mask[1, t - 3 :] = 0
        with torch.no_grad():
            ref_v, ref_l = official(attn, v, l, text_mask)
            out_v, out_l = attn(v, l, text_mask)
            proj_v, proj_l = attn._forward_projected(v, l, text_mask)
        assert torch.equal(proj_v, ref_v) and torch.equal(proj_l, ref_l)
        torch.testing.assert_close(out_v, ref_v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_l, ref_l, rtol=1e-5, atol=1e-5)
        train_v, train_l = attn(v.clone().requires_grad_(), l, text_mask)  # training: the unblocked folded path
        torch.testing.assert_close(train_v.detach(), ref_v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(train_l.detach(), ref_l, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_training_deform_conv_gradients_match_torchvision(stride):
    """The autograd DCN used for CPU training gives torchvision's outputs and gradients (float64)."""
    from torchvision.ops import deform_conv2d

    from glip_label.model.dcn import deform_conv2d_cpu_autograd

    torch.manual_seed(stride)
    h, w = 11, 14
    ho, wo = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    x = torch.randn(2, 6, h, w, dtype=torch.float64, requires_grad=True)
    offset = (torch.randn(2, 18, ho, wo, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.rand(2, 9, ho, wo, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    ours = deform_conv2d_cpu_autograd(x, offset, weight, bias, mask, stride=stride, padding=1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    upstream = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (x, offset, mask, weight, bias), upstream),
                    torch.autograd.grad(ref, (x, offset, mask, weight, bias), upstream), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
