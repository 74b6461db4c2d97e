"""Every output opens in the next tool: our files fed to the consumers people use (issue 16).

Consumers that install from the package registry in seconds are used for real: pycocotools,
supervision, webdataset (its ShardWriter makes the input shards), `datasets` (save_to_disk). The
loading code of the heavy ones is reproduced rule for rule, each rule with its source:

* Ultralytics (``ultralytics/data/utils.py::check_det_dataset``, ``::img2label_paths``,
  ``::verify_image_label``; ``ultralytics/data/base.py::BaseDataset.get_img_files``;
  ``ultralytics/data/dataset.py::YOLODataset.cache_labels`` for where the ``.cache`` goes);
* mmdetection ``mmdet/datasets/odvg.py::ODVGDataset.load_data_list`` (image path
  ``osp.join(data_prefix['img'], filename)``; xyxy used as given, boxes with no overlap or w/h < 1
  dropped) and ``tools/dataset_converters/coco2odvg.py`` (``[x, y, x + w, y + h]``);
* Open-GroundingDino ``datasets/odvg.py::ODVGDataset.__getitem__`` (``os.path.join(root, filename)``
  must exist; ``boxes = torch.as_tensor([obj["bbox"] ...]).reshape(-1, 4)``, xyxy as given);
* Label Studio (formats-and-peers.md §5.2; label-studio-sdk's COCO converter): a rectangle is
  ``x · W / 100``, ``width · W / 100`` pixels from the top-left.

Where Ultralytics or label-studio-sdk is installed, two more tests feed our files to the library itself
(``test_real_*``; skipped without it: each pulls opencv, and label-studio-sdk pins numpy < 2.3).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glip_label.cli import app
from glip_label.data.image_refs import image_resolver
from glip_label.data.images import ImageError
from glip_label.data.samples import load_sample_image
from glip_label.data.sources import load_source
from glip_label.formats.odvg import read_odvg
from glip_label.io import atomic_write_text, current_umask
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_options import AnnotateOptions
from glip_label.runs.pseudo_caption import PseudoCaptionOptions, pseudo_caption
from glip_label.train.evaluate import NothingEvaluatedError, evaluate_detection, evaluate_grounding

REPO = Path(__file__).resolve().parents[1]
COFFEE = REPO / "examples" / "images" / "coffee.png"
runner = CliRunner()

# COCO and ODVG keep 2 decimals, so x + w of two rounded numbers is within 0.01 px (plus float32 slack)
COCO_ROUNDING = 0.011
# Ultralytics' image suffixes (ultralytics/data/utils.py::IMG_FORMATS)
ULTRALYTICS_IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}


def _scene(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    """Every file under root with its size and mtime: to prove a consumer wrote nothing there."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def annotated(tiny_checkpoint):
    """`annotate` on a photo folder with sub-folders (two images named x.jpg), under umask 022.

    In a folder other users may enter (pytest's own tmp folders are 0700), so that the permission test
    can read the outputs as another user.
    """
    base = Path(tempfile.mkdtemp(prefix="glip-roundtrip-"))
    os.chmod(base, 0o755)
    photos = base / "photos"
    for i, rel in enumerate(["a/x.jpg", "b/x.jpg", "c/d/z.png", "top.jpg"]):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        _scene(i, (160 + 16 * i, 120)).save(photos / rel, quality=95)
    before = _tree(photos)
    old = os.umask(0o022)
    try:
        out = base / "out"
        summary = annotate(AnnotateOptions(source=str(photos), out=out, prompt="thing. other.",
                                           model=str(tiny_checkpoint), threshold=0.2,
                                           formats=("coco", "odvg", "yolo", "labelstudio")), progress=False)
    finally:
        os.umask(old)
    assert summary.labeled == 4
    yield {"photos": photos, "out": out, "before": before}
    shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------ Ultralytics


def ultralytics_check_det_dataset(yaml_path: Path) -> dict:
    """utils.py::check_det_dataset, the path part: path = data["path"] (or the yaml's folder), then
    data[k] = str((path / data[k]).resolve()) for train/val; resolve() follows symbolic links."""
    import yaml

    data = yaml.safe_load(yaml_path.read_text())
    assert "train" in data and "val" in data and ("names" in data or "nc" in data)
    path = Path(data.get("path") or yaml_path.parent)
    for key in ("train", "val"):
        data[key] = str((path / data[key]).resolve())
    return data


def ultralytics_img_files(img_path: str) -> list[str]:
    """base.py::BaseDataset.get_img_files for a folder: glob("**/*.*", recursive), filtered by suffix."""
    files = glob.glob(str(Path(img_path) / "**" / "*.*"), recursive=True)
    return sorted(x.replace("/", os.sep) for x in files if x.rpartition(".")[-1].lower() in ULTRALYTICS_IMG_FORMATS)


def ultralytics_img2label_paths(img_paths: list[str]) -> list[str]:
    """utils.py::img2label_paths: the LAST /images/ becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def ultralytics_read_labels(label_file: str, num_classes: int) -> np.ndarray | None:
    """utils.py::verify_image_label, the label part: None when the file is missing ("nm"); else rows of
    5 columns, coordinates within [-0.01, 1.01], class < nc (any violation drops the whole image)."""
    if not os.path.isfile(label_file):
        return None
    with open(label_file, encoding="utf-8") as f:
        lb = [x.split() for x in f.read().strip().splitlines() if len(x)]
    lb = np.array(lb, dtype=np.float32).reshape(-1, 5)
    if len(lb):
        assert lb[:, 1:].max() <= 1.01 and lb.min() >= -0.01 and lb[:, 0].max() < num_classes
    return lb


def test_ultralytics_finds_every_yolo_box_and_writes_nothing_into_the_photos(annotated):
    photos, out = annotated["photos"], annotated["out"]
    coco = json.loads((out / "annotations.coco.json").read_text())
    data = ultralytics_check_det_dataset(out / "yolo" / "data.yaml")
    # the resolved train folder stays in our output: image paths keep their /images/ component
    assert Path(data["train"]) == (out / "yolo" / "images").resolve()
    im_files = ultralytics_img_files(data["train"])
    assert len(im_files) == len(coco["images"]) == 4
    label_files = ultralytics_img2label_paths(im_files)
    boxes = 0
    for im_file, label_file in zip(im_files, label_files, strict=True):
        labels = ultralytics_read_labels(label_file, len(data["names"]))
        assert labels is not None, f"{label_file}: Ultralytics would count this image as 'label missing'"
        assert Path(label_file).is_relative_to(out / "yolo" / "labels")
        with Image.open(im_file) as im:  # BaseDataset.load_image reads im_file: the link opens the photo
            assert im.size[0] >= 160
        boxes += len(labels)
    assert boxes == len(coco["annotations"]) > 0
    # YOLODataset.cache_labels writes Path(label_files[0]).parent.with_suffix(".cache"): inside out/yolo
    cache_path = Path(label_files[0]).parent.with_suffix(".cache")
    assert cache_path.is_relative_to(out / "yolo")
    assert _tree(photos) == annotated["before"], "something was written into the user's image folder"


def _assert_same_boxes(found: list[tuple], expected: list[tuple], atol: float) -> None:
    """The same (label, *numbers) boxes in any order, numbers within atol: each expected box takes one found."""
    assert len(found) == len(expected)
    unmatched = list(found)
    for want in expected:
        hit = next((g for g in unmatched if g[:-4] == want[:-4] and np.allclose(g[-4:], want[-4:], atol=atol)), None)
        assert hit is not None, f"{want} not found among {unmatched}"
        unmatched.remove(hit)


def test_real_ultralytics_reads_every_yolo_box(annotated, monkeypatch, tmp_path):
    """The rules above checked against the library itself where it is installed (`pip install ultralytics`:
    it pulls opencv and polars and takes about a minute, so CI runs the reproduced rules only).
    YOLODataset is what `YOLO(...).train(data=...)` builds from the yaml."""
    pytest.importorskip("ultralytics")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    photos, out = annotated["photos"], annotated["out"]
    coco = json.loads((out / "annotations.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    expected: dict[str, list[tuple]] = {im["file_name"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        expected[im["file_name"]].append((names[a["category_id"]], (x + w / 2) / im["width"],
                                          (y + h / 2) / im["height"], w / im["width"], h / im["height"]))
    data = check_det_dataset(str(out / "yolo" / "data.yaml"))
    before_yolo = set((out / "yolo").rglob("*"))
    try:
        dataset = YOLODataset(img_path=data["train"], data=data, task="detect", imgsz=160, augment=False)
        found = {}
        for label in dataset.labels:
            rel = Path(label["im_file"]).relative_to(data["train"]).as_posix()
            found[rel] = [(data["names"][int(c)], *map(float, box))
                          for c, box in zip(label["cls"].ravel(), label["bboxes"], strict=True)]
        assert found.keys() == expected.keys()
        for rel, boxes in expected.items():
            _assert_same_boxes(found[rel], boxes, atol=1e-4)  # COCO keeps 2 decimals of a pixel, YOLO 6
        # the label cache (labels/<first sub-folder>.cache here) lands in our output, not beside the photos
        assert [p.suffix for p in set((out / "yolo").rglob("*")) - before_yolo] == [".cache"]
        assert _tree(photos) == annotated["before"]
    finally:
        for written in set((out / "yolo").rglob("*")) - before_yolo:
            written.unlink()


def test_our_yolo_folder_reads_back_as_our_coco(annotated):
    """annotate's yolo/data.yaml as train-student --gold reads it (Ultralytics' rules,
    glip_label/formats/yolo_dataset.py): every image, with the COCO file's boxes and classes."""
    from glip_label.formats.yolo_dataset import read_yolo_dataset

    out = annotated["out"]
    coco = json.loads((out / "annotations.coco.json").read_text())
    back = read_yolo_dataset(out / "yolo" / "data.yaml", "train")
    assert back["yolo"]["corrupt"] == [] and back["yolo"]["without_labels"] == 0

    def boxes(data: dict, prefix: str = "") -> dict[str, list[tuple]]:
        names = {c["id"]: c["name"] for c in data["categories"]}
        files = {im["id"]: im["file_name"].removeprefix(prefix) for im in data["images"]}
        found: dict[str, list[tuple]] = {name: [] for name in files.values()}
        for a in data["annotations"]:
            found[files[a["image_id"]]].append((names[a["category_id"]], *a["bbox"]))
        return found

    ours, theirs = boxes(coco), boxes(back, prefix="images/")
    assert ours.keys() == theirs.keys() and sum(map(len, ours.values())) > 0
    for name, expected in ours.items():
        _assert_same_boxes(theirs[name], expected, atol=0.01)  # COCO keeps 2 decimals of a pixel


# ---------------------------------------------------------------------------- one box, every format


def test_one_detection_is_the_same_box_in_every_format(annotated):
    """COCO (pycocotools, supervision), YOLO (supervision, Ultralytics), Label Studio, ODVG (mmdet, OGD)."""
    import supervision as sv
    from pycocotools.coco import COCO
    from supervision.dataset.formats.yolo import yolo_annotations_to_detections

    photos, out = annotated["photos"], annotated["out"]
    gt = COCO(str(out / "annotations.coco.json"))
    # supervision reads COCO bbox as xyxy = [x, y, x + w, y + h] (dataset/formats/coco.py)
    dataset = sv.DetectionDataset.from_coco(str(photos), str(out / "annotations.coco.json"))
    sv_by_path = {Path(path).resolve(): det for path, _, det in dataset}
    odvg = {r["filename"]: r for r in read_odvg(out / "annotations.odvg.jsonl")}
    tasks = json.loads((out / "labelstudio.json").read_text())
    ls_by_name = {t["data"]["image"].split("?d=", 1)[1]: t for t in tasks}
    compared = 0
    for image in gt.dataset["images"]:
        name, width, height = image["file_name"], image["width"], image["height"]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image["id"]]))
        # pycocotools: bbox [x, y, w, h], area = w * h, i.e. the continuous box [x, x + w)
        coco_xyxy = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)
        for ann in anns:
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=0.05)
        np.testing.assert_allclose(sv_by_path[(photos / name).resolve()].xyxy, coco_xyxy, atol=1e-3)
        # YOLO, as supervision reads a label file (cx ± w/2 times the image size)
        lines = (out / "yolo" / "labels" / Path(name).with_suffix(".txt")).read_text().splitlines()
        yolo = yolo_annotations_to_detections(lines=lines, resolution_wh=(width, height), with_masks=False)
        np.testing.assert_allclose(yolo.xyxy, coco_xyxy, atol=COCO_ROUNDING + 1e-6 * max(width, height) * 4)
        # Label Studio: x/100·W .. (x + width)/100·W
        values = [r["value"] for r in ls_by_name[name]["predictions"][0]["result"]]
        ls_xyxy = np.array([[v["x"] * width / 100, v["y"] * height / 100, (v["x"] + v["width"]) * width / 100,
                             (v["y"] + v["height"]) * height / 100] for v in values]).reshape(-1, 4)
        np.testing.assert_allclose(ls_xyxy, coco_xyxy, atol=COCO_ROUNDING + 1e-4 * max(width, height) / 100 * 2)
        # ODVG: mmdet's load_data_list keeps bbox as given after its drop rules; OGD takes it as given
        rec = odvg[name]
        mmdet_boxes = []
        for inst in rec["detection"]["instances"]:
            x1, y1, x2, y2 = inst["bbox"]
            inter_w = max(0, min(x2, rec["width"]) - max(x1, 0))
            inter_h = max(0, min(y2, rec["height"]) - max(y1, 0))
            if inter_w * inter_h == 0 or (x2 - x1) < 1 or (y2 - y1) < 1:
                continue
            mmdet_boxes.append(inst["bbox"])
        np.testing.assert_allclose(np.array(mmdet_boxes).reshape(-1, 4), coco_xyxy, atol=COCO_ROUNDING)
        ogd_boxes = np.array([inst["bbox"] for inst in rec["detection"]["instances"]], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_allclose(ogd_boxes, coco_xyxy, atol=COCO_ROUNDING)
        # and coco2odvg (mmdet and Open-GroundingDino) turns our COCO file into exactly our ODVG boxes
        np.testing.assert_allclose(coco_xyxy, np.array(mmdet_boxes).reshape(-1, 4), atol=COCO_ROUNDING)
        compared += len(anns)
    assert compared > 0
    # our own readers give back the same "+1" boxes from COCO and from ODVG
    from_coco = load_source(out / "annotations.coco.json", min_score=0.0)
    from_odvg = load_source(out / "annotations.odvg.jsonl", min_score=0.0)
    for a, b in zip(from_coco.samples, from_odvg.samples, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=COCO_ROUNDING)


def test_real_label_studio_converter_gives_back_our_coco(annotated, tmp_path):
    """Label Studio's own export to COCO (label-studio-sdk's Converter) after a reviewer accepts every
    prediction, against our COCO file. Where the SDK is installed (`pip install label-studio-sdk`; it pins
    numpy < 2.3 through opencv-headless, so it stays out of the test extra and CI runs the rule above)."""
    pytest.importorskip("label_studio_sdk")
    from urllib.parse import unquote

    from label_studio_sdk.converter import Converter

    out = annotated["out"]
    tasks = json.loads((out / "labelstudio.json").read_text())
    for i, task in enumerate(tasks, 1):  # accepting a prediction makes it the task's annotation
        task.update(id=i, annotations=[{"id": i, "result": task["predictions"][0]["result"]}])
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    converter = Converter(config=(out / "labelstudio_config.xml").read_text(), project_dir=None)
    converter.convert_to_coco(str(tmp_path / "export.json"), str(tmp_path / "coco"), is_dir=False)

    def boxes(coco: dict, name_of_image) -> list[tuple]:
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {im["id"]: name_of_image(im["file_name"]) for im in coco["images"]}
        return sorted((files[a["image_id"]], names[a["category_id"]], *a["bbox"]) for a in coco["annotations"])

    theirs = boxes(json.loads((tmp_path / "coco" / "result.json").read_text()),
                   lambda url: unquote(url.split("?d=", 1)[1]))  # /data/local-files/?d=<quoted relative path>
    ours = boxes(json.loads((out / "annotations.coco.json").read_text()), lambda name: name)
    assert len(theirs) == len(ours) > 0
    _assert_same_boxes(theirs, ours, atol=0.11)  # both round to 0.1-0.01 of a pixel


# ------------------------------------------------------------------------------------ permissions


def test_outputs_get_the_umask_mode_and_another_user_can_read_them(annotated, tmp_path):
    out = annotated["out"]
    files = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 10
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items() if v != 0o644}
    if os.geteuid() == 0:  # really read them as another user (nobody), as a Label Studio container would
        subprocess.run(["cat", *map(str, files)], check=True, user=65534, cwd="/", stdout=subprocess.DEVNULL)
    old = os.umask(0o077)  # a private umask stays private
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


# -------------------------------------------------------------------------------------- evaluate


def test_evaluate_honours_run_json_and_refuses_a_metric_of_nothing(annotated, tiny_checkpoint, tmp_path):
    from glip_label.predictor import load_model

    out, photos = annotated["out"], annotated["photos"]
    predictor = load_model(str(tiny_checkpoint))
    # no @ROOT: the run.json beside the file names the photo folder
    metrics = evaluate_detection(predictor, out / "annotations.coco.json")
    assert metrics["num_unreadable_images"] == 0 and metrics["num_images"] == 4
    # a copy without run.json and without its images: nothing to evaluate on is an error (CLI: exit 1)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "annotations.coco.json", alone / "gold.json")
    with pytest.raises(NothingEvaluatedError, match="none of the 4 images"):
        evaluate_detection(predictor, alone / "gold.json")
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--val", str(alone / "gold.json")])
    assert result.exit_code != 0 and "none of the 4 images could be read" in " ".join(result.output.split())
    # found before the model loads (this model path does not exist)
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "no-model.pth"),
                                 "--val", str(alone / "gold.json")])
    assert result.exit_code != 0 and "none of the 4 images could be read" in " ".join(result.output.split())
    # one image missing: evaluated on the others, the missing one reported
    partial = tmp_path / "partial"
    shutil.copytree(photos, partial)
    (partial / "top.jpg").unlink()
    val = f"{alone / 'gold.json'}@{partial}"
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--val", val,
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["num_unreadable_images"] == 1
    assert "1 images could not be read (first: top.jpg: file not found)" in " ".join(result.output.split())


# ------------------------------------------------------------------------- pseudo-caption sources

CAPTIONS = ["a cup of coffee on a saucer", "a spoon beside a white cup", "a saucer and a cup on a table",
            "coffee in a cup with a spoon"]


def _images() -> list[Image.Image]:
    coffee = Image.open(COFFEE).convert("RGB")
    return [coffee.resize((120 + 8 * i, 96)) for i in range(len(CAPTIONS))]


def _webdataset(root: Path) -> Path:
    """Two shards written by webdataset's own ShardWriter (2 samples each)."""
    import io

    import webdataset as wds

    root.mkdir()
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=2, verbose=0) as sink:
        for i, (image, caption) in enumerate(zip(_images(), CAPTIONS, strict=True)):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95)
            sink.write({"__key__": f"sample{i:06d}", "jpg": buffer.getvalue(), "txt": caption})
    assert len(list(root.glob("*.tar"))) == 2
    return root


def _img2dataset(root: Path) -> Path:
    """img2dataset's "files" layout: 00000/000000000.jpg + .txt + .json."""
    for i, (image, caption) in enumerate(zip(_images(), CAPTIONS, strict=True)):
        folder = root / f"{i // 2:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:09d}.jpg", quality=95)
        (folder / f"{i:09d}.txt").write_text(caption)
        (folder / f"{i:09d}.json").write_text(json.dumps({"key": f"{i:09d}", "status": "success"}))
    return root


def _hf_saved(root: Path) -> Path:
    """`datasets` save_to_disk of an Image column (the images are stored in the arrow files)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": _images(), "caption": CAPTIONS}, features=features)
    ds.save_to_disk(str(root))
    return root


def _imagefolder(root: Path) -> Path:
    """A Hugging Face ImageFolder (the datasets docs' layout): a train split folder with metadata.jsonl, file_name
    and diffusers' "text" caption column."""
    (root / "train").mkdir(parents=True)
    lines = []
    for i, (image, caption) in enumerate(zip(_images(), CAPTIONS, strict=True)):
        image.save(root / "train" / f"{i:04d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": caption}) + "\n")
    (root / "train" / "metadata.jsonl").write_text("".join(lines))
    return root


SOURCES = {"webdataset": _webdataset, "img2dataset": _img2dataset, "hf": _hf_saved, "imagefolder": _imagefolder}


@pytest.fixture(scope="module")
def captioned(tiny_checkpoint, tmp_path_factory):
    """pseudo-caption on each source kind; the webdataset run also exports the grounded images."""
    base = tmp_path_factory.mktemp("captioned")
    runs = {}
    for kind, make in SOURCES.items():
        source = make(base / f"src-{kind}")
        if kind == "webdataset":  # named as a webdataset pipeline names them: wds.WebDataset(".../shard-{..}.tar")
            source = source / "shard-{000000..000001}.tar"
        out = base / f"out-{kind}"
        summary = pseudo_caption(PseudoCaptionOptions(source=str(source), out=out, model=str(tiny_checkpoint),
                                                      phrases="rule", box_floor=0.05, batch_size=2, torch_threads=1,
                                                      export_images=kind == "webdataset"), progress=False)
        assert summary.grounded == len(CAPTIONS), kind
        runs[kind] = out
    return runs


@pytest.mark.parametrize("kind", list(SOURCES))
def test_pseudo_caption_outputs_train_and_evaluate_without_root(captioned, tiny_checkpoint, kind):
    from glip_label.predictor import load_model

    out = captioned[kind]
    run = json.loads((out / "run.json").read_text())
    assert run["images"]["kind"] == ("folder" if kind == "img2dataset" else kind)
    resolver = image_resolver(out / "grounding.odvg.jsonl")
    for name in ("grounding.odvg.jsonl", "grounding.mdetr.json"):
        source = load_source(out / name, min_score=0.05)  # what train-student --pseudo reads
        assert len(source.samples) == len(CAPTIONS)
        for sample in source.samples:
            loaded = load_sample_image(sample)
            assert not isinstance(loaded, ImageError), (kind, loaded)
            assert (loaded.width, loaded.height) == (sample.width, sample.height)
    for rec in read_odvg(out / "grounding.odvg.jsonl"):
        assert not isinstance(resolver.load(rec["filename"]), ImageError)
    metrics = evaluate_grounding(load_model(str(tiny_checkpoint)), out / "grounding.mdetr.json")
    assert metrics["num_unreadable_images"] == 0 and metrics["num_captions"] == len(CAPTIONS)
    assert metrics["num_unscored_captions"] == 0


@pytest.mark.parametrize("kind", list(SOURCES))
def test_train_student_cli_on_pseudo_caption_outputs(captioned, kind, tmp_path):
    """The README's step 2 -> 3 on each source kind: train-student --pseudo ... --val ...mdetr.json."""
    out = captioned[kind]
    result = runner.invoke(app, ["train-student", "--out", str(tmp_path / "student"), "--config", "glip-tiny",
                                 "--pseudo", str(out / "grounding.odvg.jsonl"), "--pseudo-min-score", "0.05",
                                 "--pseudo-min-box-size", "1", "--val", str(out / "grounding.mdetr.json"),
                                 "--max-steps", "1", "--batch-size", "2", "--scales", "96"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["num_unreadable_images"] == 0 and metrics["num_captions"] == len(CAPTIONS)
    # checkpoints, weights and metrics get the mode open() gives under the umask too
    expected = 0o666 & ~current_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "student").rglob("*") if p.is_file()}
    assert "model_final.pth" in modes and set(modes.values()) == {expected}, modes


def test_exported_images_serve_the_odvg_loaders(captioned):
    """--export-images: OUT/images/<filename> for mmdet (osp.join(data_prefix['img'], filename)) and
    Open-GroundingDino (os.path.join(root, filename) must exist and open)."""
    out = captioned["webdataset"]
    run = json.loads((out / "run.json").read_text())
    assert run["files"]["images"] == "images/" and run["images"]["exported"] == {"exported": 4, "skipped": 0}
    for rec in read_odvg(out / "grounding.odvg.jsonl"):
        abs_path = os.path.join(out / "images", rec["filename"])
        assert os.path.exists(abs_path)
        with Image.open(abs_path) as image:
            assert image.convert("RGB").size == (rec["width"], rec["height"])
        assert stat.S_IMODE(os.stat(abs_path).st_mode) & stat.S_IROTH


def test_a_name_shared_by_two_dataset_rows_is_not_guessed(tmp_path):
    """Two rows of a datasets folder stored under one path: the resolver refuses to pick one."""
    import io

    import datasets

    buffers = []
    for i in range(3):
        buffer = io.BytesIO()
        Image.new("RGB", (20 + i, 10)).save(buffer, format="PNG")
        buffers.append(buffer.getvalue())
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    rows = {"image": [{"bytes": b, "path": p} for b, p in zip(buffers, ["same.png", "same.png", "own.png"],
                                                                strict=True)],
            "caption": ["a", "b", "c"]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "out").mkdir()
    spec = {"kind": "hf", "source": str(tmp_path / "ds"), "split": "train", "image_column": "image",
            "caption_column": "caption", "image_root": None}
    (tmp_path / "out" / "run.json").write_text(json.dumps({"image_root": None, "images": spec}))
    resolver = image_resolver(tmp_path / "out" / "grounding.odvg.jsonl")
    assert resolver.load("own.png").width == 22
    shared = resolver.load("same.png")
    assert isinstance(shared, ImageError) and "several images" in shared.reason
