"""Preprocessing: official resize arithmetic, pixel normalisation order, padding, and the parity fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from glip_label.model.preprocess import batch_images, get_resized_size, image_to_tensor

MEAN = (103.530, 116.280, 123.675)
STD = (57.375, 57.120, 58.395)


@pytest.mark.parametrize(
    ("size_wh", "expected_wh"),
    [
        ((640, 480), (1066, 800)),  # spec worked example: int(800 * 640 / 480) truncates 1066.67
        ((2000, 1000), (1332, 666)),  # spec worked example: round(666.5) == 666 (half to even), then 666 * 2
        ((480, 640), (800, 1066)),  # portrait: the width is the short side
        ((512, 512), (800, 800)),
        ((600, 400), (1200, 800)),
        ((800, 1000), (800, 1000)),  # short side already 800: unchanged
        ((3000, 800), (1331, 355)),  # capped: size round(355.47) = 355, then int(355 * 3000 / 800) = 1331
        ((1000, 3), (1333, 4)),  # extreme aspect: size round(3.999) = 4 (an upscale), int(4 * 1000 / 3) = 1333
    ],
)
def test_get_resized_size_official_arithmetic(size_wh: tuple[int, int], expected_wh: tuple[int, int]) -> None:
    assert get_resized_size(*size_wh) == expected_wh


def test_get_resized_size_without_cap() -> None:
    assert get_resized_size(2000, 1000, 800, None) == (1600, 800)
    assert get_resized_size(2000, 1000, 800, 0) == (1600, 800)
    assert get_resized_size(2000, 1000, 800, -1) == (1600, 800)


def test_get_resized_size_respects_limits_over_many_shapes() -> None:
    rng = np.random.default_rng(0)
    for w, h in rng.integers(16, 4000, size=(300, 2)).tolist():
        new_w, new_h = get_resized_size(w, h)
        # the cap is applied to the rounded short side, so the long side may exceed 1333 by < aspect / 2
        assert max(new_w, new_h) <= 1333 + 0.5 * max(w, h) / min(w, h)
        assert min(new_w, new_h) <= 800
        short_is_w = w < h
        # the short side gets the target size; the long side is truncated, so the aspect can only shrink
        if short_is_w:
            assert new_h == int(new_w * h / w) or (new_w, new_h) == (w, h)
        else:
            assert new_w == int(new_h * w / h) or (new_w, new_h) == (w, h)


def _torchvision_official(image: Image.Image, size_hw: tuple[int, int]) -> torch.Tensor:
    """The official transform chain written with torchvision: Resize -> ToTensor -> BGR x255 -> Normalize."""
    resized = TF.resize(image, list(size_hw))
    tensor = TF.to_tensor(resized)[[2, 1, 0]] * 255
    return TF.normalize(tensor, mean=MEAN, std=STD)


@pytest.mark.parametrize("size_wh", [(640, 480), (2000, 1000), (800, 1000), (37, 900), (333, 801)])
def test_image_to_tensor_matches_torchvision_chain_bit_exactly(size_wh: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size_wh))
    pixels = rng.integers(0, 256, size=(size_wh[1], size_wh[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    new_w, new_h = get_resized_size(*size_wh)
    ours = image_to_tensor(image, 800, 1333, MEAN, STD)
    assert ours.shape == (3, new_h, new_w)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, _torchvision_official(image, (new_h, new_w)))


def test_image_to_tensor_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        image_to_tensor(Image.new("L", (8, 8)), 8, 1333, MEAN, STD)


def test_batch_images_pads_with_zeros_to_the_divisibility() -> None:
    first = torch.randn(3, 50, 70)
    second = torch.randn(3, 64, 33)
    batch, sizes = batch_images([first, second], 32)
    assert batch.shape == (2, 3, 64, 96)
    assert sizes == [(50, 70), (64, 33)]
    assert torch.equal(batch[0, :, :50, :70], first)
    assert torch.equal(batch[1, :, :64, :33], second)
    assert batch[0, :, 50:].abs().sum() == 0 and batch[0, :, :, 70:].abs().sum() == 0
    assert batch[1, :, :, 33:].abs().sum() == 0

    exact, _ = batch_images([torch.ones(3, 64, 96)], 32)
    assert exact.shape == (1, 3, 64, 96)
    unrounded, _ = batch_images([first, second], 0)
    assert unrounded.shape == (2, 3, 64, 70)


@pytest.mark.parity
def test_input_tensor_matches_official_fixture(parity_dir) -> None:
    cases = json.loads((parity_dir / "cases.json").read_text())
    for case in cases:
        case_dir = parity_dir / "cases" / case["case"]
        stats = json.loads((case_dir / "intermediates.json").read_text())["input.image_tensor"]
        samples = np.load(case_dir / "intermediates.npz")
        predictions = json.loads((case_dir / "predictions.json").read_text())
        with Image.open(parity_dir / "inputs" / case["image"]) as opened:
            image = opened.convert("RGB")

        tensor = image_to_tensor(image, 800, 1333, MEAN, STD)
        batch, sizes = batch_images([tensor], 32)
        assert list(batch.shape) == stats["shape"], case["case"]
        assert [list(s) for s in sizes] == [predictions["resized_size_hw"]]
        assert list(batch.shape[-2:]) == predictions["padded_size_hw"]

        flat = batch.reshape(-1)
        sampled = flat[torch.from_numpy(samples["input.image_tensor__idx"])].numpy()
        np.testing.assert_allclose(sampled, samples["input.image_tensor__val"], rtol=0, atol=1e-6)
        # Any one-level pixel difference moves a sum by >= 1 / 58.4; these bounds only absorb summation order.
        np.testing.assert_allclose(batch[0].double().sum(-1).numpy(),
                                   samples["input.image_tensor__channel_row_sums"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(batch[0].double().sum(-2).numpy(),
                                   samples["input.image_tensor__channel_col_sums"], rtol=0, atol=1e-6)
        assert batch.min().item() == pytest.approx(stats["min"], abs=1e-7)
        assert batch.max().item() == pytest.approx(stats["max"], abs=1e-7)
        assert batch.double().mean().item() == pytest.approx(stats["mean"], abs=1e-9)
        assert batch.double().std().item() == pytest.approx(stats["std"], abs=1e-9)
