"""Writing a synthetic world to disk: PNG images, COCO / MDETR-style grounding jsons, a caption jsonl.

Layout under ``out_dir`` (every path in the jsons is relative to the json's own folder, and nothing
holds an absolute path, so a world is byte-identical wherever it is generated and can be moved):

    world.json                 manifest: config, categories, base/novel shapes, relative paths, counts
    gold/images/gold_000000.png ...
    gold/coco.json             COCO detection, categories = BASE shapes, every object boxed
    gold/mdetr.json            MDETR-style grounding: caption + tokens_positive per box
    gold/scenes.jsonl          full scene truth (geometry, colours, phrases, relations) per image
    captions/images/captions_000000.png ...
    captions/captions.jsonl    {"image": "images/...png", "caption": "..."}: what self-training may read
    captions/truth.json        hidden truth for analysis only: COCO detection over ALL shapes + phrases
    captions/scenes.jsonl
    val/images/val_000000.png ...
    val/coco.json              COCO detection, categories = ALL shapes, every object boxed
    val/mdetr.json             MDETR-style grounding for Recall@1
    val/scenes.jsonl

Ids: category id = 1 + index in ``WorldConfig.categories`` (base shapes first, so a base shape has the
same id in gold and val); image ids follow the split's image order from 1; annotation ids from 1.
COCO ``bbox`` = [x1, y1, x2 - x1 + 1, y2 - y1 + 1] from the "+1" xyxy box (GLIP's own export), integers
because boxes are pixel-exact; ``area`` = w * h of that box. MDETR-style annotations keep the SHAPE's
category id (not MDETR's single "object" category) so they double as detection truth; grounding readers
ignore it. Extra keys (``caption``, ``phrases``, ``colour``, ``size``...) are ignored by pycocotools.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from glip_label.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from glip_label.synth.render import render_canvas
from glip_label.synth.sampling import make_scene
from glip_label.synth.world import SPLITS, Scene, WorldConfig

WORLD_FORMAT = "glip-label-synth-v1"
BOX_CONVENTION = "bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1]; x1..x2 / y1..y2 are the first..last painted pixels"

# Relative paths inside a world folder.
_LAYOUT: dict[str, str] = {
    "gold_images": "gold/images",
    "gold_coco": "gold/coco.json",
    "gold_mdetr": "gold/mdetr.json",
    "gold_scenes": "gold/scenes.jsonl",
    "captions_images": "captions/images",
    "captions_jsonl": "captions/captions.jsonl",
    "captions_truth": "captions/truth.json",
    "captions_scenes": "captions/scenes.jsonl",
    "val_images": "val/images",
    "val_coco": "val/coco.json",
    "val_mdetr": "val/mdetr.json",
    "val_scenes": "val/scenes.jsonl",
}


@dataclass(frozen=True)
class WorldPaths:
    """Where a generated world's files are, and its vocabulary (``categories[i]`` has category id i + 1)."""

    root: Path
    manifest: Path
    gold_images: Path
    gold_coco: Path
    gold_mdetr: Path
    gold_scenes: Path
    captions_images: Path
    captions_jsonl: Path
    captions_truth: Path
    captions_scenes: Path
    val_images: Path
    val_coco: Path
    val_mdetr: Path
    val_scenes: Path
    categories: tuple[str, ...]
    base_shapes: tuple[str, ...]
    novel_shapes: tuple[str, ...]

    @classmethod
    def load(cls, root: str | Path) -> WorldPaths:
        """The paths of a world generated earlier, from its ``world.json``."""
        root = Path(root)
        manifest = read_json(root / "world.json")
        if manifest.get("format") != WORLD_FORMAT:
            raise ValueError(f"{root / 'world.json'}: not a {WORLD_FORMAT} manifest")
        return cls._make(root, manifest["categories"], manifest["base_shapes"], manifest["novel_shapes"])

    @classmethod
    def _make(cls, root: Path, categories, base_shapes, novel_shapes) -> WorldPaths:
        return cls(root=root, manifest=root / "world.json", **{k: root / v for k, v in _LAYOUT.items()},
                   categories=tuple(categories), base_shapes=tuple(base_shapes),
                   novel_shapes=tuple(novel_shapes))  # fmt: skip

    def scenes(self, split: str) -> list[Scene]:
        """The full truth of one split, in image order (re-render any image with ``render_scene``)."""
        path = {"gold": self.gold_scenes, "captions": self.captions_scenes, "val": self.val_scenes}[split]
        return [Scene.from_dict(record) for record in read_jsonl(path)]


def render_scene(scene: Scene) -> Image.Image:
    """The scene's RGB picture, identical to the PNG written for it."""
    return Image.fromarray(render_canvas(scene.canvas()), mode="RGB")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _coco_xywh(box: tuple[int, int, int, int]) -> list[int]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


def _image_entry(image_id: int, scene: Scene) -> dict[str, Any]:
    return {"id": image_id, "file_name": f"images/{scene.file_stem}.png", "width": scene.width,
            "height": scene.height}  # fmt: skip


def _phrase_entries(scene: Scene) -> list[dict[str, Any]]:
    return [
        {"text": p.text, "span": [p.start, p.end], "head_span": [p.head_start, p.head_end], "shape": p.shape,
         "attributes": dict(p.attributes), "objects": list(p.objects)}
        for p in scene.phrases
    ]  # fmt: skip


def _categories(names: tuple[str, ...], all_names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"id": all_names.index(n) + 1, "name": n, "supercategory": "shape"} for n in names]


def _info(config: WorldConfig, split: str, description: str) -> dict[str, Any]:
    return {"description": description, "format": WORLD_FORMAT, "split": split, "seed": config.seed,
            "box_convention": BOX_CONVENTION}  # fmt: skip


def coco_detection(scenes: list[Scene], config: WorldConfig, category_names: tuple[str, ...], split: str,
                   with_captions: bool = False) -> dict[str, Any]:
    """COCO detection dict boxing every object (all must be of ``category_names``).

    ``with_captions`` adds each image's caption and phrases and each annotation's ``tokens_positive``
    / ``phrase_ids`` ([] when the caption does not name it): the captions corpus' hidden truth.
    """
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=1):
        image = _image_entry(image_id, scene)
        if with_captions:
            image["caption"] = scene.caption
            image["phrases"] = _phrase_entries(scene)
        images.append(image)
        for k, obj in enumerate(scene.objects):
            if obj.shape not in category_names:
                raise ValueError(f"{scene.file_stem}: {obj.shape!r} is not one of this split's categories")
            bbox = _coco_xywh(obj.box)
            ann = {"id": len(annotations) + 1, "image_id": image_id,
                   "category_id": config.categories.index(obj.shape) + 1, "bbox": bbox, "area": bbox[2] * bbox[3],
                   "iscrowd": 0, "colour": obj.colour, "size": obj.size}  # fmt: skip
            if with_captions:
                phrase_ids = [j for j, p in enumerate(scene.phrases) if k in p.objects]
                ann["phrase_ids"] = phrase_ids
                ann["tokens_positive"] = [[scene.phrases[j].start, scene.phrases[j].end] for j in phrase_ids]
            annotations.append(ann)
    return {"info": _info(config, split, f"synthetic shapes world, {split} split, detection truth"), "licenses": [],
            "images": images, "annotations": annotations,
            "categories": _categories(category_names, config.categories)}  # fmt: skip


def mdetr_grounding(scenes: list[Scene], config: WorldConfig, category_names: tuple[str, ...],
                    split: str) -> dict[str, Any]:
    """MDETR/GLIP-style grounding dict: one image entry per (image, caption), one annotation per named box.

    ``tokens_positive`` holds the character span of the box's noun phrase ("a small red triangle");
    ``phrase_ids`` indexes the image's ``tokens_positive_eval`` (one span list per phrase, in caption
    order), as glip_label.formats.mdetr writes it.
    """
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=1):
        image = _image_entry(image_id, scene)
        image.update({"caption": scene.caption, "dataset_name": "synth",
                      "tokens_positive_eval": [[[p.start, p.end]] for p in scene.phrases],
                      "phrases": _phrase_entries(scene)})  # fmt: skip
        images.append(image)
        for phrase_id, phrase in enumerate(scene.phrases):
            for k in phrase.objects:
                obj = scene.objects[k]
                if obj.shape not in category_names:
                    raise ValueError(f"{scene.file_stem}: {obj.shape!r} is not one of this split's categories")
                bbox = _coco_xywh(obj.box)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": config.categories.index(obj.shape) + 1, "bbox": bbox,
                                    "area": bbox[2] * bbox[3], "iscrowd": 0,
                                    "tokens_positive": [[phrase.start, phrase.end]], "phrase_ids": [phrase_id]})
    return {"info": _info(config, split, f"synthetic shapes world, {split} split, caption grounding"), "licenses": [],
            "images": images, "annotations": annotations,
            "categories": _categories(category_names, config.categories)}  # fmt: skip


def generate_world(out_dir: str | Path, config: WorldConfig | None = None) -> WorldPaths:
    """Generate every split of the world described by ``config`` under ``out_dir`` (overwriting its files).

    Same config → byte-identical files. The manifest is written last, so a world with a ``world.json``
    is complete.
    """
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    paths = WorldPaths._make(out_dir, config.categories, config.base_shapes, config.novel_shapes)
    counts = {"gold": config.n_gold, "captions": config.n_captions, "val": config.n_val}
    scenes: dict[str, list[Scene]] = {}
    for split in SPLITS:
        scenes[split] = [make_scene(config, split, i) for i in range(counts[split])]
        image_dir = out_dir / split / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        wanted = {f"{scene.file_stem}.png" for scene in scenes[split]}
        for stale in image_dir.glob(f"{split}_*.png"):  # left by an earlier, larger world in the same folder
            if stale.name not in wanted:
                stale.unlink()
        for scene in scenes[split]:
            atomic_write_bytes(image_dir / f"{scene.file_stem}.png", _png_bytes(render_scene(scene)))
        atomic_write_jsonl(out_dir / _LAYOUT[f"{split}_scenes"], [s.to_dict() for s in scenes[split]])

    atomic_write_json(paths.gold_coco, coco_detection(scenes["gold"], config, config.base_shapes, "gold"))
    atomic_write_json(paths.gold_mdetr, mdetr_grounding(scenes["gold"], config, config.base_shapes, "gold"))
    atomic_write_jsonl(paths.captions_jsonl, [
        {"image": f"images/{s.file_stem}.png", "caption": s.caption} for s in scenes["captions"]
    ])  # fmt: skip
    atomic_write_json(paths.captions_truth,
                      coco_detection(scenes["captions"], config, config.categories, "captions", with_captions=True))
    atomic_write_json(paths.val_coco, coco_detection(scenes["val"], config, config.categories, "val"))
    atomic_write_json(paths.val_mdetr, mdetr_grounding(scenes["val"], config, config.categories, "val"))

    manifest = {
        "format": WORLD_FORMAT,
        "config": config.to_dict(),
        "categories": list(config.categories),
        "base_shapes": list(config.base_shapes),
        "novel_shapes": list(config.novel_shapes),
        "box_convention": BOX_CONVENTION,
        "paths": dict(_LAYOUT),
        "counts": {split: {"images": len(scenes[split]), "objects": sum(len(s.objects) for s in scenes[split]),
                           "phrases": sum(len(s.phrases) for s in scenes[split])} for split in SPLITS},
    }  # fmt: skip
    atomic_write_json(paths.manifest, manifest)
    return paths
