"""`glip-label annotate` end to end on a generated glip-tiny checkpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.data.image_discovery import discover_images
from glip_label.formats.odvg import read_odvg, validate_odvg_record
from glip_label.formats.yolo import read_yolo_labels
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_labeler import postprocess_for_ontology
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.journal import shard_items
from glip_label.runs.ontology import Ontology, load_ontology

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_mid_run import kill_after_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _scene(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return image


@pytest.fixture()
def good_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        _scene(i).save(root / f"img{i}.png")
    _scene(9).save(root / "sub" / "deep.jpg")
    return root


def test_messy_folder_labels_good_images_and_reports_bad_ones(tiny_checkpoint, tmp_path):
    root = tmp_path / "messy"
    root.mkdir()
    _scene(0).save(root / "ok.png")
    buf = io.BytesIO()
    _scene(1).save(buf, format="JPEG")
    (root / "corrupt.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello, not a picture")
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(root / "deep16.png")
    _scene(2).convert("CMYK").save(root / "cmyk.jpg")
    rotated = _scene(3, size=(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(root / "exif.jpg", exif=exif)
    (root / "loop").mkdir()
    os.symlink(root, root / "loop" / "back")
    out = tmp_path / "out"
    result = runner.invoke(app, ["annotate", str(root), "--prompt", "thing. other.", "--model", str(tiny_checkpoint),
                                 "--out", str(out), "--threshold", "0.0"])
    assert result.exit_code == 0, result.output
    errors = {e["path"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"corrupt.jpg", "empty.jpg", "text.jpg"}
    assert "zero-byte" in errors["empty.jpg"] and "not an image" in errors["text.jpg"]
    coco = json.loads((out / "annotations.coco.json").read_text())
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    assert set(sizes) == {"ok.png", "deep16.png", "cmyk.jpg", "exif.jpg"}
    assert sizes["exif.jpg"] == (40, 80)  # EXIF orientation applied
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["errors"] == 3 and run["counts"]["labeled"] == 4


def test_exit_code_is_nonzero_when_no_image_can_be_read(tiny_checkpoint, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"")
    result = runner.invoke(app, ["annotate", str(root), "--prompt", "x.", "--model", str(tiny_checkpoint),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 1


def test_outputs_load_in_pycocotools_odvg_and_yolo(tiny_checkpoint, good_folder, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "out"
    summary = annotate(AnnotateOptions(source=str(good_folder), out=out, prompt="thing. other.",
                                       model=str(tiny_checkpoint), threshold=0.2, save_vis=2,
                                       formats=("coco", "odvg", "yolo", "labelstudio")), progress=False)
    assert summary.labeled == 6 and sum(summary.boxes_per_class.values()) > 0
    gt = COCO(str(out / "annotations.coco.json"))
    assert len(gt.getImgIds()) == 6 and [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["thing", "other"]
    # The labels scored against themselves as a gold set: AP 1.
    results = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in gt.dataset["annotations"]]
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(), ev.accumulate()
    ev.summarize()
    assert ev.stats[0] > 0.99
    labels = json.loads((out / "label_map.json").read_text())
    records = list(read_odvg(out / "annotations.odvg.jsonl"))
    assert len(records) == 6 and all(validate_odvg_record(r, labels) == [] for r in records)
    for image in gt.dataset["images"]:
        rel = Path(image["file_name"]).with_suffix(".txt")
        boxes, classes = read_yolo_labels(out / "yolo" / "labels" / rel, image["width"], image["height"])
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image["id"]]))
        assert len(boxes) == len(anns)
        for box, ann in zip(boxes, sorted(anns, key=lambda a: -a["score"]), strict=True):
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(box, [x, y, x + w - 1, y + h - 1], atol=0.02)
    assert len(list((out / "vis").rglob("*.jpg"))) == 2
    tasks = json.loads((out / "labelstudio.json").read_text())
    assert len(tasks) == 6


def test_ontology_maps_prompts_to_classes_with_thresholds(tmp_path):
    path = tmp_path / "onto.yaml"
    path.write_text("classes:\n  person: {prompts: [man, woman], threshold: 0.5}\n  car: [car]\n")
    ontology = load_ontology(ontology=path)
    assert ontology.categories == ["person", "car"] and ontology.phrases == ["man", "woman", "car"]
    from glip_label.records import Detections

    det = Detections(np.array([[0, 0, 10, 10], [0, 0, 10, 10.2], [20, 20, 40, 40], [50, 50, 60, 60]], dtype=float),
                     [0.9, 0.8, 0.45, 0.4], [0, 1, 0, 2], ontology.phrases)
    out = postprocess_for_ontology(det, ontology, AnnotateOptions(source="", out=tmp_path, threshold=0.3))
    # "man" and "woman" boxes on one object merge into one person; the 0.45 person is under its 0.5 threshold.
    assert out.labels.tolist() == [0, 1] and out.scores.tolist() == [0.9, 0.4]
    with pytest.raises(ValueError, match="only one of"):
        load_ontology(prompt="a.", ontology=path)
    with pytest.raises(ValueError, match="ontology.calibrated.yaml"):  # none: says where calibrate put one
        load_ontology()
    with pytest.raises(ValueError, match="duplicated"):
        Ontology.from_names(["a", "a"])


def test_nothing_to_label_is_an_error_before_the_model_loads(good_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"no images found .*tiff"):
        annotate(AnnotateOptions(source=str(tmp_path / "empty"), out=tmp_path / "o", prompt="thing."))
    # shards go by a hash of the name: with 50 shards for 6 images, some are empty
    _, names = discover_images(str(good_folder))
    empty = next(i for i in range(50) if not shard_items(names, (i, 50)))
    with pytest.raises(FileNotFoundError, match=rf"shard {empty}/50 of the {len(names)} images .* empty"):
        annotate(AnnotateOptions(source=str(good_folder), out=tmp_path / "o", prompt="thing.", shard=f"{empty}/50"))
    assert not (tmp_path / "o").exists()


def test_shards_partition_and_merge(tiny_checkpoint, good_folder, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"shard{i}"
        result = runner.invoke(app, ["annotate", str(good_folder), "--prompt", "thing.", "--model",
                                     str(tiny_checkpoint), "--out", str(out), "--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
        outs.append(out)
    result = runner.invoke(app, ["merge", *map(str, outs), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    whole = tmp_path / "whole"
    annotate(AnnotateOptions(source=str(good_folder), out=whole, prompt="thing.", model=str(tiny_checkpoint)),
             progress=False)
    merged_odvg = (tmp_path / "merged" / "annotations.odvg.jsonl").read_text()
    assert merged_odvg == (whole / "annotations.odvg.jsonl").read_text()
    merged = json.loads((tmp_path / "merged" / "annotations.coco.json").read_text())
    assert merged["annotations"] == json.loads((whole / "annotations.coco.json").read_text())["annotations"]


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_options import AnnotateOptions
src, out, ckpt, slow = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
annotate(AnnotateOptions(source=src, out=out, prompt="thing. other.", model=ckpt, threshold=0.1, flush_every=2,
                         batch_size=2, formats=("coco", "odvg", "yolo", "labelstudio"), resume=True),
         progress=False, on_batch=lambda n: time.sleep(slow))
"""


def test_sigkill_and_resume_gives_identical_files(tiny_checkpoint, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        _scene(100 + i, size=(160 - 8 * (i % 3), 120)).save(root / f"im{i:02d}.png")
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    parts = kill_after_parts(script, [str(root), str(killed), str(tiny_checkpoint), "1.0"], killed, timeout_s=120)
    assert 2 <= parts < 6, "the kill must land mid-run"
    assert not (killed / "annotations.coco.json").exists()
    subprocess.run([sys.executable, str(script), str(root), str(killed), str(tiny_checkpoint), "0"], check=True)
    subprocess.run([sys.executable, str(script), str(root), str(whole), str(tiny_checkpoint), "0"], check=True)
    for name in ("annotations.coco.json", "annotations.odvg.jsonl", "label_map.json", "labelstudio.json",
                 "errors.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    for label in (whole / "yolo" / "labels").rglob("*.txt"):
        assert (killed / "yolo" / "labels" / label.relative_to(whole / "yolo" / "labels")).read_bytes() == \
            label.read_bytes()


def test_resume_refuses_changed_options(tiny_checkpoint, good_folder, tmp_path):
    out = tmp_path / "out"
    args = ["annotate", str(good_folder), "--model", str(tiny_checkpoint), "--out", str(out)]
    assert runner.invoke(app, [*args, "--prompt", "thing."]).exit_code == 0
    again = runner.invoke(app, [*args, "--prompt", "thing."])
    assert again.exit_code == 2 and "--resume" in again.output
    changed = runner.invoke(app, [*args, "--prompt", "other.", "--resume"])
    assert changed.exit_code == 2 and "ontology" in changed.output


def test_help_explains_every_option():
    result = runner.invoke(app, ["annotate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--prompt", "--classes-file", "--ontology", "--model", "--config", "--threshold", "--nms-iou",
                   "--agnostic-nms", "--max-dets", "--min-box-size", "--format", "--category-id-base", "--save-vis",
                   "--batch-size", "--workers", "--device", "--dtype", "--resume", "--shard", "--max-pixels"):
        assert option in result.output, option
    assert "Examples" in result.output


@pytest.mark.slow
def test_glip_t_checkpoint_labels_example_photos(parity_checkpoint, parity_dir, tmp_path):
    """The full-size GLIP-T (generated official-format weights) through annotate on the two real photos."""
    from pycocotools.coco import COCO

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        (root / name).write_bytes((parity_dir / "inputs" / name).read_bytes())
    out = tmp_path / "out"
    summary = annotate(AnnotateOptions(source=str(root), out=out, prompt="person. cup. flag.",
                                       model=str(parity_checkpoint), config="glip-t", threshold=0.3), progress=False)
    assert summary.labeled == 2 and sum(summary.boxes_per_class.values()) > 0
    coco = COCO(str(out / "annotations.coco.json"))
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6


@pytest.mark.parametrize("args, reason", [
    (["--format", "coco,bogus"], "unknown format(s) ['bogus']"),
    (["--save-vis", "-3"], "--save-vis is how many pictures"),
    (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
    (["--shard", "5/4"], "--shard expects 'i/N'"),
])
def test_bad_options_fail_before_the_model_loads(tmp_path, args, reason):
    """Exit 2 naming the option, before the (here missing) model would load, and no output folder."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    result = runner.invoke(app, ["annotate", str(tmp_path / "images"), "--prompt", "cat.", "--model",
                                 str(tmp_path / "no-model.pth"), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and reason in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()
