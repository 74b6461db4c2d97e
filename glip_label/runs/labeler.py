"""The labeler interface of the run engine: what a tool gives an engine, and what it gets back per item.

A tool (`annotate`, `pseudo-caption`) describes its work as a :class:`Labeler`: a picklable object that
`load`s its model in the process that labels, then turns one fixed batch of entries into one
:class:`ItemResult` per entry. Engines (`glip_label.runs.engine`, `glip_label.runs.ray_engine`) only move
batches and results, so the same labeler gives the same records wherever it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class ItemResult:
    """What labeling one entry gave: a record to write, or an error saying why not (never both)."""

    key: str
    record: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class NothingLabeledError(RuntimeError):
    """A run labeled nothing (every input failed, or there was none). The outputs and errors.jsonl are
    written first, so the reason can be read; the CLI exits non-zero: a dataset of nothing is not a result."""


class Labeler(Protocol):
    """Labels fixed batches; built on the driver, pickled to workers, `load`ed once in each."""

    def load(self) -> None:
        """Load the model (and anything heavy) in the calling process; idempotent."""

    def label_batch(self, batch: Sequence[Any]) -> list[ItemResult]:
        """One result per entry of `batch`, in order."""


def set_threads(threads: int | None) -> None:
    """Same thread count, same float summation order: engines must agree bit for bit."""
    if threads:
        import torch

        torch.set_num_threads(threads)


class PredictorLabeler:
    """Base of labelers whose options (`glip_label.runs.run_options.RunOptions`) name a predictor (model,
    config, random_init, seed, device, dtype, torch_threads): `load` builds it in the calling process;
    pickling leaves it out (workers load their own)."""

    def __init__(self, options: Any, predictor=None) -> None:
        self.options = options
        self.predictor = predictor

    def load(self) -> None:
        set_threads(self.options.torch_threads)
        if self.predictor is None:
            o = self.options
            self.predictor = load_predictor(o.model, o.config, o.random_init, o.seed, o.device, o.dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "predictor": None}


def load_predictor(model: str | None, config: str | None, random_init: bool, seed: int, device: str, dtype: str):
    """The predictor a run's options name: a checkpoint or preset, or a seeded random model (glip-tiny default)."""
    from glip_label.predictor import load_model

    if random_init:
        return load_model(None, config=config or "glip-tiny", device=device, dtype=dtype, seed=seed)
    return load_model(model, config=config, device=device, dtype=dtype)
