"""The reduced demo: every stage of the self-training loop runs and leaves valid files (not good metrics)."""

from __future__ import annotations

import json

from pycocotools.coco import COCO
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.data.sources import load_source
from glip_label.predictor import load_model

runner = CliRunner()


def test_quick_demo_runs_every_stage_and_writes_valid_files(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "teacher" in result.output and "ap_novel" in result.output

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3
    for model in ("teacher", "student"):
        for key in ("ap", "ap_base", "ap_novel", "recall_at_1"):
            assert 0.0 <= metrics[model][key] <= 1.0, (model, key)
        load_model(out / model / "model_final.pth")  # loadable checkpoints
        assert len(list((out / "vis" / model).glob("*.png"))) == 2
    for stage in ("world", "teacher", "pseudo_caption", "student", "evaluate_teacher", "evaluate_student"):
        assert metrics["seconds"][stage] > 0

    world = out / "world"
    for split in ("gold", "val"):
        coco = COCO(str(world / split / "coco.json"))
        assert coco.getImgIds() and coco.getAnnIds()
    pseudo = load_source(out / "pseudo" / "grounding.odvg.jsonl", min_score=0.0)
    assert pseudo.format == "odvg-grounding" and pseudo.samples
    for line in (out / "pseudo" / "grounding.odvg.jsonl").read_text().splitlines():
        record = json.loads(line)
        caption = record["grounding"]["caption"]
        for region in record["grounding"]["regions"]:
            (start, end), = region["tokens_positive"]
            assert caption[start:end] == region["phrase"]
            x1, y1, x2, y2 = region["bbox"]
            # ODVG boxes have continuous edges (x2 = "+1" x2 + 1), so they reach at most the image size
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
