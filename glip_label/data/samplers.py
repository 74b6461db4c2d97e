"""In what order training sees its samples: weighted, seeded epochs as one endless stream, cut into
per-rank batches.

Everything derives from (seed, epoch, stream position), never from global state, so a run resumed at
any step, another DDP rank or a DataLoader worker draws exactly the same items.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What a dataset item is: a sample, and the (seed, epoch, stream position) its randomness comes from."""

    sample_id: int
    seed: int
    epoch: int
    position: int


class MixedSampler:
    """Deterministic weighted epochs over several sources, as one endless stream of `SampleKey`s.

    Each epoch holds floor(weight) copies of every sample of a source plus, for a fractional weight, a
    random subset of round(fraction * size) samples; the epoch is then shuffled. Everything derives
    from (seed, epoch), so position p of the stream is epoch p // len(self), offset p % len(self) — a
    run resumed at stream position p continues exactly where it stopped, with no sampler state to save.
    """

    def __init__(self, source_sizes: Sequence[int], weights: Sequence[float], seed: int = 0, shuffle: bool = True):
        if len(source_sizes) != len(weights):
            raise ValueError("one weight per source is needed")
        if any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
        self.source_sizes = [int(n) for n in source_sizes]
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self.shuffle = shuffle
        self.offsets = np.cumsum([0] + self.source_sizes[:-1]).tolist()
        self.epoch_length = sum(
            int(math.floor(w)) * n + int(round((w - math.floor(w)) * n))
            for n, w in zip(self.source_sizes, self.weights, strict=True)
        )
        if self.epoch_length == 0:
            raise ValueError("the data mix is empty (no samples, or all weights are 0)")
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.epoch_length

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Flat sample ids of one epoch, in the order they are consumed."""
        if epoch in self._cache:
            return self._cache[epoch]
        parts = []
        for source_index, (size, weight, offset) in enumerate(
            zip(self.source_sizes, self.weights, self.offsets, strict=True)
        ):
            copies = int(math.floor(weight))
            ids = np.arange(offset, offset + size, dtype=np.int64)
            parts.extend([ids] * copies)
            extra = int(round((weight - copies) * size))
            if extra:
                rng = np.random.default_rng([self.seed, epoch, source_index, 1])
                parts.append(np.sort(rng.choice(ids, size=extra, replace=False)))
        order = np.concatenate(parts)
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, epoch, 0]).permutation(len(order))]
        if len(self._cache) > 2:
            self._cache.pop(min(self._cache))
        self._cache[epoch] = order
        return order

    def position(self, stream_position: int) -> tuple[int, int]:
        """(epoch, offset within the epoch) of a stream position."""
        return divmod(int(stream_position), self.epoch_length)

    def keys(self, start: int, count: int) -> list[SampleKey]:
        """The `count` keys at stream positions start, start+1, ... (crossing epochs as needed)."""
        out = []
        for p in range(start, start + count):
            epoch, offset = self.position(p)
            out.append(SampleKey(int(self.epoch_order(epoch)[offset]), self.seed, epoch, p))
        return out


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Per-rank batches for steps start_step..end_step-1 of a run (a DistributedSampler for the stream).

    Step s consumes the global batch at stream positions start_position + (s - start_step) * G .. + G,
    G = batch_size * world_size; rank r takes the r-th contiguous slice of batch_size keys. One process
    with batch G therefore sees exactly the images that world_size processes see together.
    """

    def __init__(
        self,
        mixed: MixedSampler,
        batch_size: int,
        start_step: int,
        end_step: int,
        start_position: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size} / rank={rank} / world_size={world_size}")
        self.mixed = mixed
        self.batch_size = batch_size
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        self.start_position = start_step * self.global_batch if start_position is None else start_position

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def stream_position(self, step: int) -> int:
        """Stream position of the first key of `step`'s global batch."""
        return self.start_position + (step - self.start_step) * self.global_batch

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start_step, self.end_step):
            keys = self.mixed.keys(self.stream_position(step), self.global_batch)
            yield keys[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
