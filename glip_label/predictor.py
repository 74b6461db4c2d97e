"""The user-facing predictor: `load_model(...)` and `GLIPPredictor.predict(images, prompt)`.

Ties the parts together in the official evaluation order (microsoft/GLIP
`maskrcnn_benchmark/engine/inference.py` `inference`, the model's `GeneralizedVLRCNN.forward`): prompt ->
tokens -> BERT (once per prompt, cached), images -> resize/normalise/pad -> backbone + head, ATSS
post-processing with class-aware NMS, boxes back to original pixels. What happens before and after the
network is glip_label/processor.py; this module runs the network between the two, through one forward
path (`_forward`, or `_encode_images` + `_decode` when features are reused) and one decode
(`processor.decode`) for `predict`, `predict_grounding` and the evaluation (glip_label/train/evaluate.py,
which calls `predict`). Vocabularies longer than the 256-token text limit are split into prompt chunks
that each fit, run separately and merged (as the official LVIS evaluation does).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from glip_label.config import GLIPConfig, resolve_config
from glip_label.model.glip import GLIP, VisualFeatures
from glip_label.model.head import HeadOutputs
from glip_label.model.language import TextFeatures
from glip_label.model.postprocess import ml_nms
from glip_label.model.preprocess import get_resized_size
from glip_label.precision import HALF_DTYPES, check_device, parse_dtype
from glip_label.processor import (
    ImageInput,
    PromptInput,
    batch_anchors,
    batch_tokens,
    cat_head_outputs,
    chunk_tokens,
    decode,
    image_outputs,
    images_to_batch,
    parse_user_prompt,
    prompt_chunks,
    prompt_key,
    to_detections,
    to_pil_rgb,
)
from glip_label.records import Detections
from glip_label.text.prompts import Prompt, positive_map_label_to_token, tokenize

log = logging.getLogger(__name__)


@dataclass
class EncodedPrompt:
    """A prompt chunk ready for the head: its text features and which tokens make up each phrase.

    label_to_token: 1-based label within this chunk -> token positions
    phrase_index:   chunk label j+1 -> index of the phrase in the user's full prompt
    """

    prompt: Prompt
    text: TextFeatures
    label_to_token: dict[int, list[int]]
    phrase_index: list[int]


class GLIPPredictor:
    """A loaded GLIP with its tokenizer and inference settings.

    `pad_prompt=True` and `cache_text=False` reproduce the official code's behaviour exactly (prompt padded
    to 256 tokens, re-encoded for every image); the defaults skip both, which leaves outputs unchanged
    because PAD tokens are masked everywhere they could matter (tested against the parity fixture).
    `reuse_features=False` runs the whole network once per prompt chunk, as the official code does; the
    default computes the image's text-independent features once and reuses them for every chunk (equal
    outputs, tested), which is what makes vocabularies of hundreds of classes affordable.
    """

    def __init__(
        self,
        model: GLIP,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        source: str | None = None,
        pad_prompt: bool = False,
        cache_text: bool = True,
        reuse_features: bool = True,
    ) -> None:
        # fp16/bf16 run as the official AMP inference: fp32 weights, autocast (`_autocast`) for the forward.
        dtype = parse_dtype(dtype)
        self.model = model.to(device=device, dtype=torch.float32).eval()
        self.config: GLIPConfig = model.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source
        self.pad_prompt = pad_prompt
        self.cache_text = cache_text
        self.reuse_features = reuse_features
        self._text_cache: dict[tuple, list[EncodedPrompt]] = {}

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: PromptInput, spans: Sequence[Sequence[tuple[int, int]]] | None = None
                      ) -> list[EncodedPrompt]:
        """Encode a prompt once (cached), split into chunks that fit the text limit when it is a class list."""
        full = parse_user_prompt(prompt, spans)
        key = prompt_key(full)
        if self.cache_text and key in self._text_cache:
            return self._text_cache[key]
        limit = self.config.max_query_len
        encoded = []
        for chunk, phrase_index in prompt_chunks(full, limit, is_caption=spans is not None):
            tokens = chunk_tokens(chunk, limit, self.pad_prompt)
            text = self._encode_text(tokens.input_ids[None], tokens.attention_mask[None])
            label_to_token = positive_map_label_to_token(chunk, tokens, max_len=limit)
            encoded.append(EncodedPrompt(chunk, text, label_to_token, phrase_index))
        if self.cache_text:
            self._text_cache[key] = encoded
        return encoded

    def _encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """BERT on token ids [B, T] (moved to the model's device), under the predictor's precision."""
        with torch.inference_mode(), self._autocast():
            return self.model.encode_text(input_ids.to(self.device), attention_mask.to(self.device))

    # ------------------------------------------------------------------ images
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB pictures as the network's input batch on the predictor's device, and their resized (h, w)."""
        batch, sizes = images_to_batch(images, self.config)
        if self.device.type == "cuda":  # page-locked, so that the copy is asynchronous (no host sync)
            return batch.pin_memory().to(self.device, non_blocking=True), sizes
        return batch.to(self.device), sizes

    def _autocast(self) -> torch.autocast:
        """Half precision as the official code's AMP: weights and normalisations in fp32, matmuls and convs in
        fp16/bf16, the model's fp32 islands (DCN, softmaxes; scores, decoding and NMS after it) as they are.

        Why not a half-cast model: its residual stream and norms in bf16 lost too much (GLIP-T on the parity
        fixture: 19 of 47 official boxes above 0.3 found again within 0.02). fp32 disables autocast: exact.
        """
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype in HALF_DTYPES)

    def _image_slices(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """The padded batch as the network sees it: whole off CPU, on CPU one image at a time.

        A CPU gains nothing from a larger batch (its cores are already busy on one image) and loses
        cache locality on the bigger tensors: measured at 800x1200, batch 4 ran 15% slower per image
        than batch 1. Slicing the padded batch keeps the batch's padding, so the boxes are those of the
        batched call (to the last bits of a float); prompt encoding, decoding and post-processing are
        still shared by the batch.
        """
        if self.device.type != "cpu" or batch.shape[0] == 1:
            return [batch]
        return [batch[i : i + 1] for i in range(batch.shape[0])]

    # ------------------------------------------------------------------ the forward path
    def _forward(self, batch: torch.Tensor, text: TextFeatures, sliced: bool = True) -> HeadOutputs:
        """The whole network on a padded batch for one prompt chunk (the official, per-chunk computation).

        `sliced=False` runs the batch whole on every device: `predict_grounding` does, since its text
        features hold one caption per image (a batch that `_image_slices` would have to slice as well).
        """
        slices = self._image_slices(batch) if sliced else [batch]
        with self._autocast():
            return cat_head_outputs([self.model(images, text) for images in slices])

    def _encode_images(self, batch: torch.Tensor) -> list[VisualFeatures]:
        """The batch's text-independent features, once for all chunks (held for one batch only)."""
        with self._autocast():
            return [self.model.encode_images(images) for images in self._image_slices(batch)]

    def _decode(self, visual: list[VisualFeatures], text: TextFeatures) -> HeadOutputs:
        """One chunk's head outputs from `_encode_images` features: equal to `_forward(batch, text)`."""
        with self._autocast():
            return cat_head_outputs([self.model.decode(part, text) for part in visual])

    @torch.inference_mode()
    def _predict_batch(
        self, images: Sequence[Image.Image], chunks: list[EncodedPrompt], phrases: list[str]
    ) -> list[Detections]:
        c = self.config
        batch, image_sizes = self.preprocess(images)
        visual = self._encode_images(batch) if self.reuse_features else None
        per_image: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in images]
        anchors = None  # one batch, one set of feature maps: built for the first chunk, reused for the others
        for chunk in chunks:
            text = chunk.text
            if not self.cache_text:  # official behaviour: the prompt is encoded again for every image
                tokens = chunk_tokens(chunk.prompt, c.max_query_len, self.pad_prompt)
                text = self._encode_text(tokens.input_ids[None], tokens.attention_mask[None])
            outputs = self._forward(batch, text) if visual is None else self._decode(visual, text)
            anchors = batch_anchors(outputs, c) if anchors is None else anchors
            results = decode(outputs, image_sizes, chunk.label_to_token, len(chunk.prompt.phrases), c, anchors)
            to_phrase = torch.tensor(chunk.phrase_index, dtype=torch.long)
            for i, result in enumerate(results):
                labels = to_phrase[result["labels"].cpu() - 1]
                per_image[i].append((result["boxes"].cpu(), result["scores"].cpu(), labels))
        return [
            to_detections(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                          torch.cat([p[2] for p in parts]), resized_hw, image.size, phrases)
            for image, resized_hw, parts in zip(images, image_sizes, per_image, strict=True)
        ]

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        prompt: PromptInput,
        spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        threshold: float = 0.3,
        batch_size: int = 1,
        nms_iou: float | None = None,
        agnostic_nms: bool = False,
        max_detections: int | None = None,
    ) -> Detections | list[Detections]:
        """Detect the prompt's phrases in one image (returns Detections) or many (returns a list).

        prompt: "person. bicycle." text, a list of class names, or a caption with `spans` (per phrase, a list
        of [start, end) character spans). Labels in the result are 0-based phrase indices.
        threshold: keep boxes scoring at least this (the official post-processing keeps the top 100 above 0.05).
        The default 0.3 is a labelling default: a user who asks for labels wants boxes worth keeping (the
        official `GLIPDemo` shows boxes above 0.5 to 0.7); the evaluation passes 0.0, which keeps all the
        official post-processing returns, as the official evaluation scores them.
        nms_iou: an extra NMS across chunks and classes-per-class (class-aware unless agnostic_nms).
        batch_size: images per forward pass; results then depend slightly on the batch's padding, as in the
        official code (batch 1 reproduces the official evaluation exactly).
        """
        single = isinstance(images, (str, Path, Image.Image, np.ndarray))
        items = [images] if single else list(images)
        chunks = self.encode_prompt(prompt, spans)
        phrases = [p for ch in chunks for p in ch.prompt.phrases] if len(chunks) > 1 else chunks[0].prompt.phrases
        results: list[Detections] = []
        for start in range(0, len(items), max(1, batch_size)):
            pil = [to_pil_rgb(x) for x in items[start : start + batch_size]]
            results.extend(self._predict_batch(pil, chunks, phrases))
        results = [filter_detections(d, threshold, nms_iou, agnostic_nms, max_detections) for d in results]
        return results[0] if single else results

    @torch.inference_mode()
    def predict_grounding(
        self, images: Sequence[ImageInput], prompts: Sequence[Prompt], threshold: float = 0.0
    ) -> list[Detections]:
        """One prompt per image (captions with their phrase spans), all images in one forward pass.

        The prompts are padded to the longest and masked, which leaves each image's text features as if it
        were alone; images are padded to the batch's largest as in `predict`. The default threshold is 0.0,
        unlike `predict`'s 0.3, because the callers rank or filter the boxes themselves: pseudo-captioning
        keeps boxes above its own floor and margin, and phrase-grounding Recall@k ranks every box of a
        phrase (the official Flickr30K evaluation keeps all the post-processing returns).
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        limit = self.config.max_query_len
        pil = [to_pil_rgb(x) for x in images]
        batch, image_sizes = self.preprocess(pil)
        tokens = [tokenize(p.text, max_len=limit) for p in prompts]
        outputs = self._forward(batch, self._encode_text(*batch_tokens(tokens)), sliced=False)
        anchors = batch_anchors(outputs, self.config)
        results = []
        for i, (image, prompt, tok) in enumerate(zip(pil, prompts, tokens, strict=True)):
            label_to_token = positive_map_label_to_token(prompt, tok, max_len=limit)
            found = decode(image_outputs(outputs, i), [image_sizes[i]], label_to_token, len(prompt.phrases),
                           self.config, anchors)[0]
            det = to_detections(found["boxes"].cpu(), found["scores"].cpu(), found["labels"].cpu() - 1,
                                image_sizes[i], image.size, list(prompt.phrases))
            results.append(filter_detections(det, threshold))
        return results

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        return get_resized_size(width, height, self.config.min_size_test, self.config.max_size_test)

    def save(self, path: str | Path, dtype: str | None = None) -> None:
        """Write an official-format `.pth` (or a `.safetensors`) that `load_model` and the official code read."""
        from glip_label.weights import save_checkpoint

        cast = None if dtype is None else parse_dtype(dtype)
        save_checkpoint(self.model, Path(path), config_dict=self.config.to_dict(), dtype=cast)


def filter_detections(
    detections: Detections,
    threshold: float = 0.0,
    nms_iou: float | None = None,
    agnostic: bool = False,
    max_detections: int | None = None,
) -> Detections:
    """Score threshold, optional extra NMS (class-aware or across classes), then a cap, best first."""
    keep = detections.scores >= threshold
    out = detections.select(keep).sorted_by_score()
    if nms_iou is not None and len(out):
        labels = torch.zeros(len(out), dtype=torch.long) if agnostic else torch.from_numpy(out.labels)
        kept = ml_nms(torch.from_numpy(out.boxes), torch.from_numpy(out.scores), labels, nms_iou)
        out = out.select(np.sort(kept.numpy())).sorted_by_score()
    if max_detections is not None:
        out = out.select(np.arange(min(len(out), max_detections)))
    return out


def load_model(
    weights: str | Path | None,
    config: GLIPConfig | str | Path | Sequence[str | Path] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    seed: int | None = None,
    revision: str | None = None,
    prefer: str = "model",
    pad_prompt: bool = False,
    cache_text: bool = True,
) -> GLIPPredictor:
    """Load GLIP from a hub preset name ("glip-t", "glip-l", ...), a local .pth/.safetensors, or build it at random.

    config: a preset name, an official yaml path, a list of yamls (task configs merged over their base) or a
    GLIPConfig. By default it comes from the hub preset, else from the metadata glip-label stores in its own
    checkpoints, else from the checkpoint's keys and shapes (the released layouts: glip-tiny, GLIP-T(A),
    GLIP-T, GLIP-L; the choice is logged). A prompt-tuned checkpoint (`rpn.tunable_linear.weight`) is built
    as `PromptTunedGLIP`, so its prompt is used.
    weights=None builds a randomly initialised model (seeded by `seed`), for tests, benchmarks and training.
    """
    from glip_label.weights import (
        PROMPT_KEY,
        guess_preset,
        load_state_dict_strict,
        open_checkpoint,
        resolve_weights,
    )

    dtype = parse_dtype(dtype)
    check_device(device)
    if weights is None:
        warnings.warn("no weights given: building a randomly initialised GLIP (outputs are meaningless until trained)",
                      stacklevel=2)
        cfg = resolve_config(config)
        if seed is not None:
            torch.manual_seed(seed)
        return GLIPPredictor(GLIP(cfg), device, dtype, source=None, pad_prompt=pad_prompt, cache_text=cache_text)

    path, preset = resolve_weights(weights, revision=revision)
    contents = open_checkpoint(path, prefer=prefer)  # one read for the state and the config stored with it
    state = contents.state
    if config is not None:
        cfg = resolve_config(config)
    elif stored := contents.config:
        cfg = GLIPConfig.from_dict(stored)
    elif preset is not None:
        cfg = resolve_config(preset)
    elif (recognised := guess_preset(state)) is not None:
        log.info("%s: no config given and none stored; keys and shapes are those of %s", path, recognised)
        cfg = resolve_config(recognised)
    else:
        cfg = resolve_config(None)  # the mismatch error below describes the unknown layout
    with torch.device("meta"):
        model: torch.nn.Module = GLIP(cfg)
        if PROMPT_KEY in state:
            from glip_label.model.prompt_tuned import PromptTunedGLIP

            model = PromptTunedGLIP(model, num_rows=int(state[PROMPT_KEY].shape[0]))
    model = model.to_empty(device="cpu")
    _restore_buffers(model)
    load_state_dict_strict(model, state, source=str(path))
    return GLIPPredictor(model, device, dtype, source=str(path), pad_prompt=pad_prompt, cache_text=cache_text)


def _restore_buffers(model: GLIP) -> None:
    """Buffers that checkpoints may lack (transformers' non-persistent ids) must be real after `to_empty`."""
    from glip_label.model.swin import WindowAttention, relative_position_index

    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.relative_position_index = relative_position_index(module.window_size)
    embeddings = model.language_backbone.body.model.embeddings
    for name, buffer in list(embeddings.named_buffers(recurse=False)):
        if name == "position_ids":
            embeddings.position_ids = torch.arange(buffer.shape[-1]).expand(1, -1)
        elif name == "token_type_ids":
            embeddings.token_type_ids = torch.zeros(buffer.shape, dtype=torch.long)

