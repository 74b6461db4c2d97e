"""`glip-label pseudo-caption` over every caption-source layout, bad input, kill/resume and the Ray engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.formats.mdetr import read_mdetr
from glip_label.formats.odvg import read_odvg, validate_odvg_record
from glip_label.runs.pseudo_caption import PseudoCaptionOptions, pseudo_caption

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_mid_run import kill_after_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
runner = CliRunner()


def _captions() -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / "captions.jsonl").read_text().splitlines() if line.strip()]


def _options(source, out, ckpt, **kw) -> PseudoCaptionOptions:
    base = dict(source=str(source), out=out, model=str(ckpt), phrases="rule", box_floor=0.05, batch_size=2,
                torch_threads=1)
    base.update(kw)
    return PseudoCaptionOptions(**base)


def _check_outputs(out: Path) -> list[dict]:
    """Every span indexes the caption, every box lies inside its image, files load with the readers."""
    records = list(read_odvg(out / "grounding.odvg.jsonl"))
    assert records, "no grounded pair"
    for rec in records:
        assert validate_odvg_record(rec) == []
        caption = rec["grounding"]["caption"]
        for region in rec["grounding"]["regions"]:
            spans = region["tokens_positive"]
            assert caption[spans[0][0] : spans[0][1]] == region["phrase"]
            x1, y1, x2, y2 = region["bbox"]
            assert 0 <= x1 < x2 <= rec["width"] and 0 <= y1 < y2 <= rec["height"]  # ODVG: continuous edges
            assert 0.05 <= region["score"] <= 1
    mdetr = read_mdetr(out / "grounding.mdetr.json")
    assert len(mdetr["images"]) == len(records)
    assert sum(len(r["grounding"]["regions"]) for r in records) == len(mdetr["annotations"])
    return records


def test_captions_jsonl(tiny_checkpoint, tmp_path):
    summary = pseudo_caption(_options(EXAMPLES / "captions.jsonl", tmp_path / "out", tiny_checkpoint), progress=False)
    assert summary.pairs == len(_captions()) and summary.grounded > 0
    _check_outputs(tmp_path / "out")


def test_img2dataset_folder_webdataset_tar_and_datasets(tiny_checkpoint, tmp_path):
    folder = tmp_path / "folder" / "00000"
    folder.mkdir(parents=True)
    tar_path = tmp_path / "shard-00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, rec in enumerate(_captions()[:3]):
            key = f"{i:09d}"
            shutil.copy(EXAMPLES / rec["image"], folder / f"{key}{Path(rec['image']).suffix}")
            (folder / f"{key}.txt").write_text(rec["caption"])
            tar.add(folder / f"{key}{Path(rec['image']).suffix}", arcname=f"{key}{Path(rec['image']).suffix}")
            tar.add(folder / f"{key}.txt", arcname=f"{key}.txt")
    for name, source in (("folder", tmp_path / "folder"), ("tar", tar_path)):
        summary = pseudo_caption(_options(source, tmp_path / name, tiny_checkpoint), progress=False)
        assert summary.pairs == 3, name
        _check_outputs(tmp_path / name)
    datasets = pytest.importorskip("datasets", reason="the 'datasets' extra is not installed")
    rows = _captions()[:3]
    dataset = datasets.Dataset.from_dict({"image": [str(EXAMPLES / r["image"]) for r in rows],
                                          "caption": [r["caption"] for r in rows]}).cast_column("image",
                                                                                               datasets.Image())
    dataset.save_to_disk(str(tmp_path / "hf"))
    summary = pseudo_caption(_options(tmp_path / "hf", tmp_path / "hf-out", tiny_checkpoint), progress=False)
    assert summary.pairs == 3
    _check_outputs(tmp_path / "hf-out")


def test_bad_input_is_reported_and_the_run_goes_on(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(EXAMPLES / "images" / "coffee.png", images / "ok.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    long_caption = "a cup on a saucer " + " ".join(["and a very small spoon"] * 80) + " near a table."
    lines = [
        {"image": "images/ok.png", "caption": "A cup of coffee on a saucer with a spoon.", "id": "good"},
        {"image": "images/missing.png", "caption": "a cup", "id": "missing"},
        {"image": "images/broken.jpg", "caption": "a cup", "id": "broken"},
        {"image": "images/ok.png", "caption": "", "id": "empty"},
        {"image": "images/ok.png", "caption": long_caption, "id": "long"},
        {"image": "images/ok.png", "caption": "the same id again", "id": "good"},
        {"image": "images/ok.png", "caption": "and then went away", "id": "nophrase"},
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    result = runner.invoke(app, ["pseudo-caption", str(source), "--model", str(tiny_checkpoint), "--out", str(out),
                                 "--phrases", "rule", "--threads", "1"])
    assert result.exit_code == 0, result.output
    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert "missing" in errors and "broken" in errors and "empty" in errors and "nophrase" in errors
    assert errors["good"]["kind"] == "bad_record" and "duplicate" in errors["good"]["reason"]
    records = {r["id"]: r for r in read_odvg(out / "grounding.odvg.jsonl")}
    assert set(records) <= {"good", "long"} and "good" in records
    if "long" in records:
        assert "truncated" in records["long"]["note"]
    _check_outputs(out)


def test_a_run_that_grounds_nothing_fails_after_writing_why(tiny_checkpoint, tmp_path):
    """No pair (an empty corpus), or every pair skipped: exit 1, not a dataset of nothing; errors.jsonl and
    run.json are written first so the reasons can be read."""
    (tmp_path / "empty.jsonl").write_text("")
    result = runner.invoke(app, ["pseudo-caption", str(tmp_path / "empty.jsonl"), "--model", str(tiny_checkpoint),
                                 "--out", str(tmp_path / "out0"), "--phrases", "rule", "--threads", "1"])
    assert result.exit_code == 1 and "no image-caption pairs found" in result.output, result.output
    lines = [{"image": "images/missing.png", "caption": "a cup on a saucer", "id": "a"},
             {"image": "images/gone.png", "caption": "a spoon", "id": "b"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = runner.invoke(app, ["pseudo-caption", str(tmp_path / "pairs.jsonl"), "--model", str(tiny_checkpoint),
                                 "--out", str(tmp_path / "out"), "--phrases", "rule", "--threads", "1"])
    assert result.exit_code == 1, result.output
    assert "none of the 2 pairs" in result.output and "missing 2" in result.output
    assert len((tmp_path / "out" / "errors.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["grounded"] == 0
    assert (tmp_path / "out" / "grounding.odvg.jsonl").read_text() == ""


def test_a_corpus_that_is_not_there_fails_before_the_model_loads(tmp_path):
    """A mistyped corpus path, a shard pattern naming missing shards, an ImageFolder without the split, a table
    without the caption column: exit 2 with the reason, no run folder, and no model loaded first (the model path
    here does not exist either, so loading it would fail otherwise)."""
    (tmp_path / "pets" / "train").mkdir(parents=True)
    (tmp_path / "pets" / "train" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a cat"}\n')
    (tmp_path / "table.csv").write_text("img,text\na.png,a cat\n")
    for source, reason in ((tmp_path / "nope.jsonl", "does not exist"),
                           (tmp_path / "shard-{000000..000003}.tar", "matches no .tar shard"),
                           (tmp_path / "pets", "no 'validation' split folder"),
                           (tmp_path / "table.csv", "no column 'image' or 'caption'")):
        result = runner.invoke(app, ["pseudo-caption", str(source), "--model", str(tmp_path / "no-model.pth"),
                                     "--out", str(tmp_path / "out"), "--split", "validation"])
        assert result.exit_code == 2 and reason in result.output, result.output
        assert "no-model" not in result.output and not (tmp_path / "out").exists()


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from glip_label.runs.pseudo_caption import PseudoCaptionOptions, pseudo_caption
src, out, ckpt, slow = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
pseudo_caption(PseudoCaptionOptions(source=src, out=out, model=ckpt, phrases="rule", batch_size=2, flush_every=2,
                                    resume=True, torch_threads=1), progress=False, on_batch=lambda n: time.sleep(slow))
"""


def test_sigkill_and_resume_gives_identical_output(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(10):
        Image.open(EXAMPLES / "images" / "coffee.png").resize((120 + 4 * i, 90)).save(images / f"{i}.png")
        lines.append({"image": f"images/{i}.png", "caption": f"a cup number {i} on a saucer with a spoon"})
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    parts = kill_after_parts(script, [str(source), str(killed), str(tiny_checkpoint), "1.0"], killed, timeout_s=180)
    assert 2 <= parts < 5, "the kill must land mid-run"
    subprocess.run([sys.executable, str(script), str(source), str(killed), str(tiny_checkpoint), "0"], check=True)
    subprocess.run([sys.executable, str(script), str(source), str(whole), str(tiny_checkpoint), "0"], check=True)
    for name in ("grounding.odvg.jsonl", "grounding.mdetr.json", "errors.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.slow
def test_ray_engine_matches_local_engine_record_for_record(tiny_checkpoint, tmp_path):
    pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    source = EXAMPLES / "captions.jsonl"
    local = pseudo_caption(_options(source, tmp_path / "local", tiny_checkpoint), progress=False)
    ray_run = pseudo_caption(_options(source, tmp_path / "ray", tiny_checkpoint, engine="ray", ray_actors=2,
                                      ray_cpus_per_actor=0.5), progress=False)
    assert ray_run.pairs == local.pairs and ray_run.grounded == local.grounded > 0
    for name in ("grounding.odvg.jsonl", "grounding.mdetr.json", "errors.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
