"""report.html of annotate / pseudo-caption, parsed back and checked against the run's output files;
calibrate -> thresholds.json -> annotate --thresholds through the CLI."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.formats.coco import xyxy_to_xywh
from glip_label.report import GALLERY, histogram

runner = CliRunner()


class _Report(HTMLParser):
    """Every element carrying data-* attributes, with its tag and its enclosing class section."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.kind: str | None = None
        self.counts: dict[str, int] = {}
        self.histograms: dict[str, list[int]] = {}
        self.bins: dict[str, list[int]] = defaultdict(list)
        self.crops: list[dict] = []
        self.errors: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a and not str(a[key]).startswith("data:"):
                self.external.append(a[key])
        cls = a.get("class", "")
        if tag == "tr" and cls == "count":
            self.counts[a["data-class"]] = int(a["data-count"])
        elif tag == "section":
            self.section = a["data-class"]
        elif tag == "svg":
            self.histograms[a["data-class"]] = json.loads(a["data-counts"])
        elif tag == "rect" and cls == "bin":
            self.bins[self.section].append(int(a["data-count"]))
        elif tag == "div" and cls == "gallery":
            self.kind = a["data-kind"]
        elif tag == "figure":
            self.crops.append({"class": self.section, "kind": self.kind, "file": a["data-file"],
                               "box": [float(v) for v in a["data-box"].split(",")],
                               "score": float(a["data-score"]), "missing": "missing" in cls})
        elif tag == "img" and self.crops:
            self.crops[-1]["src"] = a["src"]
        elif tag == "tr" and cls == "error":
            self.errors.append(a["data-item"])


def _parse(path: Path) -> _Report:
    report = _Report()
    report.feed(path.read_text(encoding="utf-8"))
    return report


def _images(root: Path, count: int = 4) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (96 + 8 * i, 128, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not a picture")
    return root


def test_annotate_report_matches_the_output_files(tiny_checkpoint, tmp_path):
    root = _images(tmp_path / "images")
    out = tmp_path / "run"
    result = runner.invoke(app, ["annotate", str(root), "--model", str(tiny_checkpoint), "--prompt", "cat. dog.",
                                 "--threshold", "0.05", "--out", str(out), "--report"])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / "annotations.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    anns = defaultdict(list)
    for ann in coco["annotations"]:
        anns[names[ann["category_id"]]].append(ann)
    report = _parse(out / "report.html")
    assert report.external == []
    assert report.counts == {name: len(anns[name]) for name in names.values()}
    assert sum(report.counts.values()) > 0
    for name in names.values():
        scores = [a["score"] for a in anns[name]]
        assert report.histograms[name] == histogram(scores) == report.bins[name]
        assert sum(report.histograms[name]) == len(scores)
        ranked = sorted(scores, reverse=True)
        for kind, expected in (("highest", ranked[:GALLERY]), ("lowest", sorted(scores)[:GALLERY])):
            crops = [c for c in report.crops if c["class"] == name and c["kind"] == kind]
            np.testing.assert_allclose([c["score"] for c in crops], expected, atol=1e-4)
            for crop in crops:
                # each crop is a box of the COCO file, cut from its image
                box = xyxy_to_xywh(np.array([crop["box"]]))[0]
                assert any(files[a["image_id"]] == crop["file"] and np.allclose(a["bbox"], box, atol=0.02)
                           for a in anns[name])
                assert not crop["missing"]
                png = Image.open(io.BytesIO(base64.b64decode(crop["src"].split(",", 1)[1])))
                assert png.format == "PNG" and max(png.size) <= 96
    errors = [json.loads(line)["path"] for line in (out / "errors.jsonl").read_text().splitlines()]
    assert report.errors == errors == ["broken.jpg"]


def test_pseudo_caption_report_matches_the_output_files(tiny_checkpoint, tmp_path):
    root = _images(tmp_path / "pairs", count=3)
    captions = ["a red cat next to a dog", "a dog on the grass", "a cat", "nothing to see"]
    lines = [{"image": f"img{i}.png" if i < 3 else "broken.jpg", "caption": c} for i, c in enumerate(captions)]
    source = root / "captions.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "pseudo"
    result = runner.invoke(app, ["pseudo-caption", str(source), "--model", str(tiny_checkpoint), "--phrases", "rule",
                                 "--out", str(out), "--report", "--tta", "--tta-scales", "1", "--tta-merge", "wbf"])
    assert result.exit_code == 0, result.output
    regions = Counter()
    scores = defaultdict(list)
    for line in (out / "grounding.odvg.jsonl").read_text().splitlines():
        for region in json.loads(line)["grounding"]["regions"]:
            regions[region["phrase"].lower()] += 1
            scores[region["phrase"].lower()].append(region["score"])
    report = _parse(out / "report.html")
    assert report.counts == dict(regions) and sum(regions.values()) > 0
    for phrase, values in scores.items():
        assert report.histograms[phrase] == histogram(values)
    assert report.errors == [json.loads(x)["id"] for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(report.errors) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["run_key"]["tta"]["merge"] == "wbf"


def test_calibrate_then_annotate_with_the_thresholds(tiny_checkpoint, tmp_path):
    """A gold set made of the model's own confident boxes: calibrate must find thresholds that keep them
    (F1 1 on the gold set), and annotate --thresholds must apply them per class."""
    root = _images(tmp_path / "images")
    first = tmp_path / "first"
    assert runner.invoke(app, ["annotate", str(root), "--model", str(tiny_checkpoint), "--prompt", "cat. dog.",
                               "--threshold", "0.3", "--out", str(first), "--format", "coco"]).exit_code == 0
    gold = json.loads((first / "annotations.coco.json").read_text())
    assert {a["category_id"] for a in gold["annotations"]} == {1, 2}
    cal = tmp_path / "cal"
    result = runner.invoke(app, ["calibrate", "--model", str(tiny_checkpoint), "--prompt", "cat. dog.",
                                 "--gold", f"{first / 'annotations.coco.json'}@{root}", "--out", str(cal)])
    assert result.exit_code == 0, result.output
    thresholds = json.loads((cal / "thresholds.json").read_text())
    assert thresholds["per_class_micro"]["f1"] == pytest.approx(1.0)
    assert {p.name for p in (cal / "pr_curves").iterdir()} == {"cat.png", "dog.png"}
    assert "threshold:" in (cal / "ontology.calibrated.yaml").read_text()
    second = tmp_path / "second"
    result = runner.invoke(app, ["annotate", str(root), "--model", str(tiny_checkpoint), "--prompt", "cat. dog.",
                                 "--threshold", "0.05", "--thresholds", str(cal / "thresholds.json"),
                                 "--out", str(second), "--format", "coco"])
    assert result.exit_code == 0, result.output
    labeled = json.loads((second / "annotations.coco.json").read_text())
    limit = {1: thresholds["thresholds"]["cat"], 2: thresholds["thresholds"]["dog"]}
    assert labeled["annotations"]
    assert all(a["score"] >= limit[a["category_id"]] - 1e-6 for a in labeled["annotations"])
    assert labeled["info"]["class_thresholds"] == {"cat": limit[1], "dog": limit[2]}
    bad = runner.invoke(app, ["annotate", str(root), "--model", str(tiny_checkpoint), "--prompt", "horse.",
                              "--thresholds", str(cal / "thresholds.json"), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "none of its classes" in bad.output
    # a gold set with none of the classes fails before the model loads (this model path does not exist)
    wrong = runner.invoke(app, ["calibrate", "--model", str(tmp_path / "no-model.pth"), "--prompt", "horse.",
                                "--gold", f"{first / 'annotations.coco.json'}@{root}", "--out", str(tmp_path / "c2")])
    assert wrong.exit_code == 2 and "is one of the classes" in wrong.output and "no-model" not in wrong.output
