"""The run journal: streamed part files, resume after SIGKILL, sharding and merging.

The central property: kill a run at any moment, resume it, and the final ordered results are
byte-identical to those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glip_label.io import atomic_write_jsonl
from glip_label.runs.journal import (
    DuplicateIdError,
    ExistingResultsError,
    IncompleteRunError,
    JournalError,
    RunJournal,
    RunKeyMismatchError,
    list_parts,
    merge_run_dirs,
    parse_shard,
    read_run_key,
    shard_items,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = {"model": "glip-t", "prompt": "person . dog .", "threshold": 0.4, "size": [800, 1333]}

# Shared by this process and the child process, so both compute identical records.
WORKER_SOURCE = r'''
import sys
import zlib
from pathlib import Path

from glip_label.runs.journal import RunJournal

KEY = {"model": "glip-t", "prompt": "person . dog .", "threshold": 0.4, "size": [800, 1333]}
ITEMS = [f"photos/{i:03d}.jpg" for i in range(40)]


def fake_result(item):
    """A deterministic stand-in for the model: the same item always gives the same record."""
    h = zlib.crc32(item.encode())
    if h % 7 == 0:
        return None, {"file_name": item, "kind": "corrupt", "reason": "truncated or corrupt image data"}
    boxes = [[h % 97, h % 89, h % 97 + 10.5, h % 89 + 20.25]] * (h % 3)
    return {"file_name": item, "width": 640, "height": 480, "boxes": boxes, "score": (h % 1000) / 1000}, None


def run(out_dir, pause_at=-1, hang_in_replace=False, delay=0.0, shard_size=4):
    """Label every item not yet done; optionally stop dead at a known point for the parent to kill."""
    import os
    import time

    journal = RunJournal(Path(out_dir), KEY, shard_size=shard_size, resume=True)
    if hang_in_replace:
        real_replace = os.replace

        def hanging_replace(src, dst):
            if Path(dst).name.startswith("part-"):
                print("in-replace", flush=True)
                sys.stdin.readline()  # never returns: the parent kills us here
            real_replace(src, dst)

        os.replace = hanging_replace
    done = journal.done_ids()
    for i, item in enumerate(ITEMS):
        if item in done:
            continue
        record, error = fake_result(item)
        journal.add(item, record=record, error=error)
        print(f"added {i}", flush=True)
        if i == pause_at:
            print("paused", flush=True)
            sys.stdin.readline()
        time.sleep(delay)
    journal.close()
    print("finished", flush=True)


if __name__ == "__main__":
    run(sys.argv[1], pause_at=int(sys.argv[2]), hang_in_replace=sys.argv[3] == "1", delay=float(sys.argv[4]))
'''


@pytest.fixture
def worker(tmp_path: Path) -> tuple[Path, dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SOURCE)
    return script, runpy.run_path(str(script))


def _start_child(script: Path, out: Path, pause_at: int = -1, hang: bool = False, delay: float = 0.0):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(pause_at), "1" if hang else "0", str(delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen, predicate) -> str:
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            raise AssertionError(f"child ended early (rc={proc.returncode}): {proc.stderr.read()}")
        if predicate(line.strip()):
            return line.strip()


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()


def _final_bytes(journal: RunJournal, order: list[str], path: Path) -> bytes:
    atomic_write_jsonl(path, journal.results_in_order(order))
    return path.read_bytes()


# ------------------------------------------------------------------------------ crash and resume


def test_sigkill_at_any_point_then_resume_equals_uninterrupted_run(tmp_path: Path, worker):
    script, mod = worker
    items = mod["ITEMS"]

    reference_dir = tmp_path / "reference"
    mod["run"](reference_dir, shard_size=4)
    with RunJournal.reopen(reference_dir) as reference:
        expected = _final_bytes(reference, items, tmp_path / "reference.jsonl")
    assert len(expected.splitlines()) == 40

    out = tmp_path / "interrupted"

    # 1) killed with records buffered in memory: items 0-7 are in two parts, items 8-9 are lost.
    proc = _start_child(script, out, pause_at=9)
    _read_until(proc, lambda line: line == "paused")
    _sigkill(proc)
    with RunJournal(out, KEY, shard_size=4, resume=True) as journal:
        assert journal.done_ids() == set(items[:8])

    # 2) killed inside a part write, after the temporary file is complete but before the rename.
    proc = _start_child(script, out, hang=True)
    _read_until(proc, lambda line: line == "in-replace")
    _sigkill(proc)
    assert list((out / "parts").glob(".part-*.tmp")), "the killed writer should have left its temp file"
    with RunJournal(out, KEY, shard_size=4, resume=True) as journal:
        assert journal.done_ids() == set(items[:8])  # the unrenamed part does not count
    assert not list((out / "parts").glob(".*.tmp"))  # and was cleaned up

    # 3) killed at an arbitrary moment while running freely.
    proc = _start_child(script, out, delay=0.002)
    _read_until(proc, lambda line: line.startswith("added") and int(line.split()[1]) >= 20)
    _sigkill(proc)
    with RunJournal(out, KEY, shard_size=4, resume=True) as journal:
        assert set(items[:8]) <= journal.done_ids() <= set(items)

    # Resume in this process and finish.
    mod["run"](out, shard_size=4)
    with RunJournal.reopen(out) as journal:
        assert _final_bytes(journal, items, tmp_path / "resumed.jsonl") == expected


def test_add_flush_and_resume(tmp_path: Path):
    out = tmp_path / "run"
    with RunJournal(out, KEY, shard_size=3) as journal:
        for i in range(7):
            if i == 4:
                journal.add(f"img{i}.jpg", error={"kind": "empty", "reason": "zero-byte file"})
            else:
                journal.add(f"img{i}.jpg", record={"n": i, "score": np.float32(0.5), "box": np.arange(4)})
        assert len(list_parts(out / "parts")) == 2  # two full parts, one record still buffered
        assert "img6.jpg" in journal and len(journal) == 7
    assert [p.name for p in list_parts(out / "parts")] == [f"part-00000{i}.jsonl" for i in range(3)]
    assert read_run_key(out) == KEY

    with RunJournal(out, KEY, shard_size=3, resume=True) as journal:
        assert journal.done_ids() == {f"img{i}.jpg" for i in range(7)}
        journal.add("img7.jpg", record={"n": 7})
        journal.add("img8.jpg", error="permission denied")
        journal.add("img9.jpg", error=OSError("disk on fire"))
        results = list(journal.iter_results())

    assert [r["id"] for r in results] == [f"img{i}.jpg" for i in range(10)]
    assert results[0] == {"id": "img0.jpg", "ok": True, "record": {"n": 0, "score": 0.5, "box": [0, 1, 2, 3]}}
    assert results[4] == {"id": "img4.jpg", "ok": False, "error": {"kind": "empty", "reason": "zero-byte file"}}
    assert results[8]["error"] == {"reason": "permission denied"}
    assert results[9]["error"] == {"kind": "exception", "reason": "OSError: disk on fire"}


def test_time_based_flush(tmp_path: Path):
    with RunJournal(tmp_path, KEY, shard_size=100, flush_every_s=0.0) as journal:
        journal.add("a", record={})
        journal.add("b", record={})
        assert len(list_parts(tmp_path / "parts")) == 2  # written although far below shard_size


def test_add_rejects_bad_input(tmp_path: Path):
    with RunJournal(tmp_path, KEY) as journal:
        journal.add("a.jpg", record={"x": 1})
        with pytest.raises(ValueError, match="already has a result"):
            journal.add("a.jpg", record={"x": 1})
        with pytest.raises(ValueError, match="exactly one"):
            journal.add("b.jpg")
        with pytest.raises(ValueError, match="exactly one"):
            journal.add("b.jpg", record={}, error="bad")
        with pytest.raises(ValueError, match="not strict JSON"):
            journal.add("b.jpg", record={"score": float("nan")})
        with pytest.raises(TypeError):
            journal.add(3, record={})  # type: ignore[arg-type]
        assert journal.done_ids() == {"a.jpg"}  # failed adds leave no trace
    with pytest.raises(JournalError, match="closed"):
        journal.add("c.jpg", record={})


def test_existing_results_need_resume(tmp_path: Path):
    with RunJournal(tmp_path, KEY, shard_size=1) as journal:
        journal.add("a.jpg", record={})
    with pytest.raises(ExistingResultsError, match="already has results; pass --resume to continue or choose another"):
        RunJournal(tmp_path, KEY)
    # A folder whose run died before its first part holds nothing to protect: starting over is fine.
    fresh = tmp_path / "fresh"
    RunJournal(fresh, KEY).close()
    RunJournal(fresh, {**KEY, "threshold": 0.9}).close()
    assert read_run_key(fresh)["threshold"] == 0.9
    # --resume on a folder that does not exist yet simply starts the run.
    RunJournal(tmp_path / "new", KEY, resume=True).close()


def test_resume_with_other_options_names_the_differences(tmp_path: Path):
    with RunJournal(tmp_path, KEY, shard_size=1) as journal:
        journal.add("a.jpg", record={})
    changed = {**KEY, "threshold": 0.3, "model": "glip-l", "nms": 0.5}
    with pytest.raises(RunKeyMismatchError) as info:
        RunJournal(tmp_path, changed, resume=True)
    assert info.value.differing_keys == ["model", "nms", "threshold"]
    message = str(info.value)
    assert 'model: saved "glip-t", now "glip-l"' in message and "threshold: saved 0.4, now 0.3" in message
    assert "nms: saved <not set>, now 0.5" in message and "prompt" not in message
    # Tuples and lists are the same option once written as JSON.
    RunJournal(tmp_path, {**KEY, "size": (800, 1333)}, resume=True).close()


def test_one_writer_per_folder(tmp_path: Path):
    first = RunJournal(tmp_path, KEY)
    with pytest.raises(JournalError, match="in use by another process"):
        RunJournal(tmp_path, KEY, resume=True)
    first.close()
    RunJournal(tmp_path, KEY, resume=True).close()  # released on close


def test_stray_temp_files_are_ignored(tmp_path: Path):
    with RunJournal(tmp_path, KEY, shard_size=2) as journal:
        for name in ("a", "b", "c"):
            journal.add(name, record={})
    stray = tmp_path / "parts" / ".part-000002.jsonl.k1l2m3.tmp"
    stray.write_text('{"id":"d","ok":true,"rec')  # what a writer killed mid-write leaves behind
    with RunJournal(tmp_path, KEY, resume=True) as journal:
        assert journal.done_ids() == {"a", "b", "c"}
        journal.add("d", record={"again": True})
    assert not stray.exists()
    with RunJournal.reopen(tmp_path) as journal:
        assert [r["id"] for r in journal.iter_results()] == ["a", "b", "c", "d"]


def test_results_in_order_do_not_depend_on_write_order(tmp_path: Path):
    order = [f"{i:02d}.png" for i in range(25)]
    shuffled = [order[i] for i in np.random.default_rng(1).permutation(len(order))]
    outputs = []
    for name, items, shard_size in (("a", order, 4), ("b", shuffled, 7), ("c", shuffled[::-1], 1)):
        with RunJournal(tmp_path / name, KEY, shard_size=shard_size) as journal:
            for item in items:
                journal.add(item, record={"item": item, "n": len(item)})
        outputs.append(list(journal.results_in_order(order)))
    assert outputs[0] == outputs[1] == outputs[2]
    assert [r["id"] for r in outputs[0]] == order


def test_results_in_order_missing_and_extra_ids(tmp_path: Path):
    with RunJournal(tmp_path, KEY, shard_size=2) as journal:
        for item in ("a", "b", "c", "gone"):
            journal.add(item, record={"item": item})
        # still-buffered results are readable before close
        journal.add("e", record={"item": "e"})
        assert [r["id"] for r in journal.results_in_order(["e", "a"])] == ["e", "a"]
    with pytest.raises(IncompleteRunError, match="1 of 4 items have no result") as info:
        journal.results_in_order(["a", "b", "x", "c"])
    assert info.value.missing_ids == ["x"]
    partial = [r["id"] for r in journal.results_in_order(["c", "x", "a"], allow_missing=True)]
    assert partial == ["c", "a"]  # "gone", "b" and "e" are stored but not asked for


# ------------------------------------------------------------------------------------- sharding


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    assert parse_shard("0/1") == (0, 1)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1-4", "1/4/2", ""):
        with pytest.raises(ValueError, match="0-based shard index"):
            parse_shard(bad)


def test_shard_items_partition():
    items = [f"dir{i % 7}/img_{i:05d}.jpg" for i in range(1000)]
    for count in (1, 2, 3, 8):
        shards = [shard_items(items, (i, count)) for i in range(count)]
        flat = [x for s in shards for x in s]
        assert sorted(flat) == sorted(items) and len(flat) == len(items)  # disjoint and covering
        for s in shards:
            assert s == [x for x in items if x in set(s)]  # original order kept
            assert len(s) > 0.6 * len(items) / count  # the hash spreads items
        # appending files never moves existing ones to another shard
        grown = items + [f"new/extra_{i}.jpg" for i in range(200)]
        for i in range(count):
            assert shard_items(grown, (i, count))[: len(shards[i])] == shards[i]
    assert shard_items(items, None) == items
    with pytest.raises(ValueError):
        shard_items(items, (2, 2))


# ---------------------------------------------------------------------------------------- merge


def _run_sharded(tmp_path: Path, items: list[str], count: int, key: dict) -> list[Path]:
    dirs = []
    for i in range(count):
        out = tmp_path / f"shard{i}"
        with RunJournal(out, {**key, "shard": f"{i}/{count}"}, shard_size=3) as journal:
            for item in shard_items(items, (i, count)):
                journal.add(item, record={"item": item})
        dirs.append(out)
    return dirs


def test_merge_shards_equals_single_run(tmp_path: Path):
    items = [f"img{i:03d}.jpg" for i in range(30)]
    dirs = _run_sharded(tmp_path, items, 3, KEY)
    with RunJournal(tmp_path / "single", {**KEY, "shard": None}, shard_size=5) as single:
        for item in items:
            single.add(item, record={"item": item})

    merge_run_dirs(dirs, tmp_path / "merged")
    assert read_run_key(tmp_path / "merged") == KEY  # the shard option is dropped
    with RunJournal.reopen(tmp_path / "merged") as merged:
        assert merged.done_ids() == set(items)
        assert list(merged.results_in_order(items)) == list(single.results_in_order(items))
    assert not (tmp_path / "merged" / ".parts-merging").exists()

    with pytest.raises(ExistingResultsError):
        merge_run_dirs(dirs, tmp_path / "merged")


def test_merge_reports_duplicates_and_mismatches(tmp_path: Path):
    items = [f"img{i:03d}.jpg" for i in range(12)]
    dirs = _run_sharded(tmp_path, items, 2, KEY)
    with RunJournal(tmp_path / "overlap", {**KEY, "shard": "9/9"}) as journal:
        journal.add(items[0], record={})
        journal.add("only-here.jpg", record={})

    with pytest.raises(DuplicateIdError, match="1 ids have results in more than one source") as info:
        merge_run_dirs([*dirs, tmp_path / "overlap"], tmp_path / "dst")
    assert info.value.duplicate_ids == [items[0]]
    assert not list_parts(tmp_path / "dst" / "parts")  # nothing written

    with pytest.raises(ValueError, match="listed twice"):
        merge_run_dirs([dirs[0], dirs[0]], tmp_path / "dst")

    other = tmp_path / "other"
    with RunJournal(other, {**KEY, "threshold": 0.1, "shard": "1/2"}) as journal:
        journal.add("x.jpg", record={})
    with pytest.raises(RunKeyMismatchError, match="threshold: saved 0.4, now 0.1") as info:
        merge_run_dirs([dirs[0], other], tmp_path / "dst")
    assert info.value.differing_keys == ["threshold"]

    with pytest.raises(JournalError, match="not a glip-label run folder"):
        merge_run_dirs([dirs[0], tmp_path / "nothing"], tmp_path / "dst")

    busy = RunJournal(dirs[1], {**KEY, "shard": "1/2"}, resume=True)
    with pytest.raises(JournalError, match="in use by another process"):
        merge_run_dirs(dirs, tmp_path / "dst")
    busy.close()
    merge_run_dirs(dirs, tmp_path / "dst")
    with RunJournal.reopen(tmp_path / "dst") as merged:
        assert merged.done_ids() == set(items)


def test_run_folder_contents_are_plain_jsonl(tmp_path: Path):
    with RunJournal(tmp_path, KEY, shard_size=2) as journal:
        journal.add("é/ü.jpg", record={"caption": "a line\nbreak and \u2028 separator"})
        journal.add("b.jpg", error={"reason": "zero-byte file"})
    raw = (tmp_path / "parts" / "part-000000.jsonl").read_bytes()
    parsed = [json.loads(line) for line in raw.split(b"\n") if line]  # one record per \n-line
    assert parsed[0] == {"id": "é/ü.jpg", "ok": True, "record": {"caption": "a line\nbreak and \u2028 separator"}}
    assert parsed[1] == {"id": "b.jpg", "ok": False, "error": {"reason": "zero-byte file"}}
    with RunJournal.reopen(tmp_path) as journal:
        assert [r["id"] for r in journal.results_in_order(["b.jpg", "é/ü.jpg"])] == ["b.jpg", "é/ü.jpg"]
