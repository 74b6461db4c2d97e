"""The caption a detection sample is trained with: GLIP's detection -> grounding conversion.

A detection image has no caption of its own. Each time it is used a prompt is drawn from its classes
(the positives) and negative class names sampled from the file's vocabulary, following the official
`maskrcnn_benchmark/data/datasets/od_to_grounding.py` (`check_for_positive_overflow` and
`convert_object_detection_to_grounding_optimized_for_od` for pretraining,
`convert_od_to_grounding_simple` for fine-tuning), so the student sees different negatives at every
epoch. The names are joined exactly like the evaluation prompt (`glip_label.text.prompts.build_detection_prompt`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from glip_label.data.samples import Span
from glip_label.text.prompts import (
    DEFAULT_SEPARATOR,
    MAX_QUERY_LEN,
    build_detection_prompt,
    clean_name,
    is_promptable,
    load_tokenizer,
    prompt_token_count,
)

DEFAULT_NUM_NEGATIVES = 85  # DATASETS.RANDOM_SAMPLE_NEG of the pretraining yamls
FULL_NEGATIVES_PROBABILITY = 0.5  # DATASETS.CONTROL_PROB[2]


@functools.lru_cache(maxsize=1 << 16)
def _wordpiece_length(text: str) -> int:
    """Tokens of `text` without [CLS]/[SEP] (the official `tokenizer.tokenize` length)."""
    return len(load_tokenizer().encode(text, add_special_tokens=False).ids)


@dataclass
class DetectionPrompt:
    """A detection sample turned into grounding data.

    caption: class names joined by ". " (no trailing separator)
    kept:    indices of the sample's boxes whose class is in the caption
    spans:   per kept box, the span of its class name in the caption
    names:   the class names in caption order (positives and negatives)
    """

    caption: str
    kept: list[int]
    spans: list[list[Span]]
    names: list[str]


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _join_names(names: Sequence[str]) -> tuple[str, dict[str, Span]]:
    """The evaluation prompt of `names` ("" for none) and each name's span in it."""
    if not names:
        return "", {}
    prompt = build_detection_prompt(names)
    return prompt.text, {name: spans[0] for name, spans in zip(prompt.phrases, prompt.spans, strict=True)}


def _shuffled(items: list[str], rng: np.random.Generator) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]


def detection_prompt(
    sample_categories: Sequence[str],
    all_categories: Sequence[str],
    rng: np.random.Generator,
    max_len: int = MAX_QUERY_LEN,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
    disable_shuffle: bool = False,
) -> DetectionPrompt:
    """The official detection -> grounding conversion (`od_to_grounding.py`, see the module docstring).

    Pretraining mode (disable_shuffle False):
    1. positives (the sample's classes) are shuffled and kept while the running WordPiece length of
       "name. " stays <= max_len - 2; boxes of dropped classes are dropped (`check_for_positive_overflow`);
    2. with probability 0.5 num_negatives ("full") class names are drawn from all classes, otherwise a
       uniform 1..num_negatives; drawn names that are positives are discarded; negatives are shuffled and
       kept while the remaining budget (max_len - 2 - positive length) stays > 0;
    3. positives and negatives are shuffled together and joined with ". ".
    As in the official code the positive length used for the negative budget includes the class that
    overflowed, and all randomness comes from `rng` (one generator instead of python's and numpy's).
    Fine-tuning mode (disable_shuffle True): all classes in the given order, i.e. the evaluation prompt
    (`convert_od_to_grounding_simple`).
    The caption always fits in max_len tokens including [CLS]/[SEP].
    """
    budget = max_len - 2
    pool = [c for c in _unique(all_categories) if is_promptable(c)]
    if disable_shuffle:
        label_list = pool
        caption, positions = _join_names(label_list)
        if prompt_token_count(caption) > max_len:
            raise ValueError(
                f"the {len(label_list)} class names need {prompt_token_count(caption)} tokens, more than "
                f"max_len={max_len}: fixed-order prompts cannot hold this vocabulary; train with shuffled "
                "prompts (disable_shuffle=False), which sample a fitting subset per image"
            )
    else:
        positives = _shuffled(_unique(sample_categories), rng)
        kept_positives: list[str] = []
        positive_length = 0
        for name in positives:
            if not is_promptable(name):
                continue
            positive_length += _wordpiece_length(clean_name(name) + DEFAULT_SEPARATOR)
            if positive_length > budget:
                break
            kept_positives.append(name)

        full_negative = min(num_negatives, len(pool))
        if rng.random() < FULL_NEGATIVES_PROBABILITY:
            negative_count = full_negative
        else:
            negative_count = int(rng.integers(max(1, full_negative))) + 1  # uniform 1..full (at least 1)
        negative_count = min(negative_count, len(pool))
        drawn = [pool[i] for i in rng.choice(len(pool), size=negative_count, replace=False)] if negative_count else []
        positive_set = set(sample_categories)
        negatives = _shuffled(_unique([n for n in drawn if n not in positive_set]), rng)

        remaining = budget - positive_length
        screened: list[str] = []
        for name in negatives:
            remaining -= _wordpiece_length(clean_name(name) + DEFAULT_SEPARATOR)
            if remaining <= 0:
                break
            screened.append(name)
        label_list = _shuffled(screened + kept_positives, rng)
        caption, positions = _join_names(label_list)
    if not label_list:
        raise ValueError("no class name can be put in the prompt (empty vocabulary after clean_name)")
    kept = [i for i, c in enumerate(sample_categories) if c in positions]
    spans = [[positions[sample_categories[i]]] for i in kept]
    return DetectionPrompt(caption, kept, spans, list(label_list))
