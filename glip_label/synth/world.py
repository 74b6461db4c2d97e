"""The synthetic grounding world: configuration, scene sampling and captions.

GLIP's self-training (glip-spec §7) needs three things that real data would give: a small gold set with
boxes for a BASE vocabulary, a large caption corpus whose captions also name concepts the gold set never
boxes (NOVEL), and a held-out set boxed for everything. This module samples such scenes: coloured shapes
(the detection category is the SHAPE name) on varied backgrounds, and captions that name some of them
with attributes and spatial relations, every phrase and relation true of the drawn boxes.

Determinism: each image has its own generator seeded by (world seed, split, image index), so a world
is a pure function of its config, and image k of a split does not change when another split's count
or a later image changes.

Box convention: GLIP's "+1" xyxy, pixel-exact from the drawn mask: x1/y1 are the first painted
column/row and x2/y2 the LAST painted column/row, so a box is x2 - x1 + 1 pixels wide. Boxes are
amodal (the whole shape, as drawn alone); occlusion is limited so that every object keeps at least
``min_visible_fraction`` of its pixels and its visible pixels still span nearly the same box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from glip_label.synth.render import (
    BACKGROUND_KINDS,
    RGB,
    SHAPE_NAMES,
    SHAPE_ROTATION,
    Background,
    Canvas,
    DrawnObject,
    box_iou,
    mask_box,
    object_mask,
    shape_extent,
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
# Relation keys (as stored) and the words a caption may use for each.
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
    "next to": ("next to",),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Words for background kinds in "... on a striped background".
BACKGROUND_WORDS: dict[str, str] = {
    "plain": "plain",
    "gradient": "gradient",
    "noisy": "noisy",
    "striped": "striped",
    "checkered": "checkered",
}
# (attributes named before the noun, weight): which descriptor a phrase uses, e.g. ("colour",) → "a red ring".
DESCRIPTOR_LEVELS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.2),
    (("colour",), 0.4),
    (("size",), 0.1),
    (("size", "colour"), 0.3),
)
# Phrases joined in a caption are separated by one of these (never by words that could be a relation).
PHRASE_SEPARATORS: tuple[str, ...] = (", ", " and ")


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


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


# ------------------------------------------------------------------------------------------ relations


def relation_holds(relation: str, subject_box: Sequence[float], object_box: Sequence[float],
                   image_size: tuple[int, int], next_to_gap: float = 0.08) -> bool:
    """Whether "<subject> <relation> <object>" is true of two "+1" xyxy boxes.

    Directional relations demand full separation (the subject's last column before the object's first);
    "next to" means the boxes overlap or their gap along both axes is at most ``next_to_gap`` of the
    image's shorter side. ``image_size`` is (width, height).
    """
    sx1, sy1, sx2, sy2 = subject_box
    ox1, oy1, ox2, oy2 = object_box
    if relation == "left of":
        return sx2 < ox1
    if relation == "right of":
        return ox2 < sx1
    if relation == "above":
        return sy2 < oy1
    if relation == "below":
        return oy2 < sy1
    if relation == "next to":
        dx = max(0.0, ox1 - sx2 - 1, sx1 - ox2 - 1)
        dy = max(0.0, oy1 - sy2 - 1, sy1 - oy2 - 1)
        return max(dx, dy) <= next_to_gap * min(image_size)
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATION_WORDS)}")


# ------------------------------------------------------------------------------------------ sampling


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


# ------------------------------------------------------------------------------------------ captions


@dataclass
class _Group:
    attributes: tuple[str, ...]  # which of size/colour the phrase names
    members: list[int]


@dataclass
class _CaptionBuilder:
    """Appends text while remembering where each phrase landed."""

    text: str = ""
    phrases: list[CaptionPhrase] = field(default_factory=list)

    def add(self, words: str) -> None:
        self.text += words

    def add_phrase(self, scene_objects: Sequence[SceneObject], group: _Group) -> int:
        first = scene_objects[group.members[0]]
        attributes = {name: getattr(first, name) for name in group.attributes}
        adjectives = [attributes[name] for name in ("size", "colour") if name in attributes]
        n = len(group.members)
        noun = first.shape if n == 1 else plural(first.shape)
        following = (adjectives + [noun])[0]
        determiner = ("an" if following[0] in "aeiou" else "a") if n == 1 else NUMBER_WORDS[n]
        start = len(self.text)
        text = " ".join([determiner, *adjectives, noun])
        self.text += text
        end = len(self.text)
        self.phrases.append(CaptionPhrase(text, start, end, end - len(noun), end, first.shape, attributes,
                                          tuple(sorted(group.members))))  # fmt: skip
        return len(self.phrases) - 1


def _matches(obj: SceneObject, reference: SceneObject, attributes: tuple[str, ...]) -> bool:
    return obj.shape == reference.shape and all(getattr(obj, a) == getattr(reference, a) for a in attributes)


def _group_objects(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[_Group]:
    """Partition the objects into phrase groups: a group is EVERY object fitting its description.

    An object whose sampled description also fits an object already in another group is described fully
    (size + colour + shape); identical objects then always share a group ("two small red squares").
    """
    levels = [level for level, _ in DESCRIPTOR_LEVELS]
    weights = np.array([w for _, w in DESCRIPTOR_LEVELS])
    order = [int(i) for i in rng.permutation(len(objects))]
    assigned: set[int] = set()
    groups = []
    for index in order:
        if index in assigned:
            continue
        attributes = levels[int(rng.choice(len(levels), p=weights / weights.sum()))]
        members = [j for j, obj in enumerate(objects) if _matches(obj, objects[index], attributes)]
        if assigned.intersection(members):
            attributes = ("size", "colour")
            members = [j for j, obj in enumerate(objects) if _matches(obj, objects[index], attributes)]
        assigned.update(members)
        groups.append(_Group(attributes, members))
    return groups


def _true_relations(subject: _Group, obj: _Group, objects: Sequence[SceneObject], image_size: tuple[int, int],
                    config: WorldConfig) -> list[str]:
    return [
        relation for relation in RELATION_WORDS
        if all(relation_holds(relation, objects[a].box, objects[b].box, image_size, config.next_to_gap)
               for a in subject.members for b in obj.members)
    ]  # fmt: skip


def make_caption(rng: np.random.Generator, objects: Sequence[SceneObject], background: Background,
                 image_size: tuple[int, int], config: WorldConfig, mention_all: bool
                 ) -> tuple[str, tuple[CaptionPhrase, ...], tuple[CaptionRelation, ...], tuple[int, int] | None]:
    """A caption naming the objects (all, or a random non-empty subset of phrase groups).

    Shape: ["there is/are "] clause (", " clause)* [" and " clause] [" on a <kind> background"] "."
    where a clause is a phrase or "<phrase> <relation> <phrase>". Between two phrases there is only
    ever a separator of PHRASE_SEPARATORS or a relation's words, which is what lets a reader (and the
    tests) recover every stated relation from the phrase spans.
    """
    groups = _group_objects(rng, objects)
    if not mention_all and len(groups) > 1:
        keep = int(rng.integers(1, len(groups) + 1))
        groups = [groups[int(i)] for i in sorted(rng.permutation(len(groups))[:keep])]
    clauses: list[tuple[_Group, str, _Group] | tuple[_Group]] = []
    position = 0
    while position < len(groups):
        if position + 1 < len(groups) and rng.random() < config.relation_prob:
            subject, obj = groups[position], groups[position + 1]
            relations = _true_relations(subject, obj, objects, image_size, config)
            if relations:
                clauses.append((subject, str(rng.choice(relations)), obj))
                position += 2
                continue
        clauses.append((groups[position],))
        position += 1

    builder = _CaptionBuilder()
    if rng.random() < config.there_is_prob:
        builder.add("there is " if len(clauses[0][0].members) == 1 else "there are ")
    relations: list[CaptionRelation] = []
    for k, clause in enumerate(clauses):
        if k > 0:
            builder.add(" and " if k == len(clauses) - 1 else ", ")
        subject_id = builder.add_phrase(objects, clause[0])
        if len(clause) == 3:
            words = str(rng.choice(RELATION_WORDS[clause[1]]))
            builder.add(f" {words} ")
            object_id = builder.add_phrase(objects, clause[2])
            relations.append(CaptionRelation(subject_id, clause[1], object_id, words))
    background_span = None
    if rng.random() < config.background_phrase_prob:
        builder.add(" on ")
        start = len(builder.text)
        builder.add(f"a {BACKGROUND_WORDS[background.kind]} background")
        background_span = (start, len(builder.text))
    builder.add(".")
    return builder.text, tuple(builder.phrases), tuple(relations), background_span


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
