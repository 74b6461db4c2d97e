"""Training items and batches: a mix of `GroundingSource`s -> model-ready images, boxes and token maps.

Randomness (negatives, scale, flip) is drawn from a generator seeded by (seed, epoch, stream position)
of the item (`glip_label.data.samplers.SampleKey`), never from global state: an item is the same
whether it is loaded by a resumed run, by another DDP rank or by a DataLoader worker.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from glip_label.config import GLIPConfig
from glip_label.data.detection_prompt import DEFAULT_NUM_NEGATIVES, detection_prompt
from glip_label.data.images import ImageError
from glip_label.data.samplers import MixedSampler, SampleKey
from glip_label.data.samples import GroundingSample, GroundingSource, load_sample_image
from glip_label.data.token_targets import caption_positive_map
from glip_label.data.transforms import GLIPTransform, build_transform
from glip_label.model.preprocess import batch_images

log = logging.getLogger(__name__)

MAX_IMAGE_RETRIES = 10


class GroundingDataset(Dataset):
    """Mixed detection + grounding sources -> model-ready items.

    An item (for an int index or a `SampleKey`) is a dict:
      image          [3, h, w] float32, normalised, unpadded
      boxes          [G, 4] float32 "+1" xyxy in resized-image pixels
      positive_map   [G, T] float32 binary token map of each box (T = the caption's real tokens)
      input_ids      [T] int64, attention_mask [T] int64
      caption        str (for detection samples: the drawn prompt)
      meta           dict: sample_id, source, image_path, original_size (h, w), image_size (h, w),
                     flipped, epoch, position
    Plain int indices use epoch 0 and the index as position (deterministic, for inspection/eval).
    train=False uses the evaluation transform and fixed-order detection prompts.
    """

    def __init__(
        self,
        sources: Sequence[GroundingSource],
        config: GLIPConfig,
        train: bool = True,
        seed: int = 0,
        scales: Sequence[int] | None = None,
        max_size: int | None = None,
        flip_prob: float = 0.5,
        num_negatives: int = DEFAULT_NUM_NEGATIVES,
        disable_shuffle: bool = False,
        max_len: int | None = None,
    ) -> None:
        if not sources:
            raise ValueError("at least one data source is needed")
        self.sources = list(sources)
        self.config = config
        self.train = train
        self.seed = int(seed)
        self.num_negatives = num_negatives
        self.disable_shuffle = disable_shuffle or not train
        self.max_len = int(max_len or config.max_query_len)
        self.transform: GLIPTransform = build_transform(config, train, scales, max_size, flip_prob)
        self._offsets = np.cumsum([0] + [len(s.samples) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def source_sizes(self) -> list[int]:
        return [len(s.samples) for s in self.sources]

    @property
    def source_weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def sampler(self, seed: int | None = None, shuffle: bool = True) -> MixedSampler:
        """The weighted stream over this dataset's sources."""
        return MixedSampler(self.source_sizes, self.source_weights, self.seed if seed is None else seed, shuffle)

    def locate(self, sample_id: int) -> tuple[GroundingSource, GroundingSample]:
        if not 0 <= sample_id < len(self):
            raise IndexError(f"sample id {sample_id} out of range 0..{len(self) - 1}")
        source_index = bisect.bisect_right(self._offsets, sample_id) - 1
        source = self.sources[source_index]
        return source, source.samples[sample_id - self._offsets[source_index]]

    def __getitem__(self, key: int | SampleKey | Sequence[int]) -> dict[str, Any]:
        if isinstance(key, (int, np.integer)):
            key = SampleKey(int(key), self.seed, 0, int(key))
        key = SampleKey(*[int(v) for v in key])
        rng = np.random.default_rng([key.seed, key.epoch, key.position, 2])
        sample_id = key.sample_id
        for _attempt in range(MAX_IMAGE_RETRIES):
            source, sample = self.locate(sample_id)
            loaded = load_sample_image(sample)
            if not isinstance(loaded, ImageError):
                break
            log.warning("skipping %s: %s", sample.image_path, loaded.reason)
            sample_id = int(rng.integers(len(self)))  # a deterministic stand-in keeps the batch full
        else:
            raise RuntimeError(f"{MAX_IMAGE_RETRIES} unreadable images in a row (last: {sample.image_path})")
        image = loaded.image
        boxes = sample.boxes
        if sample.is_detection:
            prompt = detection_prompt(
                sample.categories or [], source.categories or [], rng,
                max_len=self.max_len, num_negatives=self.num_negatives, disable_shuffle=self.disable_shuffle,
            )  # fmt: skip
            caption, spans, boxes = prompt.caption, prompt.spans, boxes[prompt.kept]
        else:
            caption, spans = sample.caption or "", sample.spans
        if (image.width, image.height) != (sample.width, sample.height):
            # The file's stated size disagrees with the pixels (EXIF rotation, a re-saved image): boxes
            # were made for the stated size, so rescale them rather than train on shifted boxes.
            scale = np.array([image.width / sample.width, image.height / sample.height] * 2)
            boxes = boxes * scale
        transformed = self.transform(image, boxes, caption, rng)
        spans = [spans[i] for i in transformed.keep]
        tokens, positive_map, kept = caption_positive_map(caption, spans, self.max_len)
        return {
            "image": transformed.image,
            "boxes": transformed.boxes[torch.as_tensor(kept, dtype=torch.long)],
            "positive_map": positive_map,
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "caption": caption,
            "meta": {
                "sample_id": sample_id,
                "source": sample.source,
                "image_path": str(sample.image_path),
                "original_size": transformed.original_size,
                "image_size": transformed.image_size,
                "flipped": transformed.flipped,
                "epoch": key.epoch,
                "position": key.position,
            },
        }


# ---------------------------------------------------------------------------------------------- batching
@dataclass
class GroundingBatch:
    """A padded batch.

    images:         [B, 3, H, W] zero-padded (after normalisation) to multiples of size_divisibility
    image_sizes:    per image (h, w) before padding
    input_ids:      [B, T] int64, T = longest caption of the batch; attention_mask [B, T]
    boxes:          per image [G_i, 4] "+1" xyxy (resized pixels)
    positive_maps:  per image [G_i, T] binary
    """

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    boxes: list[torch.Tensor]
    positive_maps: list[torch.Tensor]
    captions: list[str]
    meta: list[dict[str, Any]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GroundingBatch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return GroundingBatch(
            move(self.images), self.image_sizes, move(self.input_ids), move(self.attention_mask),
            [move(b) for b in self.boxes], [move(p) for p in self.positive_maps], self.captions, self.meta,
        )  # fmt: skip

    def pin_memory(self) -> GroundingBatch:
        return GroundingBatch(
            self.images.pin_memory(), self.image_sizes, self.input_ids.pin_memory(),
            self.attention_mask.pin_memory(), [b.pin_memory() for b in self.boxes],
            [p.pin_memory() for p in self.positive_maps], self.captions, self.meta,
        )  # fmt: skip

    def __len__(self) -> int:
        return int(self.images.shape[0])


class GroundingCollator:
    """Pads images to the batch maximum (rounded to size_divisibility) and token tensors to the batch's T."""

    def __init__(self, size_divisibility: int = 32) -> None:
        self.size_divisibility = size_divisibility

    def __call__(self, items: Sequence[dict[str, Any]]) -> GroundingBatch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        images, image_sizes = batch_images([item["image"] for item in items], self.size_divisibility)
        num_tokens = max(int(item["input_ids"].shape[0]) for item in items)
        input_ids = torch.zeros((len(items), num_tokens), dtype=torch.long)  # [B, T], PAD id 0
        attention_mask = torch.zeros((len(items), num_tokens), dtype=torch.long)  # [B, T]
        positive_maps = []
        for i, item in enumerate(items):
            length = int(item["input_ids"].shape[0])
            input_ids[i, :length] = item["input_ids"]
            attention_mask[i, :length] = item["attention_mask"]
            padded = torch.zeros((item["positive_map"].shape[0], num_tokens), dtype=torch.float32)  # [G, T]
            padded[:, :length] = item["positive_map"]
            positive_maps.append(padded)
        return GroundingBatch(
            images, image_sizes, input_ids, attention_mask, [item["boxes"] for item in items], positive_maps,
            [item["caption"] for item in items], [item["meta"] for item in items],
        )  # fmt: skip
