"""The demo's synthetic world: deterministic, exact boxes, captions true of the picture, base/novel split."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from glip_label.synth import WorldConfig, generate_world, make_scene, mask_box, relation_holds, render_scene
from glip_label.synth.export import WorldPaths

CONFIG = WorldConfig(seed=5, n_gold=6, n_captions=12, n_val=6)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> WorldPaths:
    return generate_world(tmp_path_factory.mktemp("world"), CONFIG)


def test_same_config_gives_byte_identical_files_and_seeds_differ(world, tmp_path):
    again = generate_world(tmp_path / "again", CONFIG)
    assert _digest(world.root) == _digest(again.root)
    other = make_scene(WorldConfig(seed=6), "gold", 0)
    first = make_scene(CONFIG, "gold", 0)
    assert (other.caption, other.objects) != (first.caption, first.objects)


def test_boxes_are_the_drawn_pixels_and_lie_inside_the_image(world):
    for split in ("gold", "val"):
        for scene in world.scenes(split):
            for obj in scene.objects:
                x1, y1, x2, y2 = obj.box
                assert 0 <= x1 <= x2 < scene.width and 0 <= y1 <= y2 < scene.height
                assert mask_box(obj.mask(scene.width, scene.height)) == obj.box
            picture = np.asarray(Image.open(world.root / split / "images" / f"{scene.file_stem}.png"))
            assert np.array_equal(picture, np.asarray(render_scene(scene)))


def test_gold_boxes_base_shapes_only_and_val_boxes_everything(world):
    gold, val = COCO(str(world.gold_coco)), COCO(str(world.val_coco))
    assert [c["name"] for c in gold.loadCats(gold.getCatIds())] == list(world.base_shapes)
    assert [c["name"] for c in val.loadCats(val.getCatIds())] == list(world.categories)
    gold_objects = sum(len(s.objects) for s in world.scenes("gold"))
    assert len(gold.getAnnIds()) == gold_objects
    assert all(o.shape in world.base_shapes for s in world.scenes("gold") for o in s.objects)
    val_objects = sum(len(s.objects) for s in world.scenes("val"))
    assert len(val.getAnnIds()) == val_objects


def test_captions_name_novel_shapes_and_every_phrase_and_relation_is_true(world):
    captions = [json.loads(line) for line in world.captions_jsonl.read_text().splitlines()]
    scenes = world.scenes("captions")
    assert [c["caption"] for c in captions] == [s.caption for s in scenes]
    assert any(p.shape in world.novel_shapes for s in scenes for p in s.phrases)
    for scene in scenes + world.scenes("gold") + world.scenes("val"):
        for phrase in scene.phrases:
            assert scene.caption[phrase.start:phrase.end] == phrase.text
            assert scene.caption[phrase.head_start:phrase.head_end].startswith(phrase.shape)
            for index in phrase.objects:
                obj = scene.objects[index]
                assert obj.shape == phrase.shape
                assert all(getattr(obj, key) == value for key, value in phrase.attributes.items())
        for relation in scene.relations:
            for a in scene.phrases[relation.subject].objects:
                for b in scene.phrases[relation.object].objects:
                    assert relation_holds(relation.relation, scene.objects[a].box, scene.objects[b].box,
                                          (scene.width, scene.height), CONFIG.next_to_gap)


def test_mdetr_files_span_their_phrases(world):
    data = json.loads(world.val_mdetr.read_text())
    by_image = {img["id"]: img for img in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        caption = by_image[ann["image_id"]]["caption"]
        (start, end), = ann["tokens_positive"]
        assert 0 <= start < end <= len(caption)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown shapes"):
        WorldConfig(base_shapes=("blob",))
    with pytest.raises(ValueError, match="disjoint"):
        WorldConfig(base_shapes=("ring",), novel_shapes=("ring",))
