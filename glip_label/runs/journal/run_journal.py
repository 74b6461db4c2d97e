"""The run journal: one run's per-item results streamed to part files, read back in the caller's order.

See `glip_label.runs.journal` for the guarantee (a killed and resumed run gives the same final output)
and `glip_label.runs.journal.folder` for the folder layout.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from glip_label.io import atomic_write_json, atomic_write_text
from glip_label.runs.journal.folder import (
    LOCK_FILE,
    PARTS_DIR,
    RUN_KEY_FILE,
    DuplicateIdError,
    ExistingResultsError,
    FolderLock,
    IncompleteRunError,
    JournalError,
    RunKeyMismatchError,
    describe_diff,
    diff_keys,
    id_of_line,
    iter_part_lines,
    list_parts,
    normalise_key,
    part_index,
    read_run_key,
    remove_stray_temps,
)

logger = logging.getLogger(__name__)


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
        self.run_key = normalise_key(run_key)
        self.shard_size = shard_size
        self.flush_every_s = flush_every_s
        self._buffer: list[str] = []  # serialised lines, in add() order
        self._buffer_ids: list[str] = []
        self._buffer_since: float | None = None
        self._closed = False

        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.parts_dir / LOCK_FILE, self.out_dir, "writing results")
        try:
            self._ids, self._next_part = self._open(resume)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, resume: bool) -> tuple[set[str], int]:
        remove_stray_temps(self.parts_dir)
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
            differing = diff_keys(saved_key, self.run_key)
            if differing:
                raise RunKeyMismatchError(
                    f"cannot resume {self.out_dir}: these options differ from the interrupted run: "
                    f"{describe_diff(saved_key, self.run_key, differing)}. Use the same options to resume, "
                    f"or choose another --out",
                    differing,
                )
        if saved_key != self.run_key:  # new folder, or a folder whose earlier run never wrote a part
            atomic_write_json(self.parts_dir / RUN_KEY_FILE, self.run_key)

        ids: set[str] = set()
        for part in parts:
            for _, line in iter_part_lines(part):
                item_id = id_of_line(line, str(part))
                if item_id in ids:
                    raise DuplicateIdError(f"{self.out_dir}: id {item_id!r} is stored twice", [item_id])
                ids.add(item_id)
        next_part = part_index(parts[-1]) + 1 if parts else 0
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
            for _, line in iter_part_lines(part):
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
            for offset, line in iter_part_lines(part):
                index[id_of_line(line, str(part))] = (part_no, offset)
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


def read_results_in_order(out_dir: str | Path, order: Sequence[str]) -> Iterator[dict[str, Any]]:
    """A finished run folder's results in the order of `order`, the journal reopened for the reading (the
    final files of annotate and pseudo-caption, and their reports, are written from these)."""
    journal = RunJournal.reopen(out_dir)
    try:
        yield from journal.results_in_order(order)
    finally:
        journal.close()
