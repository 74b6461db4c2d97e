"""Pictures of detections, for previews and spot checks of a labelling run (PIL ImageDraw only).

Colours are a pure function of the class index (golden-ratio hue steps), so a class keeps its colour
across images and runs, and neighbouring indices get very different hues. Readability on any
background comes from a dark outline around every box and from label text drawn on a filled tag in
the class colour, in black or white, whichever contrasts more.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from glip_label.io import atomic_write_bytes
from glip_label.records import Detections, ImageRecord

_GOLDEN = 0.6180339887498949


def class_colour(index: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour for a class index."""
    hue = (0.11 + int(index) * _GOLDEN) % 1.0
    value = 0.95 if int(index) % 2 == 0 else 0.8  # alternate brightness: more distinct when hues come close
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(r * 255), int(g * 255), int(b * 255)


def class_colour_hex(index: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*class_colour(index))


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    detections: Detections | np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
    names: Sequence[str] | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Draw boxes with "name score" tags on a copy of ``image`` (RGB); the input is not modified.

    ``detections``: a `Detections` (its labels, scores and phrases are used unless overridden) or an
    [N, 4] array of "+1" xyxy pixel boxes. ``labels``: per-box class indices (colour and name lookup;
    default 0). ``names``: class names indexed by label (default: the label number). ``scores``: per-box
    scores (default: none shown). Line width and font size scale with the image when not given.
    """
    if isinstance(detections, Detections):
        boxes = detections.boxes
        labels = detections.labels if labels is None else labels
        scores = detections.scores if scores is None else scores
        names = detections.phrases if names is None else names
    else:
        boxes = np.asarray(detections, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != n or (scores is not None and len(scores) != n):
        raise ValueError(f"{n} boxes but {len(labels)} labels / {None if scores is None else len(scores)} scores")

    canvas = image.convert("RGB")  # a copy, also when the input is already RGB
    draw = ImageDraw.Draw(canvas)
    short_side = min(canvas.size)
    line_width = line_width or max(2, round(short_side / 300))
    font = _font(font_size or max(11, round(short_side / 45)))
    pad = max(1, line_width // 2 + 1)

    # Draw low scores first so the confident boxes (and their tags) end up on top.
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable") if scores is not None else range(n)
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        colour = class_colour(int(labels[i]))
        # Colour band (drawn inwards from the box edge) between two dark rims: visible on light and dark.
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
        if x2 - x1 > 2 * line_width and y2 - y1 > 2 * line_width:
            inner = (x1 + line_width, y1 + line_width, x2 - line_width, y2 - line_width)
            draw.rectangle(inner, outline=(0, 0, 0), width=1)
        label = int(labels[i])
        name = names[label] if names is not None and 0 <= label < len(names) else str(label)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
        tag_x = min(max(0.0, x1), max(0.0, canvas.width - tag_w))
        tag_y = y1 - tag_h if y1 - tag_h >= 0 else y1  # above the box, or inside it at the top edge
        draw.rectangle((tag_x, tag_y, tag_x + tag_w, tag_y + tag_h), fill=colour, outline=(0, 0, 0))
        draw.text((tag_x + pad - left, tag_y + pad - top), text, fill=_text_colour(colour), font=font)
    return canvas


def save_visualizations(
    records: Iterable[ImageRecord],
    image_root: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    limit: int | None = None,
    quality: int = 90,
) -> list[Path]:
    """Draw up to ``limit`` records onto their images and save JPEGs under ``out_dir`` (sub-folders kept).

    Images are opened the same way the labeller opened them (EXIF orientation applied), so boxes land
    where the model saw the objects. Unreadable images are skipped. Returns the written paths.
    """
    from glip_label.data.images import LoadedImage, load_image

    out_dir = Path(out_dir)
    written = []
    for record in records:
        if limit is not None and len(written) >= limit:
            break
        loaded = load_image(Path(image_root), record.file_name, max_pixels=None)
        if not isinstance(loaded, LoadedImage):
            continue
        picture = draw_detections(loaded.image, record.detections, names=names)
        rel = PurePosixPath(record.file_name.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{record.file_name!r}: image file names must be relative paths inside the image root")
        target = out_dir / rel.with_suffix(".jpg")
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        atomic_write_bytes(target, buffer.getvalue())
        written.append(target)
    return written
