"""Synthetic shape data for the training tests, and a training worker run as a subprocess or under torchrun.

As a module: `make_shapes_data(folder, ...)` draws images of red squares and blue circles with PIL and
writes their gold COCO file (boxes in GLIP's "+1" convention: PIL's rectangle/ellipse [x1, y1, x2, y2]
cover pixels x1..x2 inclusive, which is exactly the "+1" box).

As a script: trains a glip-tiny student on such data with `glip_label.train.trainer.train`. The tests use
it for the SIGKILL/resume check (a separate process that can be killed) and for torchrun DDP runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPE_CLASSES = ["square", "circle"]
_COLOURS = {"square": (220, 40, 40), "circle": (40, 70, 220)}


def make_shapes_data(
    folder: Path,
    num_images: int = 4,
    size: int = 128,
    seed: int = 0,
    shapes_per_image: tuple[int, int] = (1, 2),
    min_side: int = 36,
    max_side: int = 64,
) -> Path:
    """Draw `num_images` images with 1-2 non-overlapping shapes each; returns the gold COCO json path."""
    from glip_label.formats.coco import CocoWriter
    from glip_label.records import Detections, ImageRecord

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    writer = CocoWriter(SHAPE_CLASSES)
    for index in range(num_images):
        background = rng.integers(90, 150, size=(size, size, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        boxes, labels = [], []
        count = int(rng.integers(shapes_per_image[0], shapes_per_image[1] + 1))
        for attempt in range(100):
            if len(boxes) == count:
                break
            side_w, side_h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            x1, y1 = int(rng.integers(0, size - side_w)), int(rng.integers(0, size - side_h))
            box = [x1, y1, x1 + side_w - 1, y1 + side_h - 1]
            if any(not (box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1]) for b in boxes):
                continue  # keep shapes apart so every box is unambiguous
            label = (index + len(boxes) + attempt) % len(SHAPE_CLASSES)
            if SHAPE_CLASSES[label] == "square":
                draw.rectangle(box, fill=_COLOURS["square"])
            else:
                draw.ellipse(box, fill=_COLOURS["circle"])
            boxes.append(box)
            labels.append(label)
        file_name = f"shapes_{index:03d}.png"
        image.save(folder / file_name)
        detections = Detections(np.array(boxes, dtype=np.float64), np.ones(len(boxes)), np.array(labels), SHAPE_CLASSES)
        writer.add(ImageRecord(file_name, size, size, detections))
    gold = folder / "gold.coco.json"
    data = writer.to_dict()
    for ann in data["annotations"]:
        del ann["score"]  # gold, not pseudo labels
    gold.write_text(json.dumps(data))
    return gold


def build_dataset(gold: Path, scale: int, seed: int, disable_shuffle: bool, flip_prob: float):
    from glip_label.config import get_preset
    from glip_label.data.dataset import GroundingDataset
    from glip_label.data.sources import load_source

    config = get_preset("glip-tiny").replace(min_size_test=scale, max_size_test=max(scale, 512))
    source = load_source(gold)
    dataset = GroundingDataset(
        [source], config, train=True, seed=seed, scales=(scale,), flip_prob=flip_prob, disable_shuffle=disable_shuffle
    )
    return config, dataset


def disable_dropout(model) -> None:
    """Dropout draws differ between one process and several, so loss-curve comparisons switch it off."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="gold COCO json (see make_shapes_data)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--scale", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--no-dropout", action="store_true")
    parser.add_argument("--fixed-prompt", action="store_true", help="disable_shuffle: the same prompt for all")
    parser.add_argument("--flip-prob", type=float, default=0.5)
    parser.add_argument("--item-delay", type=float, default=0.0, help="seconds of sleep per item (kill tests)")
    args = parser.parse_args(argv)

    import torch

    from glip_label.model.glip import GLIP
    from glip_label.train.config import TrainConfig
    from glip_label.train.trainer import train

    config, dataset = build_dataset(args.data, args.scale, args.seed, args.fixed_prompt, args.flip_prob)
    if args.item_delay > 0:
        original = dataset.__class__.__getitem__

        class SlowDataset(dataset.__class__):
            def __getitem__(self, key):
                time.sleep(args.item_delay)
                return original(self, key)

        dataset.__class__ = SlowDataset
    torch.manual_seed(1234)  # identical initial weights in every process and run
    model = GLIP(config)
    if args.no_dropout:
        disable_dropout(model)
    train_config = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=0,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        log_every=1,
        deterministic=args.deterministic,
        progress=False,
    )
    train(model, dataset, train_config, args.out, resume=args.resume)


if __name__ == "__main__":
    main()
