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

The layout of one output folder (one per process/shard; :func:`merge_run_dirs` joins shard folders) is
described in :mod:`glip_label.runs.journal.folder`; the writer is :class:`RunJournal`.

Sharding across processes/machines uses ``--shard i/N`` with a **0-based** ``i`` in ``0..N-1``
(``$SLURM_ARRAY_TASK_ID`` with ``--array=0-(N-1)`` maps directly), see :func:`parse_shard`.
"""

from glip_label.runs.journal.folder import (
    LOCK_FILE,
    PARTS_DIR,
    RUN_KEY_FILE,
    DuplicateIdError,
    ExistingResultsError,
    IncompleteRunError,
    JournalError,
    RunKeyMismatchError,
    list_parts,
    read_run_key,
)
from glip_label.runs.journal.merge import merge_run_dirs
from glip_label.runs.journal.run_journal import RunJournal, read_results_in_order
from glip_label.runs.journal.shards import parse_shard, shard_items, shard_of

__all__ = [
    "LOCK_FILE", "PARTS_DIR", "RUN_KEY_FILE", "DuplicateIdError", "ExistingResultsError", "IncompleteRunError",
    "JournalError", "RunJournal", "RunKeyMismatchError", "list_parts", "merge_run_dirs", "parse_shard",
    "read_results_in_order", "read_run_key", "shard_items", "shard_of",
]
