"""Pixels of the synthetic world: shape masks, backgrounds and the composed image.

Every shape is a list of filled polygons drawn with PIL (no anti-aliasing), so an object's mask is
exactly the set of pixels it paints and its box can be read off the mask without any tolerance.
Rendering is a pure function of the stored scene parameters (geometry rounded as stored, a noise
seed), which is what lets tests and analysis code re-render any image of a generated world and get
the identical array back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Shapes in unit coordinates: nominal diameter 1, centred on the origin, y pointing down.
# A ring is an outer disc with an inner disc erased (fill 0), so its hole shows the background.
_CIRCLE_SEGMENTS = 64
RING_INNER_RATIO = 0.62
CROSS_HALF_ARM = 0.17
STAR_INNER_RATIO = 0.42


def _regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    angles = [math.radians(start_deg + 360.0 * k / n) for k in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _star() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = 0.5 if k % 2 == 0 else 0.5 * STAR_INNER_RATIO
        angle = math.radians(-90.0 + 36.0 * k)
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _cross() -> list[tuple[float, float]]:
    t = CROSS_HALF_ARM
    return [(-t, -0.5), (t, -0.5), (t, -t), (0.5, -t), (0.5, t), (t, t), (t, 0.5), (-t, 0.5), (-t, t), (-0.5, t),
            (-0.5, -t), (-t, -t)]  # fmt: skip


# shape -> [(polygon in unit coordinates, fill 255 to paint / 0 to erase)], drawn in order.
SHAPE_POLYGONS: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "square": [([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)], 255)],
    "circle": [(_regular(_CIRCLE_SEGMENTS, 0.5, 0.0), 255)],
    "triangle": [([(0.0, -0.5), (0.5, 0.4), (-0.5, 0.4)], 255)],
    "ring": [(_regular(_CIRCLE_SEGMENTS, 0.5, 0.0), 255), (_regular(_CIRCLE_SEGMENTS, 0.5 * RING_INNER_RATIO, 0.0), 0)],
    "star": [(_star(), 255)],
    "cross": [(_cross(), 255)],
    "diamond": [([(0.0, -0.5), (0.36, 0.0), (0.0, 0.5), (-0.36, 0.0)], 255)],
    "hexagon": [(_regular(6, 0.5, 0.0), 255)],
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPE_POLYGONS)

# Rotation (degrees) a shape may get: (base angles, +- jitter). Small for square/diamond/cross so a
# rotated square never turns into a diamond (or a cross into an "x"); free where rotation keeps the name.
SHAPE_ROTATION: dict[str, tuple[tuple[float, ...], float]] = {
    "square": ((0.0,), 12.0),
    "circle": ((0.0,), 90.0),
    "triangle": ((0.0, 180.0), 15.0),
    "ring": ((0.0,), 90.0),
    "star": ((0.0,), 36.0),
    "cross": ((0.0,), 12.0),
    "diamond": ((0.0,), 8.0),
    "hexagon": ((0.0,), 30.0),
}


def shape_extent(size: float, aspect: float) -> float:
    """Largest distance of any drawn pixel from the centre, for any rotation (a square's corner)."""
    return size * math.sqrt(0.5) * max(math.sqrt(aspect), 1.0 / math.sqrt(aspect)) + 1.0


def shape_polygons(
    shape: str, cx: float, cy: float, size: float, aspect: float, angle: float
) -> list[tuple[list[tuple[float, float]], int]]:
    """The shape's polygons in pixel coordinates: stretched by ``aspect`` (width/height), rotated, placed."""
    if shape not in SHAPE_POLYGONS:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPE_NAMES)}")
    sx, sy = size * math.sqrt(aspect), size / math.sqrt(aspect)
    cos_a, sin_a = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    placed = []
    for polygon, fill in SHAPE_POLYGONS[shape]:
        points = []
        for u, v in polygon:
            x, y = u * sx, v * sy
            points.append((cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a))
        placed.append((points, fill))
    return placed


def object_mask(
    shape: str, cx: float, cy: float, size: float, aspect: float, angle: float, width: int, height: int
) -> np.ndarray:
    """Boolean [height, width] mask of the pixels the object paints when drawn alone."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points, fill in shape_polygons(shape, cx, cy, size, aspect, angle):
        draw.polygon(points, fill=fill)
    return np.asarray(canvas) > 0


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-exact box of a mask in GLIP's "+1" convention: (x1, y1, x2, y2) with x2 the LAST painted column.

    So the box covers x2 - x1 + 1 columns. None for an empty mask.
    """
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two "+1" xyxy boxes (areas count pixels, so a 1-pixel box has area 1)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


# ------------------------------------------------------------------------------------------ backgrounds

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noisy", "striped", "checkered")


@dataclass(frozen=True)
class Background:
    """A background: ``kind`` (one of BACKGROUND_KINDS), its colours (1 for plain, 2 otherwise),
    ``angle`` (gradient/stripe direction, degrees), ``period`` (stripe/check/noise cell size, px) and
    ``seed`` (noise texture)."""

    kind: str
    colours: tuple[RGB, ...]
    angle: float = 0.0
    period: int = 16
    seed: int = 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "colours": [list(c) for c in self.colours], "angle": self.angle,
                "period": self.period, "seed": self.seed}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Background:
        return cls(data["kind"], tuple(tuple(int(v) for v in c) for c in data["colours"]), float(data["angle"]),
                   int(data["period"]), int(data["seed"]))  # fmt: skip


def render_background(background: Background, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] background image."""
    colours = np.asarray(background.colours, dtype=np.float64)  # [C, 3]
    if background.kind == "plain":
        return np.broadcast_to(colours[0].round().astype(np.uint8), (height, width, 3)).copy()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)  # [H, W] each
    theta = math.radians(background.angle)
    along = xs * math.cos(theta) + ys * math.sin(theta)  # [H, W] coordinate along the pattern direction
    if background.kind == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-9)
    elif background.kind == "striped":
        t = (np.floor(along / background.period) % 2).astype(np.float64)
    elif background.kind == "checkered":
        t = ((xs // background.period + ys // background.period) % 2).astype(np.float64)
    elif background.kind == "noisy":
        # A coarse random field upsampled bilinearly: blotches about `period` px across.
        rng = np.random.default_rng(background.seed)
        coarse = rng.random((height // background.period + 2, width // background.period + 2)).astype(np.float32)
        field = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR)
        t = np.asarray(field, dtype=np.float64)
    else:
        raise ValueError(f"unknown background kind {background.kind!r}; known: {', '.join(BACKGROUND_KINDS)}")
    t = t[..., None]  # [H, W, 1]
    image = colours[0] * (1.0 - t) + colours[1] * t  # [H, W, 3]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ composition


@dataclass(frozen=True)
class DrawnObject:
    """What the renderer needs of one object: its geometry and fill colour."""

    shape: str
    cx: float
    cy: float
    size: float
    aspect: float
    angle: float
    rgb: RGB

    def mask(self, width: int, height: int) -> np.ndarray:
        return object_mask(self.shape, self.cx, self.cy, self.size, self.aspect, self.angle, width, height)


@dataclass(frozen=True)
class Canvas:
    """A full picture description: size, background, objects in drawing order, pixel noise."""

    width: int
    height: int
    background: Background
    objects: tuple[DrawnObject, ...] = field(default_factory=tuple)
    pixel_noise: float = 0.0
    noise_seed: int = 0


def render_canvas(canvas: Canvas) -> np.ndarray:
    """uint8 [height, width, 3]: background, objects painted in order (later on top), Gaussian pixel noise.

    The noise keeps flat colour regions from being trivially separable by exact pixel values; it
    never moves a box because boxes come from the masks, not from the noisy pixels.
    """
    image = render_background(canvas.background, canvas.width, canvas.height)
    for obj in canvas.objects:
        image[obj.mask(canvas.width, canvas.height)] = np.asarray(obj.rgb, dtype=np.uint8)
    if canvas.pixel_noise > 0:
        rng = np.random.default_rng(canvas.noise_seed)
        noise = rng.normal(0.0, canvas.pixel_noise, size=image.shape)
        image = np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)
    return image


def draw_boxes(image: np.ndarray | Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str],
               scale: int = 3) -> Image.Image:
    """An enlarged copy with "+1" xyxy boxes and labels drawn, for looking at a world by eye."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    picture = picture.convert("RGB").resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    for box, label in zip(boxes, labels, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        # The box covers pixels x1..x2 inclusive, i.e. [x1, x2 + 1) in continuous coordinates.
        rect = (x1 * scale, y1 * scale, (x2 + 1) * scale - 1, (y2 + 1) * scale - 1)
        draw.rectangle(rect, outline=(255, 0, 255), width=2)
        draw.text((rect[0] + 3, rect[1] + 2), label, fill=(255, 0, 255))
    return picture
