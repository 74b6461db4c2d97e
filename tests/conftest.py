"""Shared test fixtures. Tests never touch the network: the hub is forced offline here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "glip-parity"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` need CUDA: without it they are skipped with the reason (never passed silently)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); run benchmarks/gpu_check.sh "
                                   "on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The official-code parity fixture. Missing is an error, not a skip: these tests are the judge."""
    if not (FIXTURES / "README.md").exists():
        pytest.fail(f"parity fixture not found at {FIXTURES} (expected ../shared beside the repository)")
    return FIXTURES


@pytest.fixture(scope="session")
def parity_checkpoint(parity_dir: Path, tmp_path_factory) -> Path:
    """The official-format GLIP-T checkpoint the fixture's own generator writes (0.93 GB, about 6 s)."""
    out = tmp_path_factory.mktemp("parity") / "glip_t_dev_seed1.pth"
    subprocess.run(
        [sys.executable, str(parity_dir / "make_weights.py"), "--keys", str(parity_dir / "glip_t_keys.txt"),
         "--seed", "1", "--out", str(out)],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random glip-tiny saved as an official-format .pth, its token bias lifted so that it proposes boxes.

    At init every token scores sigmoid(bias0) = the 0.01 prior, under the 0.05 candidate threshold.
    """
    import torch

    from glip_label.predictor import load_model

    with pytest.warns(UserWarning):
        predictor = load_model(None, config="glip-tiny", seed=0)
    with torch.no_grad():
        predictor.model.rpn.head.bias0.fill_(0.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    predictor.save(path)
    return path
