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
