"""A run folder on disk: its layout, its run key, its part files, its lock, and the errors it raises.

    out_dir/parts/run_key.json         options that must match to resume (model, prompt, thresholds...)
    out_dir/parts/part-000000.jsonl    {"id": ..., "ok": true, "record": {...}}
    out_dir/parts/part-000001.jsonl    {"id": ..., "ok": false, "error": {"reason": ...}}
    out_dir/parts/.lock                held while a process writes here (two writers would clash)

The writer (`glip_label.runs.journal.run_journal.RunJournal`) and the merge of shard folders
(`glip_label.runs.journal.merge.merge_run_dirs`) both read folders through these helpers.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX only; without it (Windows) the single-writer check is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

PARTS_DIR = "parts"
RUN_KEY_FILE = "run_key.json"
LOCK_FILE = ".lock"
_PART_RE = re.compile(r"^part-(\d+)\.jsonl$")
_ID_PREFIX = '{"id":'
_DECODER = json.JSONDecoder()


class JournalError(RuntimeError):
    """A run folder cannot be used as asked; the message says what to do."""


class ExistingResultsError(JournalError):
    pass


class RunKeyMismatchError(JournalError):
    def __init__(self, message: str, differing_keys: list[str]) -> None:
        super().__init__(message)
        self.differing_keys = differing_keys


class DuplicateIdError(JournalError):
    def __init__(self, message: str, duplicate_ids: list[str]) -> None:
        super().__init__(message)
        self.duplicate_ids = duplicate_ids


class IncompleteRunError(JournalError):
    def __init__(self, message: str, missing_ids: list[str]) -> None:
        super().__init__(message)
        self.missing_ids = missing_ids


# -------------------------------------------------------------------------------------- helpers


def normalise_key(run_key: dict[str, Any]) -> dict[str, Any]:
    """The run key as it reads back from JSON (tuples become lists, Paths strings), so a freshly
    built key compares equal to the saved one."""
    return json.loads(json.dumps(run_key, sort_keys=True, default=str))


def diff_keys(saved: dict[str, Any], now: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The run-key entries (outside `ignore`) whose values differ, a missing entry differing from any value."""
    skip = set(ignore)
    keys = (set(saved) | set(now)) - skip
    return sorted(k for k in keys if saved.get(k, _MISSING) != now.get(k, _MISSING))


class _Missing:
    def __repr__(self) -> str:
        return "<not set>"


_MISSING = _Missing()


def describe_diff(saved: dict[str, Any], now: dict[str, Any], keys: list[str]) -> str:
    """The differing entries as "key: saved X, now Y; ..." for an error message (long values cut)."""
    def show(value: Any) -> str:
        text = repr(value) if value is _MISSING else json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(
        f"{k}: saved {show(saved.get(k, _MISSING))}, now {show(now.get(k, _MISSING))}" for k in keys
    )


def list_parts(parts_dir: Path) -> list[Path]:
    """Part files in index order (numeric, so part-1000000 sorts after part-999999)."""
    if not parts_dir.is_dir():
        return []
    numbered = []
    for path in parts_dir.iterdir():
        match = _PART_RE.match(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    return [path for _, path in sorted(numbered)]


def part_index(path: Path) -> int:
    """The number of a part file (part-000012.jsonl -> 12)."""
    match = _PART_RE.match(path.name)
    assert match is not None
    return int(match.group(1))


def remove_stray_temps(parts_dir: Path) -> None:
    """Temporary files of a writer that was killed mid-write (see glip_label.io.atomic_write_bytes).
    Only called with the folder lock held, so no live writer owns them."""
    for path in parts_dir.glob(".*.tmp"):
        logger.info("removing unfinished temporary file %s left by an interrupted run", path)
        path.unlink(missing_ok=True)


def id_of_line(line: bytes, where: str) -> str:
    """The item id of one stored line; parses only the id when the line has our key order."""
    try:
        text = line.decode("utf-8")
        if text.startswith(_ID_PREFIX):
            item_id, _ = _DECODER.raw_decode(text, len(_ID_PREFIX))
        else:
            item_id = json.loads(text)["id"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise JournalError(f"unreadable result line in {where}: {exc}") from None
    if not isinstance(item_id, str):
        raise JournalError(f"result line without a string id in {where}")
    return item_id


def iter_part_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) for each non-blank line of a part file."""
    with open(path, "rb") as fh:
        offset = 0
        for line in fh:
            if line.strip():
                yield offset, line
            offset += len(line)


def read_run_key(out_dir: str | Path) -> dict[str, Any] | None:
    """The run key saved in a run folder, or None when there is none."""
    path = Path(out_dir) / PARTS_DIR / RUN_KEY_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class FolderLock:
    """An exclusive, non-blocking ``flock`` on a file. The kernel drops it when the holder dies,
    even by SIGKILL, so a stale lock never blocks a resume."""

    def __init__(self, path: Path, folder: Path, purpose: str) -> None:
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"{folder} is in use by another process ({purpose}); wait for it to finish, "
                f"or give each process its own --out (use --shard i/N and `glip-label merge`)"
            ) from None
        except OSError as exc:  # filesystems without flock (some network mounts): go on unguarded
            logger.debug("no lock on %s (%s); not guarding against concurrent writers", path, exc)
            os.close(fd)
            return
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
