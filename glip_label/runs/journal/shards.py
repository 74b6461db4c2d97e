"""Which items a `--shard i/N` process labels: a stable hash of each id, so every machine agrees without talking.

Sharding across processes/machines uses ``--shard i/N`` with a **0-based** ``i`` in ``0..N-1``
(``$SLURM_ARRAY_TASK_ID`` with ``--array=0-(N-1)`` maps directly), see :func:`parse_shard`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard i/N``: shard index ``i`` is 0-based, ``0 <= i < N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if count >= 1 and index < count:
            return index, count
    raise ValueError(
        f"--shard expects 'i/N' with a 0-based shard index 0 <= i < N (for N=4: 0/4, 1/4, 2/4, 3/4), "
        f"got {text!r}"
    )


def shard_of(item_id: str, num_shards: int) -> int:
    """Stable shard of one id: CRC-32 of its UTF-8 bytes, so adding files never moves other files
    to another shard (a finished shard stays finished) and every machine agrees without talking."""
    return zlib.crc32(item_id.encode("utf-8")) % num_shards


def shard_items(items: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The items of shard ``(i, N)`` in their original order; all items when ``shard`` is None."""
    if shard is None:
        return list(items)
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"invalid shard {index}/{count}: need 0 <= i < N")
    return [item for item in items if shard_of(item, count) == index]
