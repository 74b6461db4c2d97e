"""Dataset writers and readers: the files must load in the tools that consume them, and read back exactly."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from glip_label.formats.coco import (
    BOX_CONVENTION,
    CocoWriter,
    evaluate_coco,
    read_coco,
    records_from_coco,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from glip_label.formats.labelstudio import labelstudio_label_config, labelstudio_tasks
from glip_label.formats.mdetr import MdetrWriter, read_mdetr
from glip_label.formats.odvg import (
    grounding_regions,
    label_map,
    odvg_detection_record,
    odvg_grounding_record,
    read_odvg,
    record_from_odvg_detection,
    region_boxes,
    validate_odvg_record,
)
from glip_label.formats.vis import class_colour, draw_detections, save_visualizations
from glip_label.formats.yolo import read_yolo_labels, write_yolo, yolo_label_relpath
from glip_label.io import atomic_write_json, atomic_write_jsonl
from glip_label.records import Detections, ImageRecord

CATEGORIES = ["person", "dog", "traffic light"]

# A hand-made gold file: COCO xywh, the form a human annotation tool exports.
GOLD = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
        {"id": 2, "file_name": "sub/b.jpg", "width": 320, "height": 240},
        {"id": 3, "file_name": "c.jpg", "width": 100, "height": 100},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 200], "area": 20000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [300, 100, 150, 120], "area": 18000, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 6, 40, 80], "area": 3200, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [100, 50, 120, 150], "area": 18000, "iscrowd": 0},
    ],
    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)],
}


def gold_records() -> list[ImageRecord]:
    """The gold boxes as labeller records ("+1" xyxy, labels = category indices), one image without boxes."""
    records = []
    for img in GOLD["images"]:
        anns = [a for a in GOLD["annotations"] if a["image_id"] == img["id"]]
        det = Detections(
            xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64)),
            np.linspace(0.9, 0.6, len(anns)),
            np.array([a["category_id"] - 1 for a in anns]),
            CATEGORIES,
        )
        records.append(ImageRecord(img["file_name"], img["width"], img["height"], det))
    return records


@pytest.fixture()
def gold_path(tmp_path: Path) -> Path:
    path = tmp_path / "gold.json"
    atomic_write_json(path, GOLD)
    return path


# ------------------------------------------------------------------------------------------- COCO


def test_box_conversions_follow_the_plus_one_convention() -> None:
    xyxy = np.array([[10.0, 20.0, 109.0, 219.0]])
    np.testing.assert_array_equal(xyxy_to_xywh(xyxy), [[10, 20, 100, 200]])
    np.testing.assert_array_equal(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)


def test_coco_writer_output_is_spec_correct_and_loads_in_pycocotools(tmp_path: Path) -> None:
    writer = CocoWriter(CATEGORIES, info={"model": "glip-t", "threshold": 0.3})
    ids = [writer.add(r) for r in gold_records()]
    assert ids == [1, 2, 3]
    path = tmp_path / "out" / "coco.json"
    writer.write(path)
    data = json.loads(path.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3, 4]
    assert [img["file_name"] for img in data["images"]] == ["a.jpg", "sub/b.jpg", "c.jpg"]  # negative kept
    assert data["info"]["box_convention"] == BOX_CONVENTION and data["info"]["model"] == "glip-t"
    for ann, gold in zip(data["annotations"], GOLD["annotations"], strict=True):
        assert ann["bbox"] == gold["bbox"] and ann["category_id"] == gold["category_id"]
        assert ann["area"] == pytest.approx(gold["bbox"][2] * gold["bbox"][3]) and ann["iscrowd"] == 0
        assert 0 < ann["score"] <= 1
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == 4 and coco.getAnnIds(imgIds=[3]) == []
    results = writer.to_results_list()
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    res = coco.loadRes(results)
    assert len(res.getAnnIds()) == 4


def test_coco_writer_rounds_boxes_to_two_decimals_and_reads_back() -> None:
    det = Detections([[1.234567, 2.0, 50.98765, 40.5]], [0.87654321], [2], CATEGORIES)
    writer = CocoWriter(CATEGORIES)
    writer.add(ImageRecord("x.png", 64, 48, det))
    ann = writer.to_dict()["annotations"][0]
    assert ann["bbox"] == [1.23, 2.0, 50.75, 39.5] and ann["score"] == 0.876543
    names, records = records_from_coco(writer.to_dict())
    assert names == CATEGORIES and records[0].detections.labels.tolist() == [2]
    # x and w are each rounded to 0.01, so x2 = x + w - 1 is within 0.01
    np.testing.assert_allclose(records[0].detections.boxes, det.boxes, atol=0.0101)


def test_coco_writer_category_base_mapping_and_errors() -> None:
    # ontology: phrase labels 0,1,2 ("man", "woman", "puppy") → classes person, person, dog
    det = Detections([[0, 0, 9, 9], [1, 1, 5, 5], [2, 2, 8, 8]], [0.9, 0.8, 0.7], [0, 1, 2], ["man", "woman", "puppy"])
    writer = CocoWriter(CATEGORIES, category_id_base=0)
    writer.add(ImageRecord("a.jpg", 10, 10, det), category_index=[0, 0, 1])
    assert [a["category_id"] for a in writer.to_dict()["annotations"]] == [0, 0, 1]
    assert [c["id"] for c in writer.to_dict()["categories"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="already added"):
        writer.add(ImageRecord("a.jpg", 10, 10, Detections.empty(CATEGORIES)))
    bad = Detections([[0, 0, 1, 1]], [0.5], [3], CATEGORIES + ["extra"])
    with pytest.raises(ValueError, match="out of range"):
        writer.add(ImageRecord("b.jpg", 10, 10, bad))
    with pytest.raises(ValueError, match="unique"):
        CocoWriter(["a", "a"])


def test_evaluate_coco_perfect_wrong_and_empty(gold_path: Path) -> None:
    writer = CocoWriter(CATEGORIES)
    for record in gold_records():
        writer.add(record)
    perfect = evaluate_coco(gold_path, writer.to_results_list())
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    assert perfect["ap75"] == pytest.approx(1.0) and perfect["num_results"] == 4

    shifted = writer.to_results_list()
    shifted[0]["bbox"] = [200.0, 300.0, 100.0, 100.0]  # the person in image 1 is now missed
    worse = evaluate_coco(gold_path, shifted)
    assert worse["ap"] < 0.9

    empty = evaluate_coco(gold_path, [])
    assert empty["ap"] == 0.0 and empty["ap50"] == 0.0 and empty["ap75"] == 0.0

    with pytest.raises(ValueError, match="not in the gold"):
        evaluate_coco(gold_path, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])


def test_evaluate_coco_is_quiet_unless_verbose(gold_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 200], "score": 0.9}]
    evaluate_coco(gold_path, results)
    assert capsys.readouterr().out == ""
    evaluate_coco(gold_path, results, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_read_coco_tolerates_variants(tmp_path: Path) -> None:
    variant = {
        "images": [{"id": "7", "file_name": "a.jpg", "width": "640", "height": "480.0"}],
        "annotations": [
            {"id": 0, "image_id": 7, "category_id": "1", "bbox": [[10, 20, 30, 40]]},  # id 0, nested bbox, no area
            {"id": 0, "image_id": "7", "category_id": 1, "bbox": ["1", "2", "3", "4"], "iscrowd": True},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(variant))
    data = read_coco(path)
    img = data["images"][0]
    assert (img["id"], img["width"], img["height"]) == (7, 640, 480)
    a, b = data["annotations"]
    assert (a["id"], b["id"]) == (1, 2)  # id 0 would be counted as unmatched by COCOeval
    assert a["bbox"] == [10.0, 20.0, 30.0, 40.0] and a["area"] == 1200.0 and a["iscrowd"] == 0
    assert b["bbox"] == [1.0, 2.0, 3.0, 4.0] and b["iscrowd"] == 1 and b["image_id"] == 7 and a["category_id"] == 1
    # and the normalised file evaluates
    stats = evaluate_coco(path, [{"image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.9}])
    assert stats["ap50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="width"):
        read_coco_str(tmp_path, {"images": [{"id": 1, "file_name": "x", "width": "wide", "height": 3}]})


def test_a_roboflow_export_loses_its_parent_only_category(tmp_path: Path) -> None:
    """Roboflow's COCO export: category 0 is the dataset's name, boxless, the supercategory of the real classes.
    It is not a class to prompt (it would be taught as absent wherever its members are). A boxless class that is
    no one's parent stays (a gold negative class), and so does our own files' "object" supercategory."""
    roboflow = {
        "images": [{"id": 0, "file_name": "a.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "segmentation": []}],
        "categories": [{"id": 0, "name": "vehicles", "supercategory": "none"},
                       {"id": 1, "name": "car", "supercategory": "vehicles"},
                       {"id": 2, "name": "truck", "supercategory": "vehicles"}],
    }
    assert [c["name"] for c in read_coco_str(tmp_path, roboflow)["categories"]] == ["car", "truck"]
    ours = {**roboflow, "categories": [{"id": 1, "name": "car", "supercategory": "object"},
                                       {"id": 0, "name": "object", "supercategory": "object"}]}
    assert [c["name"] for c in read_coco_str(tmp_path, ours)["categories"]] == ["car", "object"]


def read_coco_str(tmp_path: Path, data: dict) -> dict:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return read_coco(path)


# ------------------------------------------------------------------------------------------- ODVG


def test_odvg_detection_records_validate_and_read_back(tmp_path: Path) -> None:
    lmap = label_map(CATEGORIES)
    assert lmap == {"0": "person", "1": "dog", "2": "traffic light"}
    records = gold_records()
    lines = [odvg_detection_record(r, CATEGORIES) for r in records]
    first = lines[0]
    assert set(first) == {"filename", "height", "width", "detection"}
    inst = first["detection"]["instances"][0]
    assert inst["bbox"] == [10.0, 20.0, 110.0, 220.0]  # "+1" xyxy [10, 20, 109, 219] as continuous edges
    assert inst["label"] == 0 and inst["category"] == "person" and inst["score"] == pytest.approx(0.9)
    assert lines[2]["detection"]["instances"] == []  # a negative image is a valid OD record
    for line in lines:
        assert validate_odvg_record(line, lmap) == []
        for inst in line["detection"]["instances"]:
            assert lmap[str(inst["label"])] == inst["category"]  # Open-GroundingDino's lookup
    path = tmp_path / "train_od.jsonl"
    atomic_write_jsonl(path, lines)
    back = list(read_odvg(path))
    assert back == lines
    for original, rec in zip(records, back, strict=True):
        again = record_from_odvg_detection(rec, CATEGORIES)
        np.testing.assert_allclose(again.detections.boxes, original.detections.boxes, atol=0.005)
        np.testing.assert_array_equal(again.detections.labels, original.detections.labels)


CAPTION = "Two surfers walking down the shore. sand on the beach."
SPANS = [[(0, 11)], [(36, 40)], [(48, 53)]]  # "Two surfers", "sand", "beach"


def caption_detections() -> Detections:
    return Detections(
        [[206, 156, 281, 247], [250, 150, 300, 240], [303, 300, 443, 343], [10, 320, 400, 370]],
        [0.91, 0.72, 0.66, 0.55],
        [0, 0, 1, 2],
        [CAPTION[s:e] for ((s, e),) in SPANS],
    )


def test_odvg_grounding_record_serves_both_loaders(tmp_path: Path) -> None:
    regions = grounding_regions(caption_detections(), SPANS)
    rec = odvg_grounding_record("vg/2405116.jpg", 375, 500, CAPTION, regions)
    assert validate_odvg_record(rec) == []
    grounding = rec["grounding"]
    assert grounding["caption"] == CAPTION and len(grounding["regions"]) == 4
    for region in grounding["regions"]:
        assert isinstance(region["phrase"], str) and len(region["bbox"]) == 4
        for s, e in region["tokens_positive"]:
            assert CAPTION[s:e] == region["phrase"]
    assert grounding["regions"][2]["bbox"] == [303.0, 300.0, 444.0, 344.0] and grounding["regions"][2]["score"] == 0.66
    path = tmp_path / "vg.jsonl"
    atomic_write_jsonl(path, [rec])
    assert list(read_odvg(path)) == [rec]
    with pytest.raises(ValueError, match="does not index"):
        odvg_grounding_record("x.jpg", 10, 10, "a dog", [{"bbox": [0, 0, 5, 5], "tokens_positive": [[2, 9]]}])
    # phrase defaults to the text of the first span; a bare [start, end] pair is accepted
    rec = odvg_grounding_record("x.jpg", 10, 10, "a dog", [{"bbox": [0, 0, 5, 5], "tokens_positive": [2, 5]}])
    region = rec["grounding"]["regions"][0]
    assert region["phrase"] == "dog" and region["tokens_positive"] == [[2, 5]]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(height="375"), "'height' must be a positive int"),
        (lambda r: r.pop("filename"), "filename"),
        (lambda r: r["detection"].update(instance=r["detection"].pop("instances")), "plural"),
        (lambda r: r["detection"]["instances"][0].pop("category"), "'category'"),
        (lambda r: r["detection"]["instances"][0].update(label="0"), "'label' must be a non-negative int"),
        (lambda r: r["detection"]["instances"][0].update(label=7), "not a key of the label map"),
        (lambda r: r["detection"]["instances"][0].update(category="cat"), "label map says"),
        (lambda r: r["detection"]["instances"][0].update(bbox=[5, 5, 5.5, 40]), "mmdet drops it"),
        (lambda r: r["detection"]["instances"][0].update(bbox=[700, 5, 800, 40]), "does not overlap"),
        (lambda r: r["detection"]["instances"][0].update(bbox=[1, 2, 3]), "4 finite numbers"),
        (lambda r: r.pop("detection"), "neither"),
    ],
)
def test_validate_odvg_detection_problems(mutate, expected: str) -> None:
    rec = odvg_detection_record(gold_records()[0], CATEGORIES)
    mutate(rec)
    problems = validate_odvg_record(rec, label_map(CATEGORIES))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda g: g["regions"][0].pop("tokens_positive"), "tokens_positive"),
        (lambda g: g["regions"][0].update(tokens_positive=[[50, 99]]), "does not index"),
        (lambda g: g["regions"][0].update(bbox=[[1, 2, 30, 40], [5, 5, 50, 50]]), "one xyxy per region"),
        (lambda g: g["regions"][0].update(phrase=["a", "b"]), "'phrase' must be a non-empty string"),
        (lambda g: g.update(regions=[]), "no regions"),
        (lambda g: g.pop("caption"), "'caption'"),
    ],
)
def test_validate_odvg_grounding_problems(mutate, expected: str) -> None:
    rec = odvg_grounding_record("x.jpg", 375, 500, CAPTION, grounding_regions(caption_detections(), SPANS))
    mutate(rec["grounding"])
    assert any(expected in p for p in validate_odvg_record(rec)), validate_odvg_record(rec)


def test_read_odvg_accepts_variants(tmp_path: Path) -> None:
    path = tmp_path / "variants.jsonl"
    lines = [
        {"filename": "a.jpg", "height": "360", "width": "640",
         "detection": {"instance": [{"bbox": [1, 2, 30, 40], "label": 0}]}},
        {"filename": "b.jpg", "height": 375, "width": 500, "grounding": {"caption": "a b", "regions": [
            {"bbox": [[1, 2, 30, 40], [5, 6, 70, 80]], "phrase": "a", "tokens_positive": [[0, 1]]}]}},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    a, b = list(read_odvg(path))
    assert (a["height"], a["width"]) == (360, 640) and a["detection"]["instances"][0]["label"] == 0
    assert region_boxes(b["grounding"]["regions"][0]) == [[1, 2, 30, 40], [5, 6, 70, 80]]
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=":1: not valid JSON"):
        list(read_odvg(path))


# ------------------------------------------------------------------------------------------ MDETR


def test_mdetr_writer_loads_and_spans_index_the_caption(tmp_path: Path) -> None:
    writer = MdetrWriter(info={"model": "glip-t"})
    record = ImageRecord("flickr/1000092795.jpg", 500, 375, caption_detections())
    first = writer.add_record(record, CAPTION, SPANS, image_fields={"original_img_id": 1000092795, "sentence_id": 0})
    other_caption = "A dog ."
    second = writer.add_record(
        ImageRecord("flickr/1000092795.jpg", 500, 375, Detections.empty(["A dog"])), other_caption, [[(0, 5)]]
    )
    assert (first, second) == (1, 2)
    path = tmp_path / "grounding.json"
    writer.write(path)
    coco = COCO(str(path))
    assert coco.getCatIds() == [1] and len(coco.getAnnIds()) == 4 and coco.getAnnIds(imgIds=[2]) == []
    data = json.loads(path.read_text())
    img = data["images"][0]
    assert img["caption"] == CAPTION and img["original_img_id"] == 1000092795
    assert img["tokens_positive_eval"] == [[[0, 11]], [[36, 40]], [[48, 53]]]
    assert data["images"][1]["tokens_positive_eval"] == []
    captions = {i["id"]: i["caption"] for i in data["images"]}
    for ann in data["annotations"]:
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and ann["id"] >= 1
        caption = captions[ann["image_id"]]
        for s, e in ann["tokens_positive"]:
            assert 0 <= s < e <= len(caption)
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
    assert [a["phrase_ids"] for a in data["annotations"]] == [[0], [0], [1], [2]]
    assert data["annotations"][0]["bbox"] == [206.0, 156.0, 76.0, 92.0]  # w = x2 - x1 + 1
    back = read_mdetr(path)
    np.testing.assert_allclose(
        xywh_to_xyxy(np.array([a["bbox"] for a in back["annotations"]])), record.detections.boxes, atol=0.005
    )


def test_mdetr_stream_writer_equals_in_memory_writer_and_writes_nothing_on_error(tmp_path: Path) -> None:
    from glip_label.formats.mdetr import MdetrStreamWriter

    record = ImageRecord("flickr/1.jpg", 500, 375, caption_detections())
    empty = ImageRecord("flickr/2.jpg", 64, 48, Detections.empty(["A dog"]))
    memory = MdetrWriter(info={"model": "glip-t"})
    with MdetrStreamWriter(tmp_path / "s.json", info={"model": "glip-t"}) as stream:
        for writer in (memory, stream):
            writer.add_record(record, CAPTION, SPANS, image_fields={"sentence_id": 0})
            writer.add_record(empty, "A dog .", [[(0, 5)]])
            writer.add_record(record, CAPTION, SPANS, image_fields={"sentence_id": 1})
        with pytest.raises(TypeError, match="keeps nothing in memory"):
            stream.to_dict()
    assert json.loads((tmp_path / "s.json").read_text()) == memory.to_dict()
    assert (len(stream), stream.num_annotations) == (len(memory), memory.num_annotations) == (3, 8)

    with pytest.raises(RuntimeError), MdetrStreamWriter(tmp_path / "broken.json") as stream:
        stream.add_record(record, CAPTION, SPANS)
        raise RuntimeError("interrupted")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.json"]  # no partial file, no temporary left


def test_read_mdetr_accepts_the_flickr_and_mixed_variants(tmp_path: Path) -> None:
    flickr = {  # keys of final_flickr_separateGT_*.json: string sizes, ids from 0
        "info": [], "licenses": [],
        "categories": [{"supercategory": "object", "id": 1, "name": "object"}],
        "images": [{"file_name": "1000092795.jpg", "height": "500", "width": "333", "id": 0,
                    "caption": "Two young guys with shaggy hair look at their hands .", "dataset_name": "flickr",
                    "tokens_negative": [[0, 54]], "sentence_id": 0, "original_img_id": 1000092795,
                    "tokens_positive_eval": [[[0, 14]], [[20, 31]]]}],
        "annotations": [{"area": 1640.0, "iscrowd": 0, "image_id": 0, "category_id": 1, "id": 0,
                         "bbox": [158.0, 184.0, 40.0, 41.0], "tokens_positive": [[0, 14]]}],
    }  # fmt: skip
    mixed = {  # final_mixed_train_no_coco.json: empty categories; legacy "tokens"; a bare pair
        "info": [], "licenses": [], "categories": [],
        "images": [{"file_name": "2405116.jpg", "height": 375, "width": 500, "id": 0, "original_id": "2405116",
                    "caption": "Two surfers walking down the shore.", "data_source": "vg"}],
        "annotations": [{"iscrowd": 0, "image_id": 0, "id": 0, "bbox": [206, 156, 76, 92], "tokens": [0, 11]}],
    }  # fmt: skip
    for name, data in (("flickr", flickr), ("mixed", mixed)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        out = read_mdetr(path)
        img, ann = out["images"][0], out["annotations"][0]
        assert isinstance(img["height"], int) and isinstance(img["width"], int)
        assert out["categories"][0]["id"] == 1 and ann["category_id"] == 1 and ann["id"] == 1
        assert ann["tokens_positive"] == ([[0, 14]] if name == "flickr" else [[0, 11]])
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], rel=0.02)
    bad = dict(mixed, annotations=[{"image_id": 0, "id": 1, "bbox": [1, 2, 3, 4], "tokens_positive": [[30, 80]]}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="does not index"):
        read_mdetr(path)


# ------------------------------------------------------------------------------------------- YOLO


def test_yolo_round_trip_layout_and_data_yaml(tmp_path: Path) -> None:
    image_root = tmp_path / "photos"
    image_root.mkdir()
    records = gold_records()
    records.append(ImageRecord("other/b.jpg", 320, 240, records[1].detections))  # same stem, other folder
    out = tmp_path / "yolo"
    counts = write_yolo(out, records, CATEGORIES, image_root)
    assert counts == {"images": 4, "boxes": 6, "empty": 1, "outside": 0}
    assert (out / "labels" / "c.txt").read_text() == ""  # negatives get an empty file
    assert (out / "labels" / "sub" / "b.txt").exists() and (out / "labels" / "other" / "b.txt").exists()
    # images/ is a real folder of per-image links (a folder link would be resolved away by Ultralytics)
    assert (out / "images").is_dir() and not (out / "images").is_symlink()
    for record in records:
        link = out / "images" / record.file_name
        assert link.is_symlink() and Path(os.readlink(link)) == image_root.resolve() / record.file_name
    cfg = yaml.safe_load((out / "data.yaml").read_text())
    assert cfg["names"] == CATEGORIES and cfg["nc"] == 3
    assert (Path(cfg["path"]) / cfg["train"]).resolve() == (out / "images").resolve()
    assert Path(cfg["image_root"]) == image_root.resolve()
    assert (out / "classes.txt").read_text().splitlines() == CATEGORIES
    line = (out / "labels" / "a.txt").read_text().splitlines()[0].split()
    assert line[0] == "0" and all(len(v.split(".")[1]) == 6 for v in line[1:])
    for record in records:
        boxes, classes = read_yolo_labels(out / yolo_label_relpath(record.file_name), record.width, record.height)
        np.testing.assert_array_equal(classes, record.detections.labels)
        tol = 1e-6 * max(record.width, record.height) * 2
        np.testing.assert_allclose(boxes, record.detections.boxes, atol=tol)
    # a second export into the same folder is fine; links of images no longer exported are removed
    write_yolo(out, records[:1], CATEGORIES, image_root)
    assert sorted(p.name for p in (out / "images").rglob("*") if p.is_symlink()) == ["a.jpg"]


def test_yolo_clips_and_rejects_ambiguous_names(tmp_path: Path) -> None:
    det = Detections([[-5, 10, 50, 300], [120, 120, 150, 150]], [0.9, 0.8], [1, 0], CATEGORIES)
    counts = write_yolo(tmp_path / "y", [ImageRecord("a.jpg", 100, 200, det)], CATEGORIES, tmp_path, link_images=False)
    assert counts["boxes"] == 1 and counts["outside"] == 1
    boxes, classes = read_yolo_labels(tmp_path / "y" / "labels" / "a.txt", 100, 200)
    np.testing.assert_allclose(boxes, [[0, 10, 50, 199]], atol=1e-3)
    assert classes.tolist() == [1]
    empty = Detections.empty(CATEGORIES)
    with pytest.raises(ValueError, match="share the label file"):
        write_yolo(tmp_path / "z", [ImageRecord(n, 10, 10, empty) for n in ("a.jpg", "a.png")], CATEGORIES, tmp_path)
    for name in ("images/a.jpg", "../a.jpg", "/abs/a.jpg"):
        with pytest.raises(ValueError):
            yolo_label_relpath(name)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0.1 0.1 0.2\n")
    with pytest.raises(ValueError, match="expected"):
        read_yolo_labels(bad, 10, 10)


# ------------------------------------------------------------------------------------ Label Studio


def test_labelstudio_percent_math_and_config() -> None:
    det = Detections([[10, 20, 59, 119], [150, -10, 250, 50]], [0.8, 0.4], [1, 2], CATEGORIES)
    tasks = labelstudio_tasks([ImageRecord("dir/my photo.jpg", 200, 400, det)], CATEGORIES)
    (task,) = tasks
    assert task["data"]["image"] == "/data/local-files/?d=dir/my%20photo.jpg"
    (pred,) = task["predictions"]
    assert pred["score"] == pytest.approx(0.6) and pred["model_version"] == "glip-label"
    first, second = pred["result"]
    assert first["type"] == "rectanglelabels" and first["from_name"] == "label" and first["to_name"] == "image"
    assert (first["original_width"], first["original_height"]) == (200, 400)
    assert first["value"]["rectanglelabels"] == ["dog"] and first["score"] == 0.8
    v = first["value"]
    assert (v["x"], v["y"], v["width"], v["height"]) == (5.0, 5.0, 25.0, 25.0)
    v = second["value"]  # clipped to the image: x2 199, y1 0
    assert (v["x"], v["y"], v["width"], v["height"]) == (75.0, 0.0, 25.0, 12.75)
    (negative,) = labelstudio_tasks([ImageRecord("n.jpg", 10, 10, Detections.empty(CATEGORIES))], CATEGORIES)
    assert negative["predictions"] == [{"model_version": "glip-label", "score": 0.0, "result": []}]

    root = ET.fromstring(labelstudio_label_config(["person", 'a "quoted" <name>']))
    image = root.find("Image")
    rect = root.find("RectangleLabels")
    assert image.get("name") == "image" and image.get("value") == "$image"
    assert rect.get("name") == "label" and rect.get("toName") == "image"
    assert [lab.get("value") for lab in rect.findall("Label")] == ["person", 'a "quoted" <name>']


# ---------------------------------------------------------------------------------------- drawing


def test_class_colours_are_stable_and_distinct() -> None:
    colours = [class_colour(i) for i in range(20)]
    assert colours == [class_colour(i) for i in range(20)]
    assert len(set(colours)) == 20
    for i in range(19):  # neighbouring classes are far apart
        assert sum(abs(a - b) for a, b in zip(colours[i], colours[i + 1], strict=True)) > 100


def test_draw_detections_draws_on_a_copy() -> None:
    image = Image.new("RGB", (200, 150), (128, 128, 128))
    det = Detections([[40, 50, 120, 130], [10, 5, 60, 40]], [0.9, 0.3], [0, 2], CATEGORIES)
    drawn = draw_detections(image, det, line_width=3)
    assert drawn.size == image.size and image.getpixel((40, 90)) == (128, 128, 128)  # input untouched
    assert drawn.getpixel((41, 90)) == class_colour(0)  # left edge of the first box, below its tag
    assert drawn.getpixel((39, 90)) == (0, 0, 0) and drawn.getpixel((43, 90)) == (0, 0, 0)  # dark rims
    assert drawn.getpixel((80, 90)) == (128, 128, 128)  # interior left alone
    # plain boxes, no names or scores; grayscale input comes back RGB
    plain = draw_detections(Image.new("L", (50, 50), 255), np.array([[5, 5, 30, 30]]), labels=[1])
    assert plain.mode == "RGB" and plain.getpixel((6, 20)) == class_colour(1)
    with pytest.raises(ValueError):
        draw_detections(image, np.zeros((2, 4)), labels=[0])


def test_save_visualizations(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), (0, 90, 200)).save(root / "sub" / "a.png")
    det = Detections([[4, 4, 40, 30]], [0.7], [1], CATEGORIES)
    records = [ImageRecord("sub/a.png", 64, 48, det), ImageRecord("missing.jpg", 10, 10, det)]
    written = save_visualizations(records, root, tmp_path / "vis", limit=5)
    assert written == [tmp_path / "vis" / "sub" / "a.jpg"]
    with Image.open(written[0]) as im:
        assert im.size == (64, 48)


def test_coco_stream_writer_equals_in_memory_writer(tmp_path):
    from glip_label.formats.coco import CocoStreamWriter, CocoWriter

    rng = np.random.default_rng(3)
    records = []
    for i in range(5):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], axis=1)
        det = Detections(boxes, rng.uniform(0.1, 1, n), rng.integers(0, 2, n), ["a", "b"])
        records.append(ImageRecord(f"im{i}.jpg", 100, 80, det))
    memory = CocoWriter(["a", "b"], info={"x": 1})
    with CocoStreamWriter(tmp_path / "s.json", ["a", "b"], info={"x": 1}) as stream:
        for record in records:
            memory.add(record)
            stream.add(record)
    assert json.loads((tmp_path / "s.json").read_text()) == memory.to_dict()
    assert stream.num_annotations == memory.num_annotations and len(stream) == 5
