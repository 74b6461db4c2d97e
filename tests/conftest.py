"""Shared test fixtures. Tests never touch the network: the hub is forced offline here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "glip-parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The official-code parity fixture. Missing is an error, not a skip: these tests are the judge."""
    if not (FIXTURES / "README.md").exists():
        pytest.fail(f"parity fixture not found at {FIXTURES} (expected ../shared beside the repository)")
    return FIXTURES
