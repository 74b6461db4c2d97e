"""Training data: format detection, FILE@ROOT, pseudo-label filtering, detection prompts, transforms, batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip_label.config import get_preset
from glip_label.data.dataset import GroundingCollator, GroundingDataset
from glip_label.data.detection_prompt import detection_prompt
from glip_label.data.pseudo_filter import BoxFilter, confident_groundings, kept_phrases_caption
from glip_label.data.samplers import MixedSampler, SampleKey, StepBatchSampler
from glip_label.data.sources import detect_format, load_samples, load_source, parse_data_arg
from glip_label.data.token_targets import caption_positive_map
from glip_label.data.transforms import build_transform, mentions_left_or_right, train_scales_for
from glip_label.formats.coco import CocoWriter
from glip_label.formats.mdetr import MdetrWriter
from glip_label.formats.odvg import odvg_detection_record, odvg_grounding_record
from glip_label.io import atomic_write_json, atomic_write_jsonl
from glip_label.records import Detections, ImageRecord
from glip_label.text.prompts import build_detection_prompt, clean_name, prompt_token_count

CATEGORIES = ["person", "dog", "traffic_light"]
CAPTION = "A man walks a small dog on the left."
MAN, DOG = (0, 5), (20, 23)  # "A man" / "dog"
TINY = get_preset("glip-tiny")


def save_image(folder: Path, name: str, width: int, height: int, value: int = 128) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (value, value // 2, 255 - value)).save(folder / name)


def detection_records() -> list[ImageRecord]:
    return [
        ImageRecord(
            "a.png", 64, 48,
            Detections(np.array([[2, 3, 30, 40], [10, 10, 20, 20], [0, 0, 1, 1]]), np.array([0.9, 0.4, 0.95]),
                       np.array([0, 1, 2]), CATEGORIES),
        ),
        ImageRecord("b.png", 40, 40, Detections(np.array([[0, 0, 9, 9]]), np.array([0.3]), np.array([1]), CATEGORIES)),
    ]  # fmt: skip


def write_coco(path: Path, with_scores: bool = True, indent: int | None = None) -> Path:
    writer = CocoWriter(CATEGORIES)
    for record in detection_records():
        writer.add(record)
    data = writer.to_dict()
    if not with_scores:
        for ann in data["annotations"]:
            del ann["score"]
    atomic_write_json(path, data, indent=indent)
    return path


def write_odvg_detection(path: Path) -> Path:
    atomic_write_jsonl(path, [odvg_detection_record(r, CATEGORIES) for r in detection_records()])
    return path


def grounding_regions() -> list[dict]:
    return [
        {"bbox": [4, 4, 30, 40], "tokens_positive": [list(MAN)], "score": 0.8},
        {"bbox": [40, 20, 60, 40], "tokens_positive": [list(DOG)], "score": 0.45},
        {"bbox": [35, 25, 55, 45], "tokens_positive": [list(DOG)]},
    ]


def write_odvg_grounding(path: Path) -> Path:
    atomic_write_jsonl(path, [odvg_grounding_record("g.png", 48, 64, CAPTION, grounding_regions())])
    return path


def write_mdetr(path: Path) -> Path:
    writer = MdetrWriter()
    writer.add("g.png", 48, 64, CAPTION, grounding_regions())
    atomic_write_json(path, writer.to_dict(), indent=None)
    return path


# ---------------------------------------------------------------------------------------------- formats
def test_detect_format_from_content(tmp_path):
    assert detect_format(write_coco(tmp_path / "x.json")) == "coco"
    assert detect_format(write_coco(tmp_path / "pretty.txt", indent=2)) == "coco"  # name and layout do not matter
    assert detect_format(write_odvg_detection(tmp_path / "od.json")) == "odvg-detection"
    assert detect_format(write_odvg_grounding(tmp_path / "vg.jsonl")) == "odvg-grounding"
    assert detect_format(write_mdetr(tmp_path / "m.json")) == "mdetr"
    captions = {"images": [{"id": 1, "file_name": "a.png", "width": 2, "height": 2}],
                "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}]}  # fmt: skip
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError, match="captions"):
        detect_format(tmp_path / "captions.json")
    (tmp_path / "junk.json").write_text("not json at all")
    with pytest.raises(ValueError, match="neither"):
        detect_format(tmp_path / "junk.json")


def test_parse_data_arg_and_image_root(tmp_path):
    gold = write_coco(tmp_path / "sub" / "gold.json", with_scores=False)
    assert parse_data_arg(f"{gold}@/data/images") == (gold, Path("/data/images"))
    assert parse_data_arg(str(gold)) == (gold, None)
    odd = tmp_path / "odd@name.json"
    write_coco(odd, with_scores=False)
    assert parse_data_arg(str(odd)) == (odd, None)  # an existing path is never split
    with pytest.raises(ValueError):
        parse_data_arg("@/root")

    beside = load_samples(gold)
    assert beside[0].image_path == (tmp_path / "sub" / "a.png").resolve()
    elsewhere = load_samples(f"{gold}@{tmp_path / 'imgs'}")
    assert elsewhere[0].image_path == tmp_path / "imgs" / "a.png"


def test_pseudo_boxes_filtered_by_score_and_size_gold_kept(tmp_path):
    pseudo = load_source(write_coco(tmp_path / "pseudo.json"), min_score=0.5)
    assert [s.image_path.name for s in pseudo.samples] == ["a.png"]  # b.png: its only box scored 0.3
    sample = pseudo.samples[0]
    # [0,0,1,1] is 2x2 "+1" pixels: kept at min_box_size 1, the 0.4 box is dropped.
    assert sample.categories == ["person", "traffic_light"]
    np.testing.assert_allclose(sample.boxes, [[2, 3, 30, 40], [0, 0, 1, 1]])
    assert pseudo.categories == CATEGORIES
    strict = load_samples(write_coco(tmp_path / "pseudo2.json"), min_score=0.5, min_box_size=3)
    assert strict[0].categories == ["person"]
    everything = load_samples(tmp_path / "pseudo.json", min_score=0.0)
    assert [len(s.boxes) for s in everything] == [3, 1]

    gold = load_samples(write_coco(tmp_path / "gold.json", with_scores=False), min_score=0.99)
    assert [len(s.boxes) for s in gold] == [3, 1] and gold[0].scores is None

    grounding = load_samples(write_odvg_grounding(tmp_path / "vg.jsonl"), min_score=0.5)[0]
    assert grounding.caption == CAPTION
    assert grounding.spans == [[MAN], [DOG]]  # the 0.45 box went, the unscored (gold) box stayed
    assert np.isnan(grounding.scores[1]) and grounding.scores[0] == pytest.approx(0.8)


def test_confident_groundings_keep_each_phrase_best_box_when_it_is_unambiguous():
    obj1, obj1_again, obj2, obj3 = [10, 10, 50, 50], [11, 10, 50, 51], [60, 60, 90, 90], [0, 60, 30, 90]
    boxes = np.array([
        obj1, obj2,           # "a red star": 0.80 on obj1, 0.60 on obj2 -> margin 0.2, kept on obj1
        obj2, obj3,           # "a cat": 0.70 vs 0.65 elsewhere -> margin 0.05 < 0.1, dropped
        obj1_again,           # "a dog": 0.75 on obj1, but "a red star" claims obj1 with 0.80 -> dropped
        obj3, obj1,           # "two birds": best 0.9 on obj3 kept, its second box goes with the rest
    ], dtype=np.float64)
    scores = np.array([0.80, 0.60, 0.70, 0.65, 0.75, 0.90, 0.30])
    keys = ["star", "star", "cat", "cat", "dog", "birds", "birds"]
    assert confident_groundings(boxes, scores, keys, 0.1).tolist() == [True, False, False, False, False, True, False]
    # margin 0: every phrase's best box that no other phrase outscores on the same object
    assert confident_groundings(boxes, scores, keys, 0.0).tolist() == [True, False, True, False, False, True, False]
    # gold boxes (no score) pass BoxFilter untouched and take no part in the comparison
    with_gold = np.append(scores, np.nan)
    kept_boxes, keep = BoxFilter(min_score=0.5, min_margin=0.1).keep(
        np.vstack([boxes, [obj1]]), with_gold, keys + ["gold"], 100, 100
    )
    assert keep.tolist() == [True, False, False, False, False, True, False, True]
    assert len(kept_boxes) == 3


def test_pseudo_min_margin_applies_to_grounding_files(tmp_path):
    man, dog = [4, 4, 30, 40], [34, 20, 60, 44]
    regions = [
        {"bbox": man, "tokens_positive": [list(MAN)], "score": 0.8},
        {"bbox": dog, "tokens_positive": [list(MAN)], "score": 0.6},   # "A man" 0.2 ahead of its other box
        {"bbox": dog, "tokens_positive": [list(DOG)], "score": 0.7},
        {"bbox": man, "tokens_positive": [list(DOG)], "score": 0.65},  # "dog" only 0.05 ahead: dropped
    ]
    odvg = tmp_path / "vg.jsonl"
    atomic_write_jsonl(odvg, [odvg_grounding_record("g.png", 64, 48, CAPTION, regions)])
    writer = MdetrWriter()
    writer.add("g.png", 64, 48, CAPTION, regions)
    atomic_write_json(tmp_path / "m.json", writer.to_dict(), indent=None)
    for path in (odvg, tmp_path / "m.json"):
        assert len(load_samples(path, min_score=0.5)[0].boxes) == 4
        (sample,) = load_source(path, min_score=0.5, min_margin=0.1).samples
        # "dog" lost its boxes, so the caption is cut to the kept phrase: "dog" is not trained as absent
        assert (sample.caption, sample.spans) == ("A man", [[MAN]])
        np.testing.assert_allclose(sample.boxes, [man])


def test_kept_phrases_caption_lists_the_phrases_in_caption_order():
    caption = "a small star next to a red ring and a blue circle."
    text, spans = kept_phrases_caption(caption, [[(21, 31)], [(0, 12)], [(21, 31)], [(0, 1), (8, 12)]])
    assert text == "a star. a small star. a red ring"  # ordered by where each phrase starts
    assert [text[s[0][0]:s[0][1]] for s in spans] == ["a red ring", "a small star", "a red ring", "a star"]


def test_odvg_detection_and_mdetr_variants(tmp_path):
    od = load_source(write_odvg_detection(tmp_path / "od.jsonl"), min_score=0.0)
    assert od.format == "odvg-detection" and od.categories == CATEGORIES
    assert od.samples[0].categories == CATEGORIES
    # MDETR's Flickr files store sizes as strings and may omit categories; a box outside is clipped.
    raw = {
        "images": [{"id": 0, "file_name": "g.png", "height": "48", "width": "64", "caption": CAPTION}],
        "categories": [],
        "annotations": [
            {"id": 0, "image_id": 0, "bbox": [50, 10, 40, 20], "tokens_positive": [list(DOG)]},
            {"id": 1, "image_id": 0, "bbox": [1, 1, 5, 5], "tokens_positive": [list(MAN)], "iscrowd": 1},
        ],
    }
    (tmp_path / "flickr.json").write_text(json.dumps(raw))
    source = load_source(tmp_path / "flickr.json")
    assert source.format == "mdetr"
    (sample,) = source.samples
    assert (sample.width, sample.height) == (64, 48)
    np.testing.assert_allclose(sample.boxes, [[50, 10, 63, 29]])  # x2 = 50 + 40 - 1 = 89 clipped to 63
    assert sample.spans == [[DOG]]


# ---------------------------------------------------------------------------------------------- prompts
def vocabulary(n: int) -> list[str]:
    words = ["red", "small", "wooden", "traffic", "kitchen", "electric", "garden", "sea"]
    return [f"{words[i % 8]} {words[(i // 8) % 8]} thing_{i}" for i in range(n)]


def test_detection_prompt_keeps_positives_with_exact_spans_and_fits():
    names = vocabulary(400)
    sample = [names[3], names[3], names[17], "bow_(weapon)"]
    pool = names + ["bow_(weapon)"]
    for seed in range(20):
        prompt = detection_prompt(sample, pool, np.random.default_rng(seed))
        assert prompt_token_count(prompt.caption) <= 256
        assert prompt.kept == [0, 1, 2, 3]  # few positives: all kept
        for box_index, spans in zip(prompt.kept, prompt.spans, strict=True):
            (start, end), = spans
            assert prompt.caption[start:end] == clean_name(sample[box_index])
        assert set(sample) <= set(prompt.names)
        assert len(prompt.names) == len(set(prompt.names))
        assert prompt.caption == ". ".join(clean_name(n) for n in prompt.names)


def test_detection_prompt_is_deterministic_and_samples_negatives():
    names = vocabulary(200)
    first = detection_prompt(names[:2], names, np.random.default_rng(7))
    again = detection_prompt(names[:2], names, np.random.default_rng(7))
    assert first == again
    captions = {detection_prompt(names[:2], names, np.random.default_rng(s)).caption for s in range(10)}
    assert len(captions) > 5
    counts = [len(detection_prompt(names[:2], names, np.random.default_rng(s)).names) for s in range(40)]
    assert min(counts) >= 3 and max(counts) <= 2 + 85  # at least one negative, never more than 85


def test_detection_prompt_drops_boxes_of_positives_that_overflow():
    names = vocabulary(300)
    prompt = detection_prompt(names, names, np.random.default_rng(0))
    assert prompt_token_count(prompt.caption) <= 256
    assert 0 < len(prompt.kept) < len(names)
    kept_names = {names[i] for i in prompt.kept}
    assert kept_names == set(prompt.names)  # no room left for negatives either


def test_detection_prompt_fixed_order_is_the_evaluation_prompt():
    prompt = detection_prompt(["dog"], CATEGORIES, np.random.default_rng(0), disable_shuffle=True)
    assert prompt.caption == build_detection_prompt(CATEGORIES).text == "person. dog. traffic light"
    assert prompt.kept == [0] and prompt.spans == [[(8, 11)]]
    with pytest.raises(ValueError, match="fixed-order"):
        detection_prompt([], vocabulary(400), np.random.default_rng(0), disable_shuffle=True)


def test_caption_positive_map_marks_phrase_tokens():
    tokens, positive_map, kept = caption_positive_map(CAPTION, [[MAN], [DOG], [(0, 1)]])
    assert positive_map.shape == (3, tokens.num_tokens)
    # [CLS] a man walks a small dog ...: "A man" -> tokens 1..2, "dog" -> token 6
    assert positive_map[0].nonzero().flatten().tolist() == [1, 2]
    assert positive_map[1].nonzero().flatten().tolist() == [6]
    assert kept.tolist() == [0, 1, 2]
    long_caption = "word " * 300 + "dog"
    _, truncated_map, kept = caption_positive_map(long_caption, [[(0, 4)], [(1500, 1503)]])
    assert kept.tolist() == [0]  # the phrase past the 256-token limit cannot be trained
    assert truncated_map.shape == (1, 256)


# ---------------------------------------------------------------------------------------------- transforms
def test_flip_uses_plus_one_arithmetic_and_is_vetoed_by_left_or_right():
    image = Image.new("RGB", (100, 50))
    boxes = np.array([[10, 20, 39, 29]])
    flip = build_transform(TINY, train=True, scales=(50,), max_size=1000, flip_prob=1.0)
    flipped = flip(image, boxes, "a dog", np.random.default_rng(0))
    assert flipped.flipped and flipped.image_size == (50, 100)
    np.testing.assert_allclose(flipped.boxes.numpy(), [[100 - 39 - 1, 20, 100 - 10 - 1, 29]])
    for caption in ("the dog on the left", "Right hand", "leftmost cup"):
        kept = flip(image, boxes, caption, np.random.default_rng(0))
        assert not kept.flipped
        np.testing.assert_allclose(kept.boxes.numpy(), boxes)
    assert not mentions_left_or_right("a bright upright copyright notice")


def test_resize_scales_boxes_by_the_axis_ratio_and_clips():
    image = Image.new("RGB", (200, 100))
    transform = build_transform(TINY, train=True, scales=(50,), max_size=1000, flip_prob=0.0)
    out = transform(image, np.array([[20, 10, 199, 99], [0, 0, 3, 3]]), None, np.random.default_rng(0))
    assert out.image_size == (50, 100) and out.image.shape == (3, 50, 100)
    np.testing.assert_allclose(out.boxes.numpy(), [[10, 5, 99, 49], [0, 0, 1.5, 1.5]], atol=1e-5)
    assert train_scales_for(TINY) == (192, 224, 256, 288, 320)
    assert train_scales_for(get_preset("glip-t")) == (480, 560, 640, 720, 800)


# ---------------------------------------------------------------------------------------------- sampling
def test_mixed_sampler_weights_epochs_and_shards():
    mixed = MixedSampler([4, 6], [2.0, 0.5], seed=3)
    assert len(mixed) == 4 * 2 + 3
    order = mixed.epoch_order(0)
    assert sorted(order[order < 4].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(order[order >= 4].tolist())) == 3
    assert np.array_equal(order, MixedSampler([4, 6], [2.0, 0.5], seed=3).epoch_order(0))
    keys = mixed.keys(9, 4)  # crosses into epoch 1
    assert [(k.epoch, k.position) for k in keys] == [(0, 9), (0, 10), (1, 11), (1, 12)]

    single = list(StepBatchSampler(mixed, batch_size=4, start_step=2, end_step=5))
    rank0 = list(StepBatchSampler(mixed, batch_size=2, start_step=2, end_step=5, rank=0, world_size=2))
    rank1 = list(StepBatchSampler(mixed, batch_size=2, start_step=2, end_step=5, rank=1, world_size=2))
    assert [a + b for a, b in zip(rank0, rank1, strict=True)] == single
    assert single[0][0].position == 8


# ---------------------------------------------------------------------------------------------- dataset
@pytest.fixture
def mixed_dataset(tmp_path) -> GroundingDataset:
    write_coco(tmp_path / "det.json", with_scores=False)
    write_mdetr(tmp_path / "cap.json")
    save_image(tmp_path, "a.png", 64, 48)
    save_image(tmp_path, "b.png", 40, 40)
    save_image(tmp_path, "g.png", 64, 48)
    sources = [load_source(tmp_path / "det.json"), load_source(tmp_path / "cap.json", weight=2.0)]
    return GroundingDataset(sources, TINY, train=True, seed=0, scales=(96, 128), max_size=256)


def test_dataset_items_and_collate_shapes(mixed_dataset):
    keys = mixed_dataset.sampler(seed=0).keys(0, 4)
    items = [mixed_dataset[k] for k in keys]
    for item in items:
        num_boxes, num_tokens = item["positive_map"].shape
        assert item["boxes"].shape == (num_boxes, 4)
        assert item["input_ids"].shape == item["attention_mask"].shape == (num_tokens,)
        assert (item["positive_map"].sum(1) > 0).all()
        h, w = item["meta"]["image_size"]
        assert item["image"].shape == (3, h, w) and min(h, w) in (96, 128)
        assert (item["boxes"][:, 2] <= w - 1).all() and (item["boxes"][:, 3] <= h - 1).all()
    batch = GroundingCollator(32)(items)
    longest = max(item["input_ids"].shape[0] for item in items)
    assert batch.images.shape[0] == 4 and batch.images.shape[2] % 32 == 0 and batch.images.shape[3] % 32 == 0
    assert batch.input_ids.shape == batch.attention_mask.shape == (4, longest)
    for item, positive_map, mask in zip(items, batch.positive_maps, batch.attention_mask, strict=True):
        assert positive_map.shape == (item["boxes"].shape[0], longest)
        assert int(mask.sum()) == item["input_ids"].shape[0]
    assert [tuple(s) for s in batch.image_sizes] == [item["meta"]["image_size"] for item in items]


def test_dataset_item_is_a_pure_function_of_its_key(mixed_dataset):
    key = SampleKey(0, 5, 2, 17)
    first, second = mixed_dataset[key], mixed_dataset[key]
    assert first["caption"] == second["caption"]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["boxes"], second["boxes"])
    captions = {mixed_dataset[SampleKey(0, 5, e, e)]["caption"] for e in range(12)}
    assert len(captions) > 1  # negatives and order change from draw to draw
    grounding = mixed_dataset[2]
    assert grounding["caption"] == CAPTION and grounding["boxes"].shape[0] == 2  # the 0.45 box is filtered


def test_eval_dataset_uses_inference_preprocessing(tmp_path):
    write_coco(tmp_path / "det.json", with_scores=False)
    save_image(tmp_path, "a.png", 64, 48)
    save_image(tmp_path, "b.png", 40, 40)
    dataset = GroundingDataset([load_source(tmp_path / "det.json")], TINY, train=False)
    item = dataset[0]
    assert item["caption"] == "person. dog. traffic light"
    assert item["meta"]["image_size"] == (320, 426)  # official resize of 64x48 to short side 320
    assert not item["meta"]["flipped"]
