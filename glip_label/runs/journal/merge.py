"""Joining the folders of a sharded run (`--shard i/N`) into one run folder, all or nothing.

The folders are read through `glip_label.runs.journal.folder` (their layout, lock and run key).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from glip_label.io import atomic_write_bytes, atomic_write_json
from glip_label.runs.journal import folder
from glip_label.runs.journal.folder import DuplicateIdError, ExistingResultsError, JournalError, RunKeyMismatchError

logger = logging.getLogger(__name__)


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
    locks = [folder.FolderLock(dst / ".merge.lock", dst, "merging")]
    try:
        if (dst / folder.PARTS_DIR).is_dir():
            locks.append(folder.FolderLock(dst / folder.PARTS_DIR / folder.LOCK_FILE, dst, "writing results"))
        if folder.list_parts(dst / folder.PARTS_DIR):
            raise ExistingResultsError(f"merge destination {dst} already has results; choose another folder")

        keys: list[dict[str, Any]] = []
        for src in sources:
            key = folder.read_run_key(src)
            if key is None:
                raise JournalError(f"{src} is not a glip-label run folder "
                                   f"(no {folder.PARTS_DIR}/{folder.RUN_KEY_FILE})")
            keys.append(key)
            locks.append(folder.FolderLock(src / folder.PARTS_DIR / folder.LOCK_FILE, src, "still writing results"))
        for src, key in zip(sources[1:], keys[1:], strict=True):
            differing = folder.diff_keys(keys[0], key, ignore)
            if differing:
                raise RunKeyMismatchError(
                    f"cannot merge {src} with {sources[0]}: options differ: "
                    f"{folder.describe_diff(keys[0], key, differing)}",
                    differing,
                )

        owner: dict[str, Path] = {}
        duplicates: list[str] = []
        examples: list[str] = []
        for src in sources:
            for part in folder.list_parts(src / folder.PARTS_DIR):
                for _, line in folder.iter_part_lines(part):
                    item_id = folder.id_of_line(line, str(part))
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
        atomic_write_json(staging / folder.RUN_KEY_FILE, merged_key)
        next_part = 0
        for src in sources:
            for part in folder.list_parts(src / folder.PARTS_DIR):
                atomic_write_bytes(staging / f"part-{next_part:06d}.jsonl", part.read_bytes())
                next_part += 1
        final = dst / folder.PARTS_DIR
        if final.exists():  # holds no parts (checked above): only a lock or a run key
            shutil.rmtree(final)
        os.rename(staging, final)
        logger.info("merged %d results from %d folders into %s", len(owner), len(sources), dst)
    finally:
        for lock in reversed(locks):
            lock.release()
