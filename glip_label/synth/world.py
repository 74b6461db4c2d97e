"""The synthetic grounding world: what a world is configured by and what one of its scenes holds.

GLIP's self-training (the GLIP paper, section 3.3; the pseudo-label records of the official
``maskrcnn_benchmark/data/datasets/pseudo_data.py``) needs three things that real data would give: a small
gold set with boxes for a BASE vocabulary, a large caption corpus whose captions also name concepts the
gold set never boxes (NOVEL), and a held-out set boxed for everything. A world holds such scenes: coloured
shapes (the detection category is the SHAPE name) on varied backgrounds, and captions that name some of
them with attributes and spatial relations, every phrase and relation true of the drawn boxes.
`glip_label.synth.sampling` draws the scenes, `glip_label.synth.captions` writes their captions.

Box convention: GLIP's "+1" xyxy, pixel-exact from the drawn mask: x1/y1 are the first painted
column/row and x2/y2 the LAST painted column/row, so a box is x2 - x1 + 1 pixels wide. Boxes are
amodal (the whole shape, as drawn alone); occlusion is limited so that every object keeps at least
``min_visible_fraction`` of its pixels and its visible pixels still span nearly the same box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from glip_label.synth.render import (
    BACKGROUND_KINDS,
    RGB,
    SHAPE_NAMES,
    Background,
    Canvas,
    DrawnObject,
    object_mask,
)

COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (40, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (140, 45, 185),
    "orange": (250, 135, 15),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES: tuple[str, ...] = ("small", "large")
SPLITS: tuple[str, ...] = ("gold", "captions", "val")
# Determiners of a phrase naming n objects ("two squares"): max_objects must stay below their count.
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class WorldConfig:
    """Everything a synthetic world depends on; the same config always gives byte-identical files.

    ``image_size`` is (width, height); with ``max_image_size`` set, each image's width and height are
    drawn uniformly between the two. Object sizes (the nominal diameter before stretching) are
    fractions of the image's shorter side: ``small_scale`` / ``large_scale`` ranges, far enough apart
    that "small"/"large" in a caption are visually true. ``novel_prob`` is the chance that an object
    of the caption corpus or val set is of a novel shape (gold images contain base shapes only).
    The novel shapes are all solid; the ring (the only shape with a hole) is a base shape, because a
    teacher that never saw a hollow object does not find one: with the ring novel, 2-4% of the
    teacher's kept "ring" groundings were right (the rest named another object), against 73-97% for
    the solid novel shapes, and those labels taught the student the wrong thing.
    ``mention_all_prob``: chance that a corpus caption names every object (else a random non-empty
    subset of them); gold and val captions always name every object.
    """

    seed: int = 0
    image_size: tuple[int, int] = (160, 160)
    max_image_size: tuple[int, int] | None = None
    n_gold: int = 64
    n_captions: int = 256
    n_val: int = 64
    base_shapes: tuple[str, ...] = ("square", "circle", "triangle", "ring", "diamond")
    novel_shapes: tuple[str, ...] = ("cross", "star", "hexagon")
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS
    min_objects: int = 1
    max_objects: int = 4
    small_scale: tuple[float, float] = (0.14, 0.22)
    large_scale: tuple[float, float] = (0.30, 0.42)
    aspect_jitter: float = 0.12
    novel_prob: float = 0.4
    mention_all_prob: float = 0.7
    relation_prob: float = 0.6
    background_phrase_prob: float = 0.3
    there_is_prob: float = 0.15
    min_visible_fraction: float = 0.7
    min_visible_box_iou: float = 0.85
    min_contrast: float = 100.0
    colour_jitter: int = 12
    pixel_noise: float = 5.0
    next_to_gap: float = 0.08
    placement_attempts: int = 40

    def __post_init__(self) -> None:
        # Lists given by a caller (or read back from json) become tuples so the config stays hashable.
        for name in ("image_size", "max_image_size", "base_shapes", "novel_shapes", "colours", "backgrounds",
                     "small_scale", "large_scale"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        shapes = self.base_shapes + self.novel_shapes
        unknown = [s for s in shapes if s not in SHAPE_NAMES]
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; known: {', '.join(SHAPE_NAMES)}")
        if len(set(shapes)) != len(shapes):
            raise ValueError("base_shapes and novel_shapes must be distinct and disjoint")
        if not self.base_shapes:
            raise ValueError("base_shapes must not be empty (the gold set annotates them)")
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or not self.colours:
            raise ValueError(f"colours must be a non-empty subset of {', '.join(COLOURS)}; unknown: {unknown}")
        unknown = [b for b in self.backgrounds if b not in BACKGROUND_KINDS]
        if unknown or not self.backgrounds:
            raise ValueError(f"backgrounds must be a non-empty subset of {', '.join(BACKGROUND_KINDS)}")
        if min(self.n_gold, self.n_captions, self.n_val) < 0:
            raise ValueError("split sizes must be >= 0")
        if not 1 <= self.min_objects <= self.max_objects or self.max_objects >= len(NUMBER_WORDS):
            raise ValueError(f"need 1 <= min_objects <= max_objects < {len(NUMBER_WORDS)}")
        low, high = self.image_size, self.max_image_size or self.image_size
        if len(low) != 2 or len(high) != 2 or min(low) < 32 or high[0] < low[0] or high[1] < low[1]:
            raise ValueError("image_size (width, height) must be >= 32 px and <= max_image_size")
        for name in ("small_scale", "large_scale"):
            a, b = getattr(self, name)
            if not 0 < a <= b < 1:
                raise ValueError(f"{name} must be 0 < low <= high < 1")
        for name in ("novel_prob", "mention_all_prob", "relation_prob", "background_phrase_prob", "there_is_prob",
                     "min_visible_fraction", "min_visible_box_iou"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    @property
    def categories(self) -> tuple[str, ...]:
        """All shapes in category-id order (id = index + 1): base first, so base ids agree across splits."""
        return self.base_shapes + self.novel_shapes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorldConfig:
        return cls(**data)


# ------------------------------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its concept (shape), attributes, geometry as rendered, and "+1" xyxy box."""

    shape: str
    colour: str
    size: str
    rgb: RGB
    cx: float
    cy: float
    scale: float
    aspect: float
    angle: float
    box: tuple[int, int, int, int]
    visible_fraction: float

    def drawn(self) -> DrawnObject:
        return DrawnObject(self.shape, self.cx, self.cy, self.scale, self.aspect, self.angle, self.rgb)

    def mask(self, width: int, height: int) -> np.ndarray:
        """The pixels this object paints when drawn alone (its box is this mask's box)."""
        return object_mask(self.shape, self.cx, self.cy, self.scale, self.aspect, self.angle, width, height)


@dataclass(frozen=True)
class CaptionPhrase:
    """A noun phrase naming a group of objects: ``caption[start:end] == text`` and
    ``caption[head_start:head_end]`` is its head noun (a shape name or its plural).

    ``objects`` are indices into the scene's objects: every object matching the phrase's
    description, so the phrase is never ambiguous.
    """

    text: str
    start: int
    end: int
    head_start: int
    head_end: int
    shape: str
    attributes: dict[str, str]
    objects: tuple[int, ...]


@dataclass(frozen=True)
class CaptionRelation:
    """"<subject phrase> <words> <object phrase>", true for every pair of their objects' boxes."""

    subject: int
    relation: str
    object: int
    words: str


@dataclass(frozen=True)
class Scene:
    """One image of the world and its complete ground truth."""

    split: str
    index: int
    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]
    caption: str
    phrases: tuple[CaptionPhrase, ...]
    relations: tuple[CaptionRelation, ...]
    background_span: tuple[int, int] | None
    noise_seed: int
    pixel_noise: float

    @property
    def file_stem(self) -> str:
        return f"{self.split}_{self.index:06d}"

    def canvas(self) -> Canvas:
        return Canvas(self.width, self.height, self.background, tuple(o.drawn() for o in self.objects),
                      self.pixel_noise, self.noise_seed)  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "index": self.index,
            "width": self.width,
            "height": self.height,
            "background": self.background.to_dict(),
            "noise_seed": self.noise_seed,
            "pixel_noise": self.pixel_noise,
            "objects": [{**asdict(o), "rgb": list(o.rgb), "box": list(o.box)} for o in self.objects],
            "caption": self.caption,
            "phrases": [{**asdict(p), "objects": list(p.objects)} for p in self.phrases],
            "relations": [asdict(r) for r in self.relations],
            "background_span": list(self.background_span) if self.background_span else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(
            SceneObject(**{**o, "rgb": tuple(o["rgb"]), "box": tuple(o["box"])}) for o in data["objects"]
        )
        phrases = tuple(CaptionPhrase(**{**p, "objects": tuple(p["objects"])}) for p in data["phrases"])
        span = data.get("background_span")
        return cls(data["split"], int(data["index"]), int(data["width"]), int(data["height"]),
                   Background.from_dict(data["background"]), objects, data["caption"], phrases,
                   tuple(CaptionRelation(**r) for r in data["relations"]), tuple(span) if span else None,
                   int(data["noise_seed"]), float(data["pixel_noise"]))  # fmt: skip
