"""A YOLO dataset as users bring it (a Roboflow-style export: data.yaml beside train/ and valid/ folders) read by
Ultralytics' rules (glip_label/formats/yolo_dataset.py cites them), and used by train-student, evaluate and
calibrate wherever they take a COCO file. The same rules are checked against Ultralytics itself where it is
installed (it pulls opencv: CI runs the reproduced rules only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.data.sources import detect_format, load_source, read_detection_gold
from glip_label.formats.yolo_dataset import read_yolo_dataset
from glip_label.runs.calibrate import read_gold_set
from glip_label.runs.ontology import Ontology
from glip_label.runs.train_student import check_val_files

runner = CliRunner()
NAMES = {0: "cat", 1: "dog"}


def _image(path: Path, size: tuple[int, int], exif_orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if exif_orientation is None:
        image.save(path)
        return
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    image.save(path, exif=exif)


def _labels(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def roboflow(tmp_path: Path) -> Path:
    """data.yaml as Roboflow writes it (train: ../train/images, names as an id map, no path), with what label
    folders hold in the wild; returns the yaml."""
    root = tmp_path / "pets"
    train, valid = root / "train", root / "valid"
    _image(train / "images" / "box.jpg", (200, 100))
    # the last row repeats the first
    _labels(train / "labels" / "box.txt", "0 0.5 0.5 0.2 0.4\n1 0.25 0.75 0.1 0.2\n0 0.5 0.5 0.2 0.4\n")
    _image(train / "images" / "polygon.png", (100, 100))
    _labels(train / "labels" / "polygon.txt", "1 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")  # a segment: its box
    _image(train / "images" / "negative.jpg", (64, 64))
    _labels(train / "labels" / "negative.txt", "")  # an empty file: a known negative
    _image(train / "images" / "unlabeled.jpg", (64, 64))  # no label file: no objects either
    _image(train / "images" / "rotated.jpg", (120, 60), exif_orientation=6)  # shown as 60 x 120
    _labels(train / "labels" / "rotated.txt", "0 0.5 0.25 0.5 0.5\n")
    _image(train / "images" / "bad_class.jpg", (64, 64))
    _labels(train / "labels" / "bad_class.txt", "2 0.5 0.5 0.1 0.1\n")  # class 2 of 2: corrupt
    _image(train / "images" / "six.jpg", (64, 64))
    _labels(train / "labels" / "six.txt", "0 0.5 0.5 0.1 0.1 0.9\n")  # 6 columns: corrupt for a detect dataset
    _image(train / "images" / "tiny.jpg", (8, 8))  # under 10 pixels: corrupt
    (train / "images" / "notes.md").write_text("not an image")
    (train / "images" / "._box.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: hidden, skipped
    _image(valid / "images" / "v.jpg", (80, 40))
    _labels(valid / "labels" / "v.txt", "1 0.5 0.5 0.5 0.5\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text("train: ../train/images\nval: ../valid/images\n\nnc: 2\nnames:\n  0: cat\n  1: dog\n"
                         "roboflow:\n  workspace: me\n  version: 1\n")
    return yaml_path


def _boxes_by_file(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    found: dict[str, list] = {name: [] for name in files.values()}
    for a in coco["annotations"]:
        found[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"]))
    return {k: sorted(v) for k, v in found.items()}


def test_a_roboflow_export_reads_by_ultralytics_rules(roboflow: Path):
    coco = read_yolo_dataset(roboflow, "train")
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    assert sizes == {"train/images/box.jpg": (200, 100), "train/images/negative.jpg": (64, 64),
                     "train/images/polygon.png": (100, 100), "train/images/rotated.jpg": (60, 120),
                     "train/images/unlabeled.jpg": (64, 64)}
    boxes = _boxes_by_file(coco)
    assert boxes["train/images/box.jpg"] == [("cat", [80.0, 30.0, 40.0, 40.0]), ("dog", [40.0, 65.0, 20.0, 20.0])]
    assert boxes["train/images/polygon.png"] == [("dog", [10.0, 20.0, 20.0, 40.0])]
    assert boxes["train/images/rotated.jpg"] == [("cat", [15.0, 0.0, 30.0, 60.0])]  # on the 60 x 120 picture
    assert boxes["train/images/negative.jpg"] == boxes["train/images/unlabeled.jpg"] == []
    corrupt = {c["file_name"]: c["reason"] for c in coco["yolo"]["corrupt"]}
    assert corrupt.keys() == {"train/images/bad_class.jpg", "train/images/six.jpg", "train/images/tiny.jpg"}
    assert "exceeds" in corrupt["train/images/bad_class.jpg"] and "5 columns" in corrupt["train/images/six.jpg"]
    assert coco["yolo"]["without_labels"] == 1
    val = read_detection_gold(roboflow)  # evaluation and calibration read the val split
    assert _boxes_by_file(val) == {"valid/images/v.jpg": [("dog", [20.0, 10.0, 40.0, 20.0])]}


def test_image_lists_path_and_nc_only(tmp_path: Path):
    """A .txt list of images ('./x' from the list's folder), an explicit path, names from nc alone; a split that
    is not there is named."""
    root = tmp_path / "ds"
    _image(root / "images" / "a" / "x.png", (50, 50))
    _labels(root / "labels" / "a" / "x.txt", "0 0.5 0.5 0.2 0.2\n")
    _image(root / "images" / "b" / "y.png", (50, 50))
    (root / "val.txt").write_text("./images/a/x.png\n")
    yaml_path = tmp_path / "cfg" / "ds.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text(f"path: {root}\ntrain: images\nval: val.txt\nnc: 1\n")
    train = read_yolo_dataset(yaml_path, "train")
    assert [im["file_name"] for im in train["images"]] == [str(root / "images/a/x.png"), str(root / "images/b/y.png")]
    assert [c["name"] for c in train["categories"]] == ["class_0"]
    assert [a["bbox"] for a in read_yolo_dataset(yaml_path, "val")["annotations"]] == [[20.0, 20.0, 10.0, 10.0]]
    with pytest.raises(ValueError, match="no 'test' entry"):
        read_yolo_dataset(yaml_path, "test")
    _labels(root / "labels" / "b" / "y.txt", "1 0.5 0.5 0.2 0.2\n")  # class 1 of 1: y.png is dropped
    (root / "labels" / "a" / "x.txt").write_text("0 0.5 0.5 0.2\n")  # and x.png
    with pytest.raises(ValueError, match="every 'train' image was dropped for corrupt labels"):
        read_yolo_dataset(yaml_path, "train")


def test_train_student_evaluate_and_calibrate_take_a_data_yaml(roboflow: Path, tiny_checkpoint, tmp_path: Path):
    assert detect_format(roboflow) == "yolo"
    source = load_source(roboflow)
    assert source.format == "yolo" and len(source.samples) == 5
    assert source.stats["images_dropped_corrupt_labels"] == 3
    for refused in (lambda spec: load_source(spec), lambda spec: check_val_files([spec]),
                    lambda spec: read_gold_set(spec, Ontology.from_names(["cat"]))):
        with pytest.raises(ValueError, match="names its own images"):
            refused(f"{roboflow}@{tmp_path}")
    result = runner.invoke(app, ["train-student", "--gold", str(roboflow), "--val", str(roboflow), "--config",
                                 "glip-tiny", "--max-steps", "1", "--batch-size", "2", "--scales", "96",
                                 "--out", str(tmp_path / "student")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["num_unreadable_images"] == 0  # the val split
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--val", str(roboflow)])
    assert result.exit_code == 0 and "num_images" in result.output, result.output
    from glip_label.predictor import load_model
    from glip_label.runs.calibrate import collect_matches

    per_class, _ = collect_matches(load_model(str(tiny_checkpoint)), str(roboflow), Ontology.from_names(["cat", "dog"]))
    assert {name: m.n_gold for name, m in per_class.items() if m.n_gold} == {"dog": 1}  # calibrate's gold: val


def test_real_ultralytics_reads_the_same_boxes(roboflow: Path, monkeypatch, tmp_path: Path):
    """The rules above against Ultralytics' own YOLODataset (`pip install ultralytics`), what YOLO(...).train
    builds: the same images kept, the same boxes."""
    pytest.importorskip("ultralytics")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(roboflow))
    dataset = YOLODataset(img_path=data["train"], data=data, task="detect", imgsz=160, augment=False)
    theirs = {}
    for label in dataset.labels:
        height, width = label["shape"]
        rel = Path(label["im_file"]).relative_to(roboflow.parent).as_posix()
        theirs[rel] = sorted((data["names"][int(c)], [round(v, 4) for v in ((x - w / 2) * width, (y - h / 2) * height,
                                                                             w * width, h * height)])
                             for c, (x, y, w, h) in zip(label["cls"].ravel(), label["bboxes"].tolist(), strict=True))
    ours = _boxes_by_file(read_yolo_dataset(roboflow, "train"))
    assert theirs.keys() == ours.keys()
    for name, boxes in ours.items():
        assert [c for c, _ in boxes] == [c for c, _ in theirs[name]]
        assert np.allclose([b for _, b in boxes], [b for _, b in theirs[name]], atol=1e-3), name
