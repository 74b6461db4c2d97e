"""What goes into GLIP and what comes out of it: prompts to tokens, pictures to a batch, head outputs to boxes.

Everything here is the network's surroundings, with no weights: `GLIPPredictor` (glip_label/predictor.py)
runs the network between `images_to_batch` / `prompt_chunks` + `chunk_tokens` and `decode` +
`to_detections`, for `predict`, `predict_grounding` and, through `predict`, the evaluation of
glip_label/train/evaluate.py. The steps are those of the official evaluation path of microsoft/GLIP:

- prompt -> tokens -> positive map: `maskrcnn_benchmark/engine/inference.py` `create_queries_and_maps`
  (the class-list prompt, built by glip_label/text/prompts.py) and `create_positive_dict`, with
  `create_positive_map_label_to_token_from_positive_map` (label j+1 for phrase j); vocabularies over the
  256-token text limit are split into chunks run one after another, as the official LVIS evaluation does
  (`create_queries_and_maps_from_dataset` with TEST.CHUNKED_EVALUATION);
- picture -> resized, normalised, padded batch: `maskrcnn_benchmark/data/transforms/build.py`
  `build_transforms(is_train=False)` and `maskrcnn_benchmark/structures/image_list.py` `to_image_list`;
- head outputs -> boxes: `maskrcnn_benchmark/modeling/rpn/anchor_generator.py` (anchors),
  `maskrcnn_benchmark/modeling/rpn/inference.py` `ATSSPostProcessor.forward` (scores, decoding, NMS, cap),
  then `maskrcnn_benchmark/structures/bounding_box.py` `BoxList.resize` back to the picture's pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from glip_label.config import GLIPConfig
from glip_label.model.anchors import grid_anchors
from glip_label.model.head import HeadOutputs
from glip_label.model.postprocess import atss_postprocess, resize_boxes
from glip_label.model.preprocess import batch_images, image_to_tensor
from glip_label.records import Detections
from glip_label.text.prompts import (
    Prompt,
    TokenizedPrompt,
    build_detection_prompt,
    chunk_phrases,
    parse_prompt,
    prompt_token_count,
    tokenize,
)

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray
PromptInput = str | Sequence[str] | Prompt
Spans = Sequence[Sequence[tuple[int, int]]]


# ------------------------------------------------------------------------------------------------ prompts
def parse_user_prompt(prompt: PromptInput, spans: Spans | None = None) -> Prompt:
    """Any prompt form `predict` takes (text, list of names, caption with spans, Prompt) as one Prompt."""
    return parse_prompt(list(prompt) if isinstance(prompt, (list, tuple)) else prompt, spans)


def prompt_key(prompt: Prompt) -> tuple:
    """A hashable identity of a prompt (its text and phrase spans), for caching its text features."""
    return (prompt.text, tuple(tuple(map(tuple, s)) for s in prompt.spans))


def prompt_chunks(full: Prompt, max_len: int, is_caption: bool) -> list[tuple[Prompt, list[int]]]:
    """The prompt as chunks that each fit the text limit: (chunk prompt, index in `full` of each of its phrases).

    A class list longer than `max_len` tokens is split into class lists that fit, run one after another and
    merged, as the official LVIS evaluation does. A caption cannot be split without changing what its
    phrases mean, so a caption over the limit is refused.
    """
    if prompt_token_count(full.text) <= max_len:
        return [(full, list(range(len(full.phrases))))]
    if is_caption:
        raise ValueError(
            f"caption is {prompt_token_count(full.text)} tokens long, over the {max_len}-token text limit; "
            "shorten it or split it into several captions"
        )
    groups = chunk_phrases(full.phrases, max_len=max_len)
    chunks = [(build_detection_prompt([full.phrases[i] for i in group]), group) for group in groups]
    log.info("prompt of %d phrases split into %d chunks of <= %d tokens", len(full.phrases), len(chunks), max_len)
    return chunks


def chunk_tokens(prompt: Prompt, max_len: int, pad_prompt: bool) -> TokenizedPrompt:
    """One prompt chunk's tokens; `pad_prompt` pads to `max_len` as the official code does (same outputs)."""
    return tokenize(prompt.text, max_len=max_len, pad_to=max_len if pad_prompt else None)


def batch_tokens(tokens: Sequence[TokenizedPrompt]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several prompts as one text batch: input ids and attention mask [B, T], padded to the longest and masked.

    The padding is masked everywhere it could matter, so each prompt's text features are those it has alone.
    """
    length = max(t.num_tokens for t in tokens)
    input_ids = torch.zeros(len(tokens), length, dtype=torch.long)
    attention = torch.zeros(len(tokens), length, dtype=torch.long)
    for i, t in enumerate(tokens):
        input_ids[i, : t.num_tokens] = t.input_ids[: t.num_tokens]
        attention[i, : t.num_tokens] = 1
    return input_ids, attention


# ------------------------------------------------------------------------------------------------ pictures
def to_pil_rgb(image: ImageInput) -> Image.Image:
    """Paths, PIL images and HxW(x3/x4) uint8 arrays (RGB order) to an RGB PIL image."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (got {image.dtype})")
        return Image.fromarray(image).convert("RGB")
    raise TypeError(f"unsupported image type {type(image).__name__}; give a path, a PIL image or a uint8 array")


def images_to_batch(images: Sequence[Image.Image], config: GLIPConfig) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """RGB pictures as the network's input: resized to the test size, normalised, zero-padded into one batch
    [B, 3, H, W] on the CPU; also each picture's resized, unpadded (h, w)."""
    tensors = [image_to_tensor(im, config.min_size_test, config.max_size_test, config.pixel_mean, config.pixel_std)
               for im in images]
    return batch_images(tensors, config.size_divisibility)


# ------------------------------------------------------------------------------------------------ outputs
def cat_head_outputs(parts: Sequence[HeadOutputs]) -> HeadOutputs:
    """Head outputs of consecutive image slices joined along the batch axis (a single part is returned as is)."""
    if len(parts) == 1:
        return parts[0]
    return HeadOutputs(
        box_regression=[torch.cat(levels) for levels in zip(*(p.box_regression for p in parts), strict=True)],
        centerness=[torch.cat(levels) for levels in zip(*(p.centerness for p in parts), strict=True)],
        token_logits=[torch.cat(levels) for levels in zip(*(p.token_logits for p in parts), strict=True)],
    )


def image_outputs(outputs: HeadOutputs, index: int) -> HeadOutputs:
    """The head outputs of one image of a batch (a batch of one, views of the batch's tensors)."""
    return HeadOutputs(
        box_regression=[x[index : index + 1] for x in outputs.box_regression],
        centerness=[x[index : index + 1] for x in outputs.centerness],
        token_logits=[x[index : index + 1] for x in outputs.token_logits],
    )


def batch_anchors(outputs: HeadOutputs, config: GLIPConfig) -> list[torch.Tensor]:
    """The anchors of a batch's padded feature maps: the same for every image and prompt chunk of the batch."""
    return grid_anchors(outputs.feature_sizes, config.anchor_strides, config.anchor_sizes,
                        device=outputs.centerness[0].device, dtype=torch.float32)


def decode(
    outputs: HeadOutputs,
    image_sizes: Sequence[tuple[int, int]],
    label_to_token: Mapping[int, Sequence[int]],
    num_phrases: int,
    config: GLIPConfig,
    anchors: list[torch.Tensor] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Boxes of a batch whose images share one prompt: anchors, then the official ATSS post-processing.

    Returns per image {"boxes": [n, 4] xyxy in resized-image pixels, "scores": [n], "labels": [n] (1-based
    labels of the prompt's phrases)}. Scores, decoding and NMS run on fp32 copies of the head outputs, also
    under half precision (the official code's AMP keeps them in fp32). The class-score matrix is as wide as
    the official one (DYHEAD.NUM_CLASSES - 1 columns) or the number of phrases, whichever is larger.
    anchors: `batch_anchors` of these outputs, when the caller decodes the same batch more than once.
    """
    if anchors is None:
        anchors = batch_anchors(outputs, config)
    return atss_postprocess(
        [x.float() for x in outputs.box_regression],
        [x.float() for x in outputs.centerness],
        [x.float() for x in outputs.token_logits],
        anchors,
        image_sizes,
        label_to_token,
        num_classes=max(config.num_class_columns, num_phrases),
        pre_nms_thresh=config.pre_nms_thresh,
        pre_nms_top_n=config.pre_nms_top_n,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
    )


def to_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    resized_hw: tuple[int, int],
    original_wh: tuple[int, int],
    phrases: list[str],
) -> Detections:
    """CPU boxes in resized-image pixels, their scores and 0-based phrase labels as `Detections` in the
    original picture's pixels (the official `BoxList.resize`, no +-1 adjustment)."""
    height, width = resized_hw
    boxes = resize_boxes(boxes, (width, height), original_wh)
    return Detections(boxes.double().numpy(), scores.double().numpy(), labels.numpy(), phrases)


__all__ = [
    "ImageInput",
    "PromptInput",
    "batch_anchors",
    "batch_tokens",
    "cat_head_outputs",
    "chunk_tokens",
    "decode",
    "image_outputs",
    "images_to_batch",
    "parse_user_prompt",
    "prompt_chunks",
    "prompt_key",
    "to_detections",
    "to_pil_rgb",
]
