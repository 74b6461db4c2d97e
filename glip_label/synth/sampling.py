"""Scene sampling of the synthetic world: image size, background, objects and their placement.

Determinism: each image has its own generator seeded by (world seed, split, image index), so a world
is a pure function of its config, and image k of a split does not change when another split's count
or a later image changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glip_label.synth.captions import make_caption
from glip_label.synth.render import (
    RGB,
    SHAPE_ROTATION,
    Background,
    box_iou,
    mask_box,
    object_mask,
    shape_extent,
)
from glip_label.synth.world import COLOURS, SIZES, SPLITS, Scene, SceneObject, WorldConfig


def _split_seed(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _muted_colour(rng: np.random.Generator, value: float) -> RGB:
    """A low-saturation colour of brightness ``value``: backgrounds stay distinct from the object palette."""
    hue = rng.random()
    saturation = rng.uniform(0.05, 0.35)
    k = np.array([5.0, 3.0, 1.0])
    channel = value - value * saturation * np.clip(np.minimum((k + hue * 6.0) % 6.0, 4.0 - (k + hue * 6.0) % 6.0), 0, 1)
    return tuple(int(round(c * 255)) for c in channel)  # type: ignore[return-value]


def _sample_background(rng: np.random.Generator, config: WorldConfig) -> Background:
    kind = str(rng.choice(config.backgrounds))
    value = rng.uniform(0.32, 0.72)
    first = _muted_colour(rng, value)
    if kind == "plain":
        return Background(kind, (first,))
    # The second colour differs mainly in brightness: a visible pattern that still leaves objects salient.
    delta = rng.uniform(0.1, 0.22) * (1 if value < 0.52 else -1)
    second = _muted_colour(rng, value + delta)
    angle = {"gradient": float(rng.uniform(0, 360)), "striped": float(rng.choice([0.0, 45.0, 90.0, 135.0]))}
    period = {"striped": int(rng.integers(5, 13)), "checkered": int(rng.integers(8, 21)),
              "noisy": int(rng.integers(6, 17))}  # fmt: skip
    return Background(kind, (first, second), angle.get(kind, 0.0), period.get(kind, 16), int(rng.integers(2**31)))


def _colour_distance(a: Sequence[int], b: Sequence[int]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def _pick_shape(rng: np.random.Generator, split: str, config: WorldConfig) -> str:
    if split == "gold" or not config.novel_shapes or rng.random() >= config.novel_prob:
        return str(rng.choice(config.base_shapes))
    return str(rng.choice(config.novel_shapes))


def _place_object(rng: np.random.Generator, shape: str, size_class: str, width: int, height: int,
                  config: WorldConfig) -> tuple[float, float, float, float, float]:
    """Random geometry (cx, cy, scale, aspect, angle) with the whole shape inside the image, rounded as stored."""
    low, high = config.small_scale if size_class == "small" else config.large_scale
    scale = rng.uniform(low, high) * min(width, height)
    aspect = float(np.exp(rng.uniform(-config.aspect_jitter, config.aspect_jitter)))
    bases, jitter = SHAPE_ROTATION[shape]
    angle = float(rng.choice(bases)) + rng.uniform(-jitter, jitter)
    reach = min(shape_extent(scale, aspect), (min(width, height) - 2) / 2)
    cx = rng.uniform(reach, width - 1 - reach)
    cy = rng.uniform(reach, height - 1 - reach)
    return round(cx, 2), round(cy, 2), round(scale, 2), round(aspect, 4), round(angle, 2)


def _sample_objects(rng: np.random.Generator, split: str, width: int, height: int, background: Background,
                    config: WorldConfig) -> list[SceneObject]:
    """Objects in drawing order; each new one is rejected if it would hide too much of an earlier one."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[dict] = []  # shape, colour, size, rgb, geometry, full mask, visible mask, box
    for _ in range(count):
        shape = _pick_shape(rng, split, config)
        size_class = str(rng.choice(SIZES))
        for _attempt in range(config.placement_attempts):
            cx, cy, scale, aspect, angle = _place_object(rng, shape, size_class, width, height, config)
            mask = object_mask(shape, cx, cy, scale, aspect, angle, width, height)
            box = mask_box(mask)
            if box is None or box[0] == 0 or box[1] == 0 or box[2] == width - 1 or box[3] == height - 1:
                continue  # touching the border would clip the shape (and its box)
            if not all(_still_visible(p["full"], p["visible"] & ~mask, config) for p in placed):
                continue
            # Same-coloured objects that touch would merge into one blob: their colour is excluded.
            touching = {p["colour"] for p in placed if box_iou(_grow(p["box"], 2), box) > 0}
            colours = [
                c for c in config.colours
                if c not in touching and min(_colour_distance(COLOURS[c], b) for b in background.colours)
                >= config.min_contrast
            ]  # fmt: skip
            if not colours:
                continue
            colour = str(rng.choice(colours))
            jitter = rng.integers(-config.colour_jitter, config.colour_jitter + 1, size=3)
            rgb = tuple(int(v) for v in np.clip(np.asarray(COLOURS[colour]) + jitter, 0, 255))
            for p in placed:
                p["visible"] = p["visible"] & ~mask
            placed.append({"shape": shape, "colour": colour, "size": size_class, "rgb": rgb, "cx": cx, "cy": cy,
                           "scale": scale, "aspect": aspect, "angle": angle, "full": mask, "visible": mask.copy(),
                           "box": box})  # fmt: skip
            break
    return [
        SceneObject(p["shape"], p["colour"], p["size"], p["rgb"], p["cx"], p["cy"], p["scale"], p["aspect"],
                    p["angle"], p["box"], round(float(p["visible"].sum() / p["full"].sum()), 4))
        for p in placed
    ]  # fmt: skip


def _grow(box: Sequence[int], pad: int) -> tuple[int, int, int, int]:
    return box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad


def _still_visible(full: np.ndarray, visible: np.ndarray, config: WorldConfig) -> bool:
    if visible.sum() < config.min_visible_fraction * full.sum():
        return False
    visible_box = mask_box(visible)
    return visible_box is not None and box_iou(visible_box, mask_box(full)) >= config.min_visible_box_iou



def make_scene(config: WorldConfig, split: str, index: int) -> Scene:
    """Image ``index`` of ``split``: a pure function of (config, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    rng = _split_seed(config.seed, split, index)
    low, high = config.image_size, config.max_image_size or config.image_size
    width = int(rng.integers(low[0], high[0] + 1))
    height = int(rng.integers(low[1], high[1] + 1))
    background = _sample_background(rng, config)
    objects = _sample_objects(rng, split, width, height, background, config)
    mention_all = split != "captions" or rng.random() < config.mention_all_prob
    caption, phrases, relations, background_span = make_caption(
        rng, objects, background, (width, height), config, mention_all
    )
    return Scene(split, index, width, height, background, tuple(objects), caption, phrases, relations,
                 background_span, int(rng.integers(2**31)), config.pixel_noise)  # fmt: skip
