"""Prompt text handling: tokenizer, detection prompts, caption spans and positive maps.

GLIP scores a phrase by the tokens its characters fall into, so everything here has to reproduce the
official evaluation path character for character (`maskrcnn_benchmark/engine/inference.py`
`create_queries_and_maps` and `create_positive_dict`): the same name cleaning, the same ". " separator without a
trailing one, the same char→token fallbacks, and a tokenizer identical to HF `bert-base-uncased`
(BertTokenizerFast). The vocabulary ships with the package so nothing touches the hub.

Where the official code fails silently we raise instead: a prompt longer than the 256-token text limit
makes the official positive map point at tokens the model never saw (GLIP issues #61, #140, #142); here that is a
ValueError that points the caller at `chunk_phrases`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import BertWordPieceTokenizer, Encoding

VOCAB_PATH = Path(__file__).resolve().parent / "vocab" / "bert-base-uncased-vocab.txt"
DEFAULT_SEPARATOR = ". "  # DATASETS.SEPARATION_TOKENS of the official evaluation
MAX_QUERY_LEN = 256  # MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
CLS_ID = 101
SEP_ID = 102
PAD_ID = 0

Span = tuple[int, int]


# ---------------------------------------------------------------------------------------------- tokenizer
@functools.lru_cache(maxsize=1)
def load_tokenizer() -> BertWordPieceTokenizer:
    """The bert-base-uncased WordPiece tokenizer, built from the shipped vocabulary.

    `BertWordPieceTokenizer(lowercase=True)` assembles exactly the pipeline of HF's bert-base-uncased
    tokenizer.json (BertNormalizer with clean_text, CJK splitting, accent stripping following
    lower-casing; BertPreTokenizer; WordPiece with "##"; [CLS] … [SEP]), so ids and char offsets match
    what the official model received. It is cached because building it parses 30k vocabulary lines.
    The shared instance must stay without truncation/padding: the helpers below check that, because
    the positive map has to be computed on the untruncated tokenisation.
    """
    tokenizer = BertWordPieceTokenizer(str(VOCAB_PATH), lowercase=True)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _encode_untruncated(text: str) -> Encoding:
    """Tokenise with [CLS]/[SEP] and no length limit, as the official positive-map code does."""
    tokenizer = load_tokenizer()
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        raise RuntimeError(
            "the shared tokenizer from load_tokenizer() has truncation/padding enabled; "
            "do not configure it in place (call no_truncation()/no_padding() to restore it)"
        )
    return tokenizer.encode(text)


def prompt_token_count(text: str) -> int:
    """Tokens the text occupies including [CLS] and [SEP], before any truncation."""
    return len(_encode_untruncated(text).ids)


@dataclass
class TokenizedPrompt:
    """Model input for one prompt.

    input_ids / attention_mask: [T] int64, T = pad_to or num_tokens (PAD id 0, mask 0 after num_tokens)
    offsets: (start, end) character span in `text` of each of the num_tokens real tokens ((0, 0) for
             [CLS]/[SEP])
    num_tokens: real tokens including [CLS]/[SEP], after truncation
    truncated: whether the text had more than max_len tokens and lost its tail
    """

    text: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: list[tuple[int, int]]
    num_tokens: int
    truncated: bool = False


def tokenize(text: str, max_len: int = MAX_QUERY_LEN, pad_to: int | None = None) -> TokenizedPrompt:
    """Tokenise like the official `batch_encode_plus(max_length=256, truncation=True, padding=...)`.

    Truncation keeps [SEP] as the last token (HF drops content tokens, not the special ones).
    pad_to=256 gives the official padded layout; pad_to=None the unpadded one, which the model treats
    identically because PAD keys are masked.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 to hold [CLS] and [SEP], got {max_len}")
    encoding = _encode_untruncated(text)
    ids = list(encoding.ids)
    offsets = [tuple(o) for o in encoding.offsets]
    truncated = len(ids) > max_len
    if truncated:
        ids = ids[: max_len - 1] + [SEP_ID]
        offsets = offsets[: max_len - 1] + [(0, 0)]
    num_tokens = len(ids)
    length = num_tokens if pad_to is None else pad_to
    if length < num_tokens:
        raise ValueError(f"pad_to={pad_to} is shorter than the {num_tokens} tokens of the prompt (max_len={max_len})")
    input_ids = torch.full((length,), PAD_ID, dtype=torch.long)  # [T]
    input_ids[:num_tokens] = torch.tensor(ids, dtype=torch.long)
    attention_mask = torch.zeros(length, dtype=torch.long)  # [T]
    attention_mask[:num_tokens] = 1
    return TokenizedPrompt(text, input_ids, attention_mask, offsets, num_tokens, truncated)


# ---------------------------------------------------------------------------------------------- prompts
def clean_name(name: str) -> str:
    """The official `clean_name`, kept bug-for-bug so token positions match.

    The regex is greedy (everything from the first "(" to the last ")" goes) and the double-space
    replacement is a single pass, so "bow_(weapon)" becomes "bow " with a trailing space that later sits
    inside the phrase span; the end-of-span fallback of the positive map absorbs it.
    """
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    name = re.sub(r"  ", " ", name)
    return name


def is_promptable(name: str) -> bool:
    """Whether a class name keeps any text after `clean_name`, i.e. can have a phrase span of its own."""
    return bool(clean_name(name).strip())


@dataclass
class Prompt:
    """A prompt text and the character spans of its phrases.

    phrases: one entry per label (label j+1 in the positive map is phrases[j]); for a detection prompt the
             names as given (before cleaning), for a caption the text of each phrase's first span
    spans:   per phrase, one or more [start, end) character spans into `text`
    """

    text: str
    phrases: list[str]
    spans: list[list[tuple[int, int]]]


def build_detection_prompt(names: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> Prompt:
    """The official evaluation prompt for a class list: cleaned names joined by ". ", no trailing separator.

    Each phrase's span covers its cleaned name only. A name that cleans to nothing or to whitespace would
    give a span with no token of its own (the official code crashes or scores a separator), so it is
    rejected here.
    """
    names = list(names)
    if not names:
        raise ValueError("a detection prompt needs at least one class name")
    parts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    cursor = 0
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"class name {index} is {type(name).__name__}, expected str")
        cleaned = clean_name(name)
        if not cleaned.strip():  # the test of is_promptable, on the name cleaned once
            raise ValueError(f"class name {index} ({name!r}) is empty after clean_name(); it cannot be detected")
        spans.append([(cursor, cursor + len(cleaned))])
        parts.append(cleaned)
        cursor += len(cleaned)
        if index != len(names) - 1:
            parts.append(separator)
            cursor += len(separator)
    return Prompt("".join(parts), names, spans)


def _normalise_spans(spans: Sequence, text: str) -> list[list[tuple[int, int]]]:
    """Per-phrase span lists, validated against the text.

    Accepts the nested form (per phrase a list of (start, end)) and, for convenience, the flat form of
    one (start, end) pair per phrase as cases.json stores it.
    """
    normalised: list[list[tuple[int, int]]] = []
    for j, phrase_spans in enumerate(spans):
        if _is_pair(phrase_spans):
            phrase_spans = [phrase_spans]
        if not isinstance(phrase_spans, Sequence) or isinstance(phrase_spans, str) or len(phrase_spans) == 0:
            raise ValueError(f"phrase {j}: expected a non-empty list of (start, end) spans, got {phrase_spans!r}")
        checked: list[tuple[int, int]] = []
        for span in phrase_spans:
            if not _is_pair(span):
                raise ValueError(f"phrase {j}: span {span!r} is not a (start, end) pair of integers")
            start, end = int(span[0]), int(span[1])
            if not 0 <= start < end <= len(text):
                raise ValueError(
                    f"phrase {j}: span ({start}, {end}) is invalid for a text of {len(text)} characters "
                    f"(need 0 <= start < end <= {len(text)})"
                )
            checked.append((start, end))
        normalised.append(checked)
    return normalised


def _is_pair(value: object) -> bool:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def parse_prompt(
    prompt: str | Sequence[str] | Prompt, spans: Sequence[Sequence[tuple[int, int]]] | None = None
) -> Prompt:
    """Turn any user prompt form into a validated `Prompt`.

    - list of names → `build_detection_prompt` (the official evaluation layout);
    - string with spans → a caption whose phrases are the text of each phrase's first span;
    - string without spans → a class list split on "." ("person. bicycle." and "person . bicycle" both
      give ["person", "bicycle"]; empty pieces dropped), rebuilt as a detection prompt, so a trailing
      separator disappears. Names containing "." must therefore be passed as a list.
    - a `Prompt` is re-validated and returned with normalised spans.
    """
    if isinstance(prompt, Prompt):
        if spans is not None:
            raise ValueError("spans must not be given together with a Prompt (it carries its own spans)")
        normalised = _normalise_spans(prompt.spans, prompt.text)
        if len(prompt.phrases) != len(normalised):
            raise ValueError(f"Prompt has {len(prompt.phrases)} phrases but {len(normalised)} span lists")
        return Prompt(prompt.text, list(prompt.phrases), normalised)
    if isinstance(prompt, str):
        if spans is not None:
            normalised = _normalise_spans(spans, prompt)
            if not normalised:
                raise ValueError("a caption prompt needs at least one phrase span")
            phrases = [prompt[phrase_spans[0][0] : phrase_spans[0][1]] for phrase_spans in normalised]
            return Prompt(prompt, phrases, normalised)
        names = [piece.strip() for piece in prompt.split(".")]
        names = [name for name in names if name]
        if not names:
            raise ValueError(f"prompt {prompt!r} contains no class names (expected e.g. 'person. bicycle.')")
        return build_detection_prompt(names)
    if isinstance(prompt, Sequence):
        if spans is not None:
            raise ValueError("spans are only meaningful with a caption string, not with a list of names")
        return build_detection_prompt(list(prompt))
    raise TypeError(f"prompt must be a str, a list of str or a Prompt, got {type(prompt).__name__}")


# ---------------------------------------------------------------------------------------------- positive maps
def _char_to_token(encoding: Encoding, char_index: int, text_len: int) -> int | None:
    """`char_to_token`, with out-of-range positions mapping to None as the official try/except makes them."""
    if not 0 <= char_index < text_len:
        return None
    return encoding.char_to_token(char_index)


def positive_map_label_to_token(
    prompt: Prompt, tokenized: TokenizedPrompt | None = None, max_len: int = MAX_QUERY_LEN
) -> dict[int, list[int]]:
    """Label (1-based phrase index) → token positions, as the official `create_positive_dict` builds it.

    Per span: first token = the token at `start`, else at start+1, else start+2; last token = the token at
    end-1, else end-2, else end-3; a span where either stays unresolved is skipped, and a span whose last
    token precedes its first contributes nothing. A phrase none of whose spans maps gets NO entry (like
    the official defaultdict), so downstream code must treat a missing label as never detected.

    The lookup runs on the untruncated tokenisation, like the official code. If the text was truncated
    (more than max_len tokens, or `tokenized` says so) any phrase touching a token that did not survive
    is an error, because the official code would silently read the wrong column or crash.
    """
    encoding = _encode_untruncated(prompt.text)
    full_len = len(encoding.ids)
    model_len = full_len if full_len <= max_len else max_len
    if tokenized is not None:
        if tokenized.text != prompt.text:
            raise ValueError("tokenized.text differs from prompt.text; tokenise the same prompt you map")
        model_len = min(model_len, tokenized.num_tokens)
    # When truncated, the last kept position holds [SEP]: content tokens end at model_len - 2.
    last_content = model_len - 2

    text_len = len(prompt.text)
    label_to_token: dict[int, list[int]] = {}
    for j, phrase_spans in enumerate(_normalise_spans(prompt.spans, prompt.text)):
        positions: set[int] = set()
        for start, end in phrase_spans:
            first = _char_to_token(encoding, start, text_len)
            if first is None:
                first = _char_to_token(encoding, start + 1, text_len)
                if first is None:
                    first = _char_to_token(encoding, start + 2, text_len)
            last = _char_to_token(encoding, end - 1, text_len)
            if last is None:
                last = _char_to_token(encoding, end - 2, text_len)
                if last is None:
                    last = _char_to_token(encoding, end - 3, text_len)
            if first is None or last is None:
                continue
            positions.update(range(first, last + 1))
        if not positions:
            continue
        if max(positions) > last_content:
            phrase = prompt.phrases[j] if j < len(prompt.phrases) else "?"
            raise ValueError(
                f"prompt is too long: phrase {j} ({phrase!r}, label {j + 1}) needs token {max(positions)}, but the "
                f"prompt has {full_len} tokens and only {model_len} fit (max_len={max_len} including [CLS]/[SEP]). "
                "Split a class list with glip_label.text.prompts.chunk_phrases(names, max_len) and run one "
                "prompt per chunk, or shorten the caption."
            )
        label_to_token[j + 1] = sorted(positions)
    return label_to_token


def positive_map_matrix(label_to_token: dict[int, list[int]], num_labels: int, num_tokens: int) -> torch.Tensor:
    """Binary [num_labels, num_tokens] float map (row j = label j+1), the training target layout."""
    positive_map = torch.zeros((num_labels, num_tokens), dtype=torch.float32)  # [L, T]
    for label, token_positions in label_to_token.items():
        if not 1 <= label <= num_labels:
            raise ValueError(f"label {label} is outside 1..{num_labels}")
        for position in token_positions:
            if not 0 <= position < num_tokens:
                raise ValueError(f"label {label}: token position {position} is outside 0..{num_tokens - 1}")
        positive_map[label - 1, list(token_positions)] = 1.0
    return positive_map


# ---------------------------------------------------------------------------------------------- long vocabularies
def chunk_phrases(
    names: Sequence[str], max_len: int = MAX_QUERY_LEN, max_phrases: int | None = None
) -> list[list[int]]:
    """Split a class list into consecutive index groups whose detection prompt fits in max_len tokens.

    The official LVIS evaluation cuts fixed chunks of 40 names; packing greedily by the real token count
    needs fewer model runs and never overflows. `max_phrases` optionally caps a group's size as well
    (the official head has only DYHEAD.NUM_CLASSES - 1 class-score columns). Each candidate group is
    tokenised for real rather than summing per-name counts, so the guarantee holds by construction.
    """
    names = list(names)
    if max_phrases is not None and max_phrases < 1:
        raise ValueError(f"max_phrases must be >= 1, got {max_phrases}")
    groups: list[list[int]] = []
    current: list[int] = []
    for index, name in enumerate(names):
        candidate = current + [index]
        fits = max_phrases is None or len(candidate) <= max_phrases
        if fits:
            fits = prompt_token_count(build_detection_prompt([names[i] for i in candidate]).text) <= max_len
        if fits:
            current = candidate
            continue
        alone = prompt_token_count(build_detection_prompt([name]).text)
        if alone > max_len:
            raise ValueError(
                f"class name {index} ({name!r}) alone needs {alone} tokens, more than max_len={max_len}"
            )
        groups.append(current)
        current = [index]
    if current:
        groups.append(current)
    return groups
