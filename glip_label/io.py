"""Crash-safe file writing: everything glip-label writes goes to a temporary name, then is renamed.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file, even after SIGKILL.

Permissions: ``mkstemp`` creates its file with mode 0600 whatever the umask, so the temporary file is
given the mode a plain ``open(path, "w")`` would have created (0666 minus the umask) before it is
renamed into place. Outputs are read by teammates and by services running as another user (a Label
Studio container serving the tasks); a private 0600 file would lock them out.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process umask. Linux exposes it read-only in /proc; elsewhere it is set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 minus the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def mkstemp_like_open(path: Path) -> tuple[int, str]:
    """A temporary file beside `path` with the mode ``open(path, "w")`` would give it (0666 & ~umask)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, plain_file_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Stream a large file to a temporary name; it appears at `path` only when the block finishes cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_like_open(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json_array(fh: IO[str], items: Iterable[Any]) -> int:
    """Write `items` as one compact JSON array without holding them all; returns the count."""
    fh.write("[")
    count = 0
    for item in items:
        fh.write(("," if count else "") + json.dumps(item, ensure_ascii=False))
        count += 1
    fh.write("]")
    return count


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str | Path) -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
