"""Sharded, resumable, crash-safe storage of per-item results.

A labelling run maps an ordered list of work items (string ids, e.g. relative image paths) to one
JSON record per item. Runs last hours and get killed (preemption, OOM, Ctrl-C, SLURM time limits),
so results are streamed to small *part* files instead of being held in memory, and a resumed run
skips what is already on disk. The guarantee:

    kill the process with SIGKILL at any moment, resume, and the final output
    (``results_in_order(items)``) is identical to that of an uninterrupted run.

It holds because (1) every part file is written to a temporary name and renamed into place, so a
part is either complete or absent; (2) records still in memory when the process dies are simply
recomputed on resume; (3) final files are produced in the caller's item order, never in the order
parts happened to be written.

Layout of one output folder (one per process/shard; :func:`merge_run_dirs` joins shard folders)::

    out_dir/parts/run_key.json         options that must match to resume (model, prompt, thresholds...)
    out_dir/parts/part-000000.jsonl    {"id": ..., "ok": true, "record": {...}}
    out_dir/parts/part-000001.jsonl    {"id": ..., "ok": false, "error": {"reason": ...}}
    out_dir/parts/.lock                held while a process writes here (two writers would clash)

Sharding across processes/machines uses ``--shard i/N`` with a **0-based** ``i`` in ``0..N-1``
(``$SLURM_ARRAY_TASK_ID`` with ``--array=0-(N-1)`` maps directly), see :func:`parse_shard`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from glip_label.io import atomic_write_bytes, atomic_write_json, atomic_write_text

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


# ------------------------------------------------------------------------------------- sharding


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


# -------------------------------------------------------------------------------------- helpers


def _normalise_key(run_key: dict[str, Any]) -> dict[str, Any]:
    """The run key as it reads back from JSON (tuples become lists, Paths strings), so a freshly
    built key compares equal to the saved one."""
    return json.loads(json.dumps(run_key, sort_keys=True, default=str))


def _diff_keys(saved: dict[str, Any], now: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    skip = set(ignore)
    keys = (set(saved) | set(now)) - skip
    return sorted(k for k in keys if saved.get(k, _MISSING) != now.get(k, _MISSING))


class _Missing:
    def __repr__(self) -> str:
        return "<not set>"


_MISSING = _Missing()


def _describe_diff(saved: dict[str, Any], now: dict[str, Any], keys: list[str]) -> str:
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


def _part_index(path: Path) -> int:
    match = _PART_RE.match(path.name)
    assert match is not None
    return int(match.group(1))


def _remove_stray_temps(parts_dir: Path) -> None:
    """Temporary files of a writer that was killed mid-write (see glip_label.io.atomic_write_bytes).
    Only called with the folder lock held, so no live writer owns them."""
    for path in parts_dir.glob(".*.tmp"):
        logger.info("removing unfinished temporary file %s left by an interrupted run", path)
        path.unlink(missing_ok=True)


def _id_of_line(line: bytes, where: str) -> str:
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


def _iter_part_lines(path: Path) -> Iterator[tuple[int, bytes]]:
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


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays (anything with ``tolist``) become plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _error_payload(error: Any) -> dict[str, Any]:
    if hasattr(error, "to_dict"):
        return dict(error.to_dict())
    if isinstance(error, dict):
        return dict(error)
    if isinstance(error, str):
        return {"reason": error}
    if isinstance(error, BaseException):
        return {"kind": "exception", "reason": f"{type(error).__name__}: {error}"}
    raise TypeError(f"error must be a dict, a str, an exception or have to_dict(), got {type(error).__name__}")


class _FolderLock:
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


# --------------------------------------------------------------------------------------- journal


class RunJournal:
    """Results of one run (one process, one output folder), streamed to part files.

    ``run_key``: the options that decide the results (model, weights hash, prompt, thresholds,
    image size...). Resuming with different options would silently mix two runs' labels in one
    dataset, so it is refused with the differing keys named. ``shard_size``: records per part file;
    at most this many finished records are lost to a kill (they are recomputed on resume).
    ``flush_every_s``: also write a part once the oldest buffered record is this old, which bounds
    lost work in wall time for slow models.

    Not thread-safe: one writer thread per journal. Memory holds the set of recorded ids and at
    most ``shard_size`` buffered records.
    """

    def __init__(
        self,
        out_dir: str | Path,
        run_key: dict[str, Any],
        shard_size: int = 256,
        resume: bool = False,
        *,
        flush_every_s: float | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS_DIR
        self.run_key = _normalise_key(run_key)
        self.shard_size = shard_size
        self.flush_every_s = flush_every_s
        self._buffer: list[str] = []  # serialised lines, in add() order
        self._buffer_ids: list[str] = []
        self._buffer_since: float | None = None
        self._closed = False

        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _FolderLock(self.parts_dir / LOCK_FILE, self.out_dir, "writing results")
        try:
            self._ids, self._next_part = self._open(resume)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, resume: bool) -> tuple[set[str], int]:
        _remove_stray_temps(self.parts_dir)
        parts = list_parts(self.parts_dir)
        saved_key = read_run_key(self.out_dir)
        if parts and not resume:
            raise ExistingResultsError(
                f"output folder {self.out_dir} already has results; "
                f"pass --resume to continue or choose another --out"
            )
        if resume and parts and saved_key is None:
            raise JournalError(
                f"cannot resume {self.out_dir}: it has result parts but no {PARTS_DIR}/{RUN_KEY_FILE}, so the "
                f"options of the earlier run are unknown; choose another --out"
            )
        if resume and saved_key is not None:
            differing = _diff_keys(saved_key, self.run_key)
            if differing:
                raise RunKeyMismatchError(
                    f"cannot resume {self.out_dir}: these options differ from the interrupted run: "
                    f"{_describe_diff(saved_key, self.run_key, differing)}. Use the same options to resume, "
                    f"or choose another --out",
                    differing,
                )
        if saved_key != self.run_key:  # new folder, or a folder whose earlier run never wrote a part
            atomic_write_json(self.parts_dir / RUN_KEY_FILE, self.run_key)

        ids: set[str] = set()
        for part in parts:
            for _, line in _iter_part_lines(part):
                item_id = _id_of_line(line, str(part))
                if item_id in ids:
                    raise DuplicateIdError(f"{self.out_dir}: id {item_id!r} is stored twice", [item_id])
                ids.add(item_id)
        next_part = _part_index(parts[-1]) + 1 if parts else 0
        if parts:
            logger.info("resuming %s: %d results in %d parts", self.out_dir, len(ids), len(parts))
        return ids, next_part

    @classmethod
    def reopen(cls, out_dir: str | Path) -> RunJournal:
        """Open a finished (or merged) run folder with its own saved run key, e.g. to write the
        final files. Takes the folder's lock like any writer."""
        key = read_run_key(out_dir)
        if key is None:
            raise JournalError(f"{out_dir} is not a glip-label run folder (no {PARTS_DIR}/{RUN_KEY_FILE})")
        return cls(out_dir, key, resume=True)

    # -- writing ---------------------------------------------------------------------------------

    def done_ids(self) -> set[str]:
        """Ids that already have a result (on disk, or buffered in this process): skip these."""
        return set(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_id: str, record: Any = None, error: Any = None) -> None:
        """Record the result of one item: either ``record`` (any strict-JSON value; numpy values
        are converted) or ``error`` (dict, str, exception, or an object with ``to_dict()`` such as
        ``ImageError``). Each id may be recorded once per folder."""
        if self._closed:
            raise JournalError(f"journal for {self.out_dir} is closed")
        if not isinstance(item_id, str):
            raise TypeError(f"item ids are strings, got {type(item_id).__name__}")
        if (record is None) == (error is None):
            raise ValueError("pass exactly one of record= or error=")
        if item_id in self._ids:
            raise ValueError(f"{item_id!r} already has a result in {self.out_dir}")
        if error is None:
            entry = {"id": item_id, "ok": True, "record": record}
        else:
            entry = {"id": item_id, "ok": False, "error": _error_payload(error)}
        try:
            # allow_nan=False: NaN/Infinity are not JSON and break other tools reading the output.
            line = json.dumps(
                entry, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"result of {item_id!r} is not strict JSON: {exc}") from None
        self._buffer.append(line)
        self._buffer_ids.append(item_id)
        self._ids.add(item_id)
        if self._buffer_since is None:
            self._buffer_since = time.monotonic()
        if len(self._buffer) >= self.shard_size or (
            self.flush_every_s is not None and time.monotonic() - self._buffer_since >= self.flush_every_s
        ):
            self.flush()

    def flush(self) -> None:
        """Write buffered records as one new part file (atomically)."""
        if not self._buffer:
            return
        path = self.parts_dir / f"part-{self._next_part:06d}.jsonl"
        atomic_write_text(path, "\n".join(self._buffer) + "\n")
        self._next_part += 1
        self._buffer.clear()
        self._buffer_ids.clear()
        self._buffer_since = None

    def close(self) -> None:
        """Flush what is buffered and release the folder. Reading stays possible afterwards."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> RunJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Also on errors and Ctrl-C: the buffered records are complete results worth keeping.
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def iter_results(self) -> Iterator[dict[str, Any]]:
        """All stored results in part order, then any still-buffered ones, one dict at a time."""
        for part in list_parts(self.parts_dir):
            for _, line in _iter_part_lines(part):
                yield json.loads(line)
        for line in list(self._buffer):
            yield json.loads(line)

    def results_in_order(
        self, order: Sequence[str], *, allow_missing: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Results in the order of ``order`` (normally the full item list), so final files do not
        depend on where a run was interrupted or how parts were split.

        Memory: an index id -> (part, byte offset), built from the parts' ids only; each record is
        read from disk when yielded. Ids stored but absent from ``order`` are skipped (e.g. images
        deleted since the run started). Ids in ``order`` with no result raise
        :class:`IncompleteRunError` before anything is yielded, unless ``allow_missing``.
        """
        index: dict[str, tuple[int, int]] = {}
        parts = list_parts(self.parts_dir)
        for part_no, part in enumerate(parts):
            for offset, line in _iter_part_lines(part):
                index[_id_of_line(line, str(part))] = (part_no, offset)
        buffered = {item_id: pos for pos, item_id in enumerate(self._buffer_ids)}
        missing = [item_id for item_id in order if item_id not in index and item_id not in buffered]
        if missing and not allow_missing:
            examples = ", ".join(repr(m) for m in missing[:5])
            raise IncompleteRunError(
                f"{len(missing)} of {len(order)} items have no result in {self.out_dir} (e.g. {examples}); "
                f"the run is incomplete: run it again with --resume",
                missing,
            )
        return self._read_in_order(order, parts, index, buffered)

    def _read_in_order(
        self,
        order: Sequence[str],
        parts: list[Path],
        index: dict[str, tuple[int, int]],
        buffered: dict[str, int],
    ) -> Iterator[dict[str, Any]]:
        handles: OrderedDict[int, BinaryIO] = OrderedDict()  # small LRU: parts are read mostly in runs
        try:
            for item_id in order:
                where = index.get(item_id)
                if where is None:
                    if item_id in buffered:
                        yield json.loads(self._buffer[buffered[item_id]])
                    continue
                part_no, offset = where
                fh = handles.get(part_no)
                if fh is None:
                    fh = open(parts[part_no], "rb")  # noqa: SIM115 - closed in the finally below
                    handles[part_no] = fh
                    if len(handles) > 32:
                        handles.popitem(last=False)[1].close()
                else:
                    handles.move_to_end(part_no)
                fh.seek(offset)
                yield json.loads(fh.readline())
        finally:
            for fh in handles.values():
                fh.close()


# ---------------------------------------------------------------------------------------- merge


def merge_run_dirs(
    src_dirs: Sequence[str | Path], dst: str | Path, *, ignore_keys: Iterable[str] = ("shard",)
) -> None:
    """Join the parts of several shard folders into one run folder at ``dst``.

    The sources must have been produced with the same run key apart from ``ignore_keys`` (the
    shard option) and must not be running. Ids stored in more than one source (overlapping shards,
    a folder listed twice) raise :class:`DuplicateIdError` naming them, before anything is written.
    The merged folder is assembled under a temporary name and renamed into place, so a killed
    merge leaves nothing half-done and can simply be run again. The result is an ordinary run
    folder: open it with ``RunJournal(dst, read_run_key(dst), resume=True)`` and read
    ``results_in_order``.
    """
    if not src_dirs:
        raise ValueError("merge needs at least one source folder")
    sources = [Path(s) for s in src_dirs]
    dst = Path(dst)
    ignore = list(ignore_keys)
    seen: dict[str, Path] = {os.path.realpath(dst): dst}
    for src in sources:
        real = os.path.realpath(src)
        if real in seen:
            what = "the merge destination" if seen[real] is dst else f"listed twice (also as {seen[real]})"
            raise ValueError(f"source folder {src} is {what}")
        seen[real] = src

    dst.mkdir(parents=True, exist_ok=True)
    locks = [_FolderLock(dst / ".merge.lock", dst, "merging")]
    try:
        if (dst / PARTS_DIR).is_dir():
            locks.append(_FolderLock(dst / PARTS_DIR / LOCK_FILE, dst, "writing results"))
        if list_parts(dst / PARTS_DIR):
            raise ExistingResultsError(f"merge destination {dst} already has results; choose another folder")

        keys: list[dict[str, Any]] = []
        for src in sources:
            key = read_run_key(src)
            if key is None:
                raise JournalError(f"{src} is not a glip-label run folder (no {PARTS_DIR}/{RUN_KEY_FILE})")
            keys.append(key)
            locks.append(_FolderLock(src / PARTS_DIR / LOCK_FILE, src, "still writing results"))
        for src, key in zip(sources[1:], keys[1:], strict=True):
            differing = _diff_keys(keys[0], key, ignore)
            if differing:
                raise RunKeyMismatchError(
                    f"cannot merge {src} with {sources[0]}: options differ: "
                    f"{_describe_diff(keys[0], key, differing)}",
                    differing,
                )

        owner: dict[str, Path] = {}
        duplicates: list[str] = []
        examples: list[str] = []
        for src in sources:
            for part in list_parts(src / PARTS_DIR):
                for _, line in _iter_part_lines(part):
                    item_id = _id_of_line(line, str(part))
                    first = owner.setdefault(item_id, src)
                    if first is not src:
                        duplicates.append(item_id)
                        if len(examples) < 5:
                            examples.append(f"{item_id!r} in {first} and {src}")
        if duplicates:
            raise DuplicateIdError(
                f"{len(duplicates)} ids have results in more than one source folder (e.g. "
                f"{'; '.join(examples)}); were the same shard or overlapping runs merged?",
                duplicates,
            )

        staging = dst / ".parts-merging"
        if staging.exists():  # left by a killed merge
            shutil.rmtree(staging)
        staging.mkdir()
        merged_key = {k: v for k, v in keys[0].items() if k not in ignore}
        atomic_write_json(staging / RUN_KEY_FILE, merged_key)
        next_part = 0
        for src in sources:
            for part in list_parts(src / PARTS_DIR):
                atomic_write_bytes(staging / f"part-{next_part:06d}.jsonl", part.read_bytes())
                next_part += 1
        final = dst / PARTS_DIR
        if final.exists():  # holds no parts (checked above): only a lock or a run key
            shutil.rmtree(final)
        os.rename(staging, final)
        logger.info("merged %d results from %d folders into %s", len(owner), len(sources), dst)
    finally:
        for lock in reversed(locks):
            lock.release()
