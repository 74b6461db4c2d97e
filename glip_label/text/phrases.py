"""Noun phrases of a caption, with character spans into the caption exactly as given, and fitting them
into a prompt.

GLIP grounds phrases, not words: the teacher is prompted with the caption itself and scores each
phrase by the tokens its characters fall into (`create_positive_map` in
`maskrcnn_benchmark/engine/predictor_glip.py`; GLIP's self-training data,
`maskrcnn_benchmark/data/datasets/pseudo_data.py`, stores the same caption spans). Phrases come from a
chunker (`glip_label.text.chunkers.get_chunker`) or from a class vocabulary (`vocabulary_phrases`).

Every phrase carries ``start``/``end`` into the ORIGINAL caption (never a lower-cased or re-spaced
copy), so ``caption[start:end] == text`` always holds and spans can go straight into a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from glip_label.text.prompts import (
    MAX_QUERY_LEN,
    Prompt,
    clean_name,
    load_tokenizer,
    parse_prompt,
    prompt_token_count,
)


@dataclass(frozen=True)
class Phrase:
    """A phrase and its [start, end) character span in the caption it came from.

    ``name`` is set by :func:`vocabulary_phrases` to the class name that matched (the text may be
    "Dogs" for the class "dog"); chunkers leave it None.
    """

    text: str
    start: int
    end: int
    name: str | None = None


# ------------------------------------------------------------------------------------------- vocabulary


def vocabulary_phrases(caption: str, names: Sequence[str]) -> list[Phrase]:
    """Every whole-word, case-insensitive occurrence of a class name in the caption, sorted by start.

    Names are matched after the official ``clean_name`` ("traffic_light" → "traffic light"), with any
    whitespace between their words and an optional plural "s"/"es". Longer names claim text first, so
    "hot dog" wins over "dog" and the two never overlap. ``Phrase.name`` is the name as given.
    """
    order: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"class name {name!r} is a {type(name).__name__}, expected str")
        cleaned = " ".join(clean_name(name).split())
        if not cleaned:
            raise ValueError(f"class name {name!r} is empty after clean_name()")
        if cleaned.lower() in seen:
            continue
        seen.add(cleaned.lower())
        order.append((cleaned, name))
    order.sort(key=lambda pair: len(pair[0]), reverse=True)  # stable: equal lengths keep the given order

    claimed: list[tuple[int, int]] = []
    found: list[Phrase] = []
    for cleaned, name in order:
        words = r"\s+".join(re.escape(word) for word in cleaned.split())
        pattern = re.compile(rf"(?<!\w){words}(?:e?s)?(?!\w)", re.IGNORECASE)
        for match in pattern.finditer(caption):
            start, end = match.span()
            if any(start < c_end and c_start < end for c_start, c_end in claimed):
                continue
            claimed.append((start, end))
            found.append(Phrase(caption[start:end], start, end, name))
    found.sort(key=lambda phrase: phrase.start)
    return found


# ------------------------------------------------------------------------------------------- prompts


def _check_phrases(caption: str, phrases: Sequence[Phrase]) -> None:
    for j, phrase in enumerate(phrases):
        if not 0 <= phrase.start < phrase.end <= len(caption) or caption[phrase.start : phrase.end] != phrase.text:
            raise ValueError(
                f"phrase {j} {phrase.text!r} [{phrase.start}, {phrase.end}) is not the caption's text at that span"
            )


def phrases_to_prompt(caption: str, phrases: Sequence[Phrase]) -> Prompt:
    """A caption prompt: the caption unchanged, one label per phrase with its span.

    Repeated phrases ("a dog ... a dog") stay separate labels, as in the official demo where every
    occurrence becomes its own entity.
    """
    if not phrases:
        raise ValueError("a caption prompt needs at least one phrase")
    _check_phrases(caption, phrases)
    return parse_prompt(Prompt(caption, [p.text for p in phrases], [[(p.start, p.end)] for p in phrases]))


def fit_caption(
    caption: str, phrases: Sequence[Phrase], max_tokens: int = MAX_QUERY_LEN
) -> tuple[str, list[Phrase], str | None]:
    """Make a caption fit the text encoder: (caption, phrases that still fit, note or None).

    GLIP sees at most ``max_tokens`` tokens including [CLS]/[SEP]; a phrase past that would point at
    tokens the model never saw (the official `create_positive_map` maps spans on the untruncated
    tokenisation; GLIP issues #61, #142). Cutting happens at a word boundary (whitespace), so
    the kept text tokenises exactly as it did inside the full caption, and trailing whitespace is
    dropped. Phrases ending after the cut are dropped; spans of the others are unchanged.
    """
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3 ([CLS], one token, [SEP]), got {max_tokens}")
    _check_phrases(caption, phrases)
    total = prompt_token_count(caption)
    if total <= max_tokens:
        return caption, list(phrases), None
    # content tokens 1..max_tokens-2 survive; cut after the last one, then back to whitespace
    encoding = load_tokenizer().encode(caption)  # the shared untruncated tokenizer, for char offsets
    limit = encoding.offsets[max_tokens - 2][1]
    cut = limit
    while cut > 0 and not caption[cut].isspace():
        cut -= 1
    if cut == 0:  # one giant word: no word boundary to cut at, cut at the token boundary instead
        cut = limit
    text = caption[:cut].rstrip()
    count = prompt_token_count(text)
    while count > max_tokens:  # safety net only: a whitespace cut keeps the earlier tokenisation
        space = text.rfind(" ")
        text = text[:space].rstrip() if space > 0 else text[:-1]
        count = prompt_token_count(text)
    kept = [p for p in phrases if p.end <= len(text)]
    dropped = len(phrases) - len(kept)
    note = f"caption truncated from {total} to {count} tokens; {dropped} phrase{'s' if dropped != 1 else ''} dropped"
    return text, kept, note
