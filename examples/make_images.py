"""Draw the synthetic example images in examples/images/more/.

They exist so that the example folder has a sub-folder (recursive image discovery), more than one file
format (PNG and JPEG) and a palette-mode image (colour conversion), without shipping anyone else's
photos. Everything is drawn from fixed coordinates, so running this again gives the same pixels.

    python examples/make_images.py            # rewrites examples/images/more/
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

MORE_DIR = Path(__file__).resolve().parent / "images" / "more"


def draw_shapes() -> Image.Image:
    """Three primitives on white: the easiest possible detection prompt ("circle. square. triangle.")."""
    image = Image.new("RGB", (320, 240), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 60, 120, 160), fill=(220, 40, 40))  # red circle
    draw.rectangle((140, 70, 220, 150), fill=(40, 80, 220))  # blue square
    draw.polygon([(250, 150), (310, 150), (280, 90)], fill=(40, 170, 60))  # green triangle
    return image


def draw_house() -> Image.Image:
    """A child's drawing of a house, a tree and the sun: a scene with several nameable objects."""
    image = Image.new("RGB", (400, 300), (135, 200, 240))  # sky
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 220, 399, 299), fill=(80, 170, 70))  # grass
    draw.ellipse((310, 20, 370, 80), fill=(250, 210, 40))  # sun
    draw.rectangle((90, 140, 210, 240), fill=(180, 110, 60))  # house wall
    draw.polygon([(80, 140), (220, 140), (150, 80)], fill=(190, 40, 40))  # roof
    draw.rectangle((135, 190, 165, 240), fill=(90, 50, 20))  # door
    draw.rectangle((105, 160, 130, 182), fill=(220, 240, 255))  # window
    draw.rectangle((172, 160, 197, 182), fill=(220, 240, 255))  # window
    draw.rectangle((281, 170, 295, 245), fill=(110, 70, 30))  # tree trunk
    draw.ellipse((250, 110, 326, 186), fill=(30, 120, 40))  # tree crown
    return image


def draw_balloons() -> Image.Image:
    """Balloons on strings, saved as a palette ("P") image so that readers must convert it to RGB."""
    image = Image.new("RGB", (240, 320), (245, 245, 235))
    draw = ImageDraw.Draw(image)
    balloons = [((30, 40, 100, 125), (230, 60, 60)), ((95, 20, 165, 105), (60, 120, 230)),
                ((150, 55, 220, 140), (240, 190, 40))]
    for (x0, y0, x1, y1), colour in balloons:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
        knot_x = (x0 + x1) // 2
        draw.line([(knot_x, y1), (120, 290)], fill=(60, 60, 60), width=2)  # string to one hand
    return image.quantize(colors=16, dither=Image.Dither.NONE)


def main() -> None:
    MORE_DIR.mkdir(parents=True, exist_ok=True)
    draw_shapes().save(MORE_DIR / "shapes.png", optimize=True)
    draw_house().save(MORE_DIR / "house.jpg", quality=90)
    draw_balloons().save(MORE_DIR / "balloons.png", optimize=True)


if __name__ == "__main__":
    main()
