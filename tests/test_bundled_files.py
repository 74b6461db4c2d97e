"""The bundled class lists (prompts/) and example data (examples/) are what users and the README run first.

A silently wrong list (a dropped name shifts every later id) or an example file that no longer loads
would only show up as nonsense labels, so their shape is pinned here: counts, order anchors,
uniqueness, that the package's own readers accept them, and that the examples stay small.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from glip_label.data.image_discovery import discover_images
from glip_label.runs.ontology import load_ontology
from glip_label.text.prompts import build_detection_prompt, clean_name

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "prompts"
EXAMPLES = REPO / "examples"

# file -> (number of names, {0-based line index: name}); the anchors pin the official id order
# (LVIS "person" is category id 793, COCO "traffic light" id 10).
CLASS_LISTS: dict[str, tuple[int, dict[int, str]]] = {
    "coco80.txt": (80, {0: "person", 1: "bicycle", 9: "traffic light", 40: "wine glass", 79: "toothbrush"}),
    "lvis.txt": (1203, {0: "aerosol_can", 1: "air_conditioner", 299: "convertible_(automobile)", 792: "person",
                        999: "spoon", 1202: "zucchini"}),
    "objects365.txt": (365, {0: "person", 1: "sneakers", 158: "tissue", 196: "electronic stove and gas stove",
                             364: "flashlight"}),
    "openimages.txt": (601, {0: "Tortoise", 1: "Container", 11: "Organ (Musical Instrument)", 600: "Helmet"}),
}
# LVIS names that GLIP's clean_name turns into the same words (documented in prompts/README.md).
LVIS_CLEAN_COLLISIONS = {"bow", "fish", "octopus", "pan", "salmon"}
EXAMPLE_IMAGES = {"astronaut.png", "coffee.png", "more/balloons.png", "more/house.jpg", "more/shapes.png"}
MAX_EXAMPLES_BYTES = 2 * 1024 * 1024


def read_names(name: str) -> list[str]:
    return (PROMPTS / name).read_text(encoding="utf-8").split("\n")[:-1]


# ------------------------------------------------------------------------------------------ class lists


@pytest.mark.parametrize("file_name", sorted(CLASS_LISTS))
def test_class_list_is_one_clean_unique_name_per_line(file_name):
    raw = (PROMPTS / file_name).read_bytes()
    text = raw.decode("utf-8")  # strict: the lists must be valid UTF-8
    assert text.endswith("\n") and "\r" not in text and not text.startswith("\ufeff")
    names = read_names(file_name)
    count, anchors = CLASS_LISTS[file_name]
    assert len(names) == count
    for name in names:
        assert name and name == name.strip(), f"blank line or stray whitespace: {name!r}"
        assert not name.startswith("#"), f"{name!r} would be read as a comment"
    assert len(set(names)) == count, [n for n, c in Counter(names).items() if c > 1]
    assert len({n.lower() for n in names}) == count, "names differing only in case"
    for index, expected in anchors.items():
        assert names[index] == expected, f"line {index + 1}: {names[index]!r} != {expected!r}"


def test_coco_list_matches_torchvision_category_table():
    meta = pytest.importorskip("torchvision.models._meta")
    table = getattr(meta, "_COCO_CATEGORIES", None)
    if table is None:
        pytest.skip("torchvision no longer ships _COCO_CATEGORIES")
    assert read_names("coco80.txt") == [n for n in table if n not in ("__background__", "N/A")]


@pytest.mark.parametrize("file_name", sorted(CLASS_LISTS))
def test_class_lists_become_detection_prompts(file_name):
    names = read_names(file_name)
    ontology = load_ontology(classes_file=PROMPTS / file_name)
    assert ontology.categories == names and ontology.phrases == names
    prompt = build_detection_prompt(names)  # rejects names that clean to nothing
    assert len(prompt.spans) == len(names)
    cleaned = Counter(" ".join(clean_name(n).split()).lower() for n in names)
    collisions = {n for n, c in cleaned.items() if c > 1}
    assert collisions == (LVIS_CLEAN_COLLISIONS if file_name == "lvis.txt" else set())


def test_prompts_readme_names_every_list_with_its_count():
    readme = (PROMPTS / "README.md").read_text(encoding="utf-8")
    for file_name, (count, _) in CLASS_LISTS.items():
        assert f"`{file_name}` | {count} |" in readme


# ------------------------------------------------------------------------------------------- ontologies


def check_ontology_schema(data: object) -> dict[str, tuple[list[str], float | None]]:
    """The documented schema, written out independently of the package's reader."""
    assert isinstance(data, dict) and set(data) == {"classes"}
    classes = data["classes"]
    assert isinstance(classes, dict) and classes
    parsed: dict[str, tuple[list[str], float | None]] = {}
    for name, spec in classes.items():
        assert isinstance(name, str) and name.strip()
        threshold = None
        if spec is None:
            prompts = [name]
        elif isinstance(spec, str):
            prompts = [spec]
        elif isinstance(spec, list):
            prompts = spec
        else:
            assert isinstance(spec, dict) and set(spec) <= {"prompts", "threshold"}
            prompts = spec.get("prompts", [name])
            threshold = spec.get("threshold")
            assert threshold is None or (isinstance(threshold, float) and 0.0 <= threshold <= 1.0)
        assert prompts and all(isinstance(p, str) and p.strip() for p in prompts)
        parsed[name] = (prompts, threshold)
    all_prompts = [p for prompts, _ in parsed.values() for p in prompts]
    assert len(all_prompts) == len(set(all_prompts)), "a prompt listed under two classes"
    return parsed


def test_ontology_examples_agree_and_follow_the_schema():
    from_yaml = yaml.safe_load((PROMPTS / "ontology-example.yaml").read_text(encoding="utf-8"))
    from_json = json.loads((PROMPTS / "ontology-example.json").read_text(encoding="utf-8"))
    assert from_yaml == from_json
    parsed = check_ontology_schema(from_yaml)
    # The example shows every form the README documents: mapping with/without threshold, list shorthand, empty.
    assert parsed["person"] == (["person", "pedestrian", "man", "woman", "child"], 0.35)
    assert parsed["dog"] == (["dog", "puppy"], None)
    assert parsed["traffic light"] == (["traffic light"], None)
    for path in (PROMPTS / "ontology-example.yaml", PROMPTS / "ontology-example.json"):
        ontology = load_ontology(ontology=path)
        assert ontology.categories == list(parsed)
        assert ontology.phrases == [p for prompts, _ in parsed.values() for p in prompts]
        assert ontology.thresholds == {n: t for n, (_, t) in parsed.items() if t is not None}


# --------------------------------------------------------------------------------------------- examples


def test_example_images_open_and_are_found_recursively():
    root, found = discover_images(EXAMPLES / "images")
    assert set(found) == EXAMPLE_IMAGES
    for rel in found:
        with Image.open(root / rel) as image:
            image.verify()
        with Image.open(root / rel) as image:
            image.convert("RGB").load()
    with Image.open(EXAMPLES / "images" / "more" / "balloons.png") as image:
        assert image.mode == "P"  # kept on purpose: exercises palette conversion


def test_captions_cover_every_example_image():
    lines = (EXAMPLES / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["image"] for r in records) == sorted(f"images/{rel}" for rel in EXAMPLE_IMAGES)
    for record in records:
        assert (EXAMPLES / record["image"]).is_file()
        caption = record["caption"]
        assert isinstance(caption, str) and len(caption.split()) >= 5
        assert record["phrases"] and all(p in caption for p in record["phrases"])


def test_gold_file_loads_with_pycocotools_and_matches_the_images():
    from pycocotools.coco import COCO

    coco = COCO(str(EXAMPLES / "gold.coco.json"))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == ["images/astronaut.png",
                                                                          "images/coffee.png"]
    names = {cat["id"]: cat["name"] for cat in coco.dataset["categories"]}
    assert len(set(names.values())) == len(names)
    for img in coco.dataset["images"]:
        with Image.open(EXAMPLES / img["file_name"]) as image:
            assert image.size == (img["width"], img["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert anns
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] == w * h and ann["iscrowd"] == 0
    by_image = {img["file_name"]: {names[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))}
                for img in coco.dataset["images"]}
    assert {"person", "flag", "helmet"} <= by_image["images/astronaut.png"]
    assert by_image["images/coffee.png"] == {"cup", "saucer", "spoon"}


def test_synthetic_images_are_reproducible_from_the_script():
    spec = importlib.util.spec_from_file_location("make_images", EXAMPLES / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    more = EXAMPLES / "images" / "more"
    for drawn, file_name, tolerance in ((module.draw_shapes(), "shapes.png", 0.0),
                                        (module.draw_balloons(), "balloons.png", 0.0),
                                        (module.draw_house(), "house.jpg", 3.0)):  # JPEG: encoder round-off
        with Image.open(more / file_name) as stored:
            stored_rgb = np.asarray(stored.convert("RGB"), dtype=np.float64)
        drawn_rgb = np.asarray(drawn.convert("RGB"), dtype=np.float64)
        assert drawn_rgb.shape == stored_rgb.shape
        assert np.abs(drawn_rgb - stored_rgb).mean() <= tolerance, file_name


def test_examples_folder_stays_small():
    total = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < MAX_EXAMPLES_BYTES
