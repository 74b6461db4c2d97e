"""`glip-label train-student` and `evaluate`: outputs, resume after SIGKILL, DDP, students from our own outputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.config import get_preset
from glip_label.predictor import load_model
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.pseudo_caption import PseudoCaptionOptions, pseudo_caption
from glip_label.runs.train_student import TrainStudentOptions, train_student
from glip_label.weights import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
sys.path.insert(0, str(REPO / "tests"))
from ddp_worker import make_shapes_data  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_data(tmp_path_factory.mktemp("shapes"), num_images=4)


def _options(gold: Path, out: Path, **changes) -> TrainStudentOptions:
    values = dict(out=out, gold=[str(gold)], config="glip-tiny", max_steps=4, batch_size=2, scales=(128,),
                  checkpoint_every=2, progress=False, seed=0, log_every=1)
    values.update(changes)
    return TrainStudentOptions(**values)


def test_train_student_writes_loadable_outputs_and_metrics(shapes, tmp_path):
    out = tmp_path / "run"
    summary = train_student(_options(shapes, out, val=[str(shapes)]))
    assert summary["step"] == 4
    for name in ("model_final.pth", "model_final.safetensors", "config.yaml", "metrics.csv", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["ap"] <= 1.0 and "ap50" in metrics and metrics["step"] == 4
    assert metrics["data"]["sources"][0]["images"] == 4
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in rows)

    # Official key layout: the .pth has a "model" entry whose keys the official tree uses.
    state = read_checkpoint(out / "model_final.pth")
    assert "backbone.body.patch_embed.proj.weight" in state and "rpn.head.bias_lang" in state
    pth, safetensors = load_model(out / "model_final.pth"), load_model(out / "model_final.safetensors")
    assert pth.config.name == "glip-tiny"
    for key, value in pth.model.state_dict().items():
        assert torch.equal(value, safetensors.model.state_dict()[key]), key
    # The trained weights, not the initial ones, were written.
    initial = torch.load(out / "checkpoints" / "ckpt-2.pt", weights_only=True)["model"]
    assert not torch.equal(initial["rpn.head.bias_lang"], state["rpn.head.bias_lang"])


def test_existing_run_is_refused_without_resume_and_continued_with_it(shapes, tmp_path):
    out = tmp_path / "run"
    train_student(_options(shapes, out, max_steps=2))
    with pytest.raises(FileExistsError, match="--resume"):
        train_student(_options(shapes, out, max_steps=2))
    summary = train_student(_options(shapes, out, max_steps=4, resume=True))
    assert summary["step"] == 4 and summary["resumed_from"].endswith("ckpt-2.pt")


def test_bad_inputs_give_clear_errors(shapes, tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        train_student(TrainStudentOptions(out=tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_student(_options(tmp_path / "missing.json", tmp_path / "b"))
    with pytest.raises(ValueError, match="cannot be combined"):
        train_student(_options(shapes, tmp_path / "c", init="glip-t", backbone="resnet18"))
    result = runner.invoke(app, ["train-student", "--out", str(tmp_path / "d"), "--gold", str(shapes),
                                 "--scales", "12,x"])
    assert result.exit_code == 2 and "--scales" in result.output


def test_sigkill_during_training_then_resume_equals_uninterrupted_run(shapes, tmp_path):
    common = [sys.executable, str(WORKER), "--data", str(shapes), "--steps", "6", "--checkpoint-every", "2",
              "--deterministic"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*common, "--out", str(whole)], check=True)

    proc = subprocess.Popen([*common, "--out", str(killed), "--item-delay", "0.4"])
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "ckpt-2.pt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere inside steps 3-4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists()
    subprocess.run([*common, "--out", str(killed), "--resume"], check=True)

    a, b = read_checkpoint(whole / "model_final.pth"), read_checkpoint(killed / "model_final.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    def curve(run: Path) -> list[dict]:
        with open(run / "metrics.csv") as fh:
            return [{k: v for k, v in row.items() if k != "step_time_s"} for row in csv.DictReader(fh)]

    assert curve(whole) == curve(killed)  # the killed run's rows after its checkpoint were replaced


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def test_torchrun_two_processes_follow_the_one_process_loss_curve(shapes, tmp_path):
    """Same global batch (2 x 1 vs 1 x 2), no dropout, fixed prompts: the loss curves agree to 1e-4 (relative).

    The remaining difference is float summation order (gradients all-reduced over processes).
    """
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    common = ["--data", str(shapes), "--steps", "4", "--checkpoint-every", "4", "--no-dropout", "--fixed-prompt",
              "--flip-prob", "0", "--lr", "1e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(WORKER), *common, "--batch-size", "2", "--out", str(one)], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a rendezvous on a free local port, so two suites on one machine do not collide
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(WORKER), *common,
                    "--batch-size", "1", "--out", str(two)], check=True, env=env)
    curve_one, curve_two = _losses(one), _losses(two)
    assert len(curve_one) == len(curve_two) == 4
    assert curve_one[0] != curve_one[-1]  # the model did train
    for a, b in zip(curve_one, curve_two, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (curve_one, curve_two)


def test_student_from_annotate_and_pseudo_caption_outputs_loads_in_annotate(tiny_checkpoint, tmp_path):
    """The self-training loop on examples/: teacher labels -> student -> the student labels again."""
    labelled = tmp_path / "annotate"
    annotate(AnnotateOptions(source=str(REPO / "examples" / "images"), out=labelled, prompt="person. cup. flag.",
                             model=str(tiny_checkpoint), threshold=0.3, formats=("coco", "odvg")), progress=False)
    grounded = tmp_path / "captions"
    pseudo_caption(PseudoCaptionOptions(source=str(REPO / "examples" / "captions.jsonl"), out=grounded,
                                        model=str(tiny_checkpoint), batch_size=2))
    pseudo = [labelled / "annotations.coco.json", labelled / "annotations.odvg.jsonl",
              grounded / "grounding.odvg.jsonl", grounded / "grounding.mdetr.json"]
    student = tmp_path / "student"
    summary = train_student(TrainStudentOptions(
        out=student, gold=[str(REPO / "examples" / "gold.coco.json")], pseudo=[str(p) for p in pseudo],
        config="glip-tiny", max_steps=2, batch_size=2, scales=(160,), pseudo_min_score=0.3, progress=False,
    ))
    assert summary["step"] == 2
    sources = json.loads((student / "metrics.json").read_text())["data"]["sources"]
    assert [s["format"] for s in sources] == ["coco", "coco", "odvg-detection", "odvg-grounding", "mdetr"]
    assert all(s["images"] > 0 for s in sources)

    again = tmp_path / "again"
    result = runner.invoke(app, ["annotate", str(REPO / "examples" / "images"), "--prompt", "person. cup.",
                                 "--model", str(student / "model_final.pth"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    coco = json.loads((again / "annotations.coco.json").read_text())
    assert len(coco["images"]) >= 2


def test_timm_backbone_student_trains_and_loads_back(shapes, tmp_path):
    out = tmp_path / "r18"
    train_student(_options(shapes, out, backbone="resnet18", backbone_pretrained=False, max_steps=2))
    predictor = load_model(out / "model_final.pth")
    assert predictor.config.timm_backbone == "resnet18"
    with torch.no_grad():
        predictor.model.rpn.head.bias0.fill_(0.0)  # two steps from random init score below the 0.05 floor
    detections = predictor.predict(str(shapes.parent / "shapes_000.png"), ["square", "circle"], threshold=0.0)
    assert len(detections) > 0 and detections.boxes.shape[1] == 4


def test_evaluate_command_writes_json_and_handles_no_detections(shapes, tmp_path):
    out = tmp_path / "run"
    train_student(_options(shapes, out, max_steps=1))
    result = runner.invoke(app, ["evaluate", "--model", str(out / "model_final.pth"), "--val", str(shapes),
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"ap", "ap50", "num_results", "files"}
    bad = runner.invoke(app, ["evaluate", "--model", str(out / "model_final.pth"), "--val", str(tmp_path / "no.json")])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_glip_tiny_student_overfits_eight_images(tmp_path):
    """Acceptance: COCO AP above 0.9 on the 8 training images themselves."""
    gold = make_shapes_data(tmp_path / "data", num_images=8)
    config = get_preset("glip-tiny").replace(min_size_test=128, max_size_test=256)  # train and test at 128 px
    summary = train_student(_options(gold, tmp_path / "run", val=[str(gold)], config=config, max_steps=300, lr=1e-3,
                                     warmup_steps=20, milestones=(0.8, 0.95), checkpoint_every=1000, log_every=25))
    assert summary["metrics"]["ap"] > 0.9, summary["metrics"]
