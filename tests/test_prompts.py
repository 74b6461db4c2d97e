"""Prompt text handling against the official tokenisation fixture and hand-computed edge cases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from glip_label.text.prompts import (
    VOCAB_PATH,
    Prompt,
    build_detection_prompt,
    chunk_phrases,
    clean_name,
    load_tokenizer,
    parse_prompt,
    positive_map_label_to_token,
    positive_map_matrix,
    prompt_token_count,
    tokenize,
)

VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
CASES = ["astronaut_caption", "astronaut_det", "coffee_caption", "coffee_det"]
ASTRONAUT = "An astronaut in a white space suit holds a helmet next to an American flag."
COCO80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip


def _case(parity_dir: Path, name: str) -> tuple[dict, dict]:
    cases = {c["case"]: c for c in json.loads((parity_dir / "cases.json").read_text())}
    tokenization = json.loads((parity_dir / "cases" / name / "tokenization.json").read_text())
    return cases[name], tokenization


def _fixture_prompt(case: dict) -> Prompt:
    if "classes" in case:
        return build_detection_prompt(case["classes"])
    return parse_prompt(case["caption"], [[tuple(span)] for span in case["spans"]])


# ---------------------------------------------------------------------------------------------- fixture parity
@pytest.mark.parity
@pytest.mark.parametrize("name", CASES)
def test_fixture_prompt_ids_mask_and_positive_map(parity_dir: Path, name: str) -> None:
    case, expected = _case(parity_dir, name)
    prompt = _fixture_prompt(case)
    assert prompt.text == expected["query"]
    assert prompt.phrases == expected["phrases"]

    padded = tokenize(prompt.text, max_len=256, pad_to=256)
    assert padded.input_ids.dtype == torch.long and padded.attention_mask.dtype == torch.long
    assert padded.input_ids.tolist() == expected["input_ids"]
    assert padded.attention_mask.tolist() == expected["attention_mask"]
    assert padded.num_tokens == expected["n_valid_tokens"]
    tokenizer = load_tokenizer()
    n = padded.num_tokens
    assert [tokenizer.id_to_token(i) for i in padded.input_ids.tolist()] == expected["tokens"]

    unpadded = tokenize(prompt.text)
    assert unpadded.input_ids.tolist() == expected["input_ids"][:n]
    assert unpadded.attention_mask.tolist() == [1] * n
    assert len(unpadded.offsets) == n and not unpadded.truncated

    expected_map = {int(label): tokens for label, tokens in expected["positive_map_label_to_token"].items()}
    assert positive_map_label_to_token(prompt) == expected_map
    assert positive_map_label_to_token(prompt, padded) == expected_map
    assert positive_map_label_to_token(prompt, unpadded) == expected_map


def test_vocab_is_the_fixture_vocab() -> None:
    assert hashlib.sha256(VOCAB_PATH.read_bytes()).hexdigest() == VOCAB_SHA256
    tokenizer = load_tokenizer()
    assert tokenizer.get_vocab_size() == 30522
    assert tokenizer.token_to_id("person") == 2711
    assert load_tokenizer() is tokenizer  # cached: building it parses the whole vocabulary


def test_coco_prompt_ids() -> None:
    assert tokenize("person").input_ids.tolist() == [101, 2711, 102]
    prompt = parse_prompt("person. bicycle. car. traffic light.")
    assert prompt.text == "person. bicycle. car. traffic light"
    expected = [101, 2711, 1012, 10165, 1012, 2482, 1012, 4026, 2422, 1012, 102]
    assert tokenize("person. bicycle. car. traffic light.").input_ids.tolist() == expected
    assert positive_map_label_to_token(prompt) == {1: [1], 2: [3], 3: [5], 4: [7, 8]}


def test_matches_transformers_bert_tokenizer() -> None:
    """Same ids and char offsets as HF's bert-base-uncased tokenizer on accents, CJK, controls, punctuation."""
    from transformers import BertTokenizer

    reference = BertTokenizer(vocab=str(VOCAB_PATH))
    texts = [
        ASTRONAUT,
        "Café naïve résumé, ÉCOLE!",
        "東京 tower at night\u3000 and\tTAB",
        "weird\x00control\u200bchars -- and émojis 🙂 (parens) [brackets] don't",
        "bow . cup. a  b",
        "",
    ]
    for text in texts:
        ours = tokenize(text)
        theirs = reference(text, return_offsets_mapping=True)
        assert ours.input_ids.tolist() == theirs["input_ids"], text
        assert ours.offsets == [tuple(o) for o in theirs["offset_mapping"]], text


def test_truncation_keeps_sep_last() -> None:
    text = " ".join(["cat"] * 300)
    assert prompt_token_count(text) == 302
    tokens = tokenize(text, max_len=256, pad_to=256)
    assert tokens.truncated and tokens.num_tokens == 256
    ids = tokens.input_ids.tolist()
    assert ids[0] == 101 and ids[-1] == 102 and ids[1:255] == [4937] * 254
    assert tokens.attention_mask.tolist() == [1] * 256
    assert len(tokens.offsets) == 256 and tokens.offsets[-1] == (0, 0)
    with pytest.raises(ValueError, match="pad_to"):
        tokenize(text, max_len=256, pad_to=100)


def test_padding_layout() -> None:
    tokens = tokenize("person. dog", pad_to=16)
    assert tokens.num_tokens == 5
    assert tokens.input_ids.tolist() == [101, 2711, 1012, 3899, 102] + [0] * 11
    assert tokens.attention_mask.tolist() == [1] * 5 + [0] * 11
    assert tokens.offsets == [(0, 0), (0, 6), (6, 7), (8, 11), (0, 0)]


# ---------------------------------------------------------------------------------------------- spans by hand
def test_astronaut_offsets_used_below() -> None:
    """The offsets the hand-computed expectations below rely on."""
    offsets = tokenize(ASTRONAUT).offsets
    assert offsets[:8] == [(0, 0), (0, 2), (3, 12), (13, 15), (16, 17), (18, 23), (24, 29), (30, 34)]
    assert offsets[14:17] == [(61, 69), (70, 74), (74, 75)]


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([(4, 11)], [2]),  # "stronau": inside "astronaut" (token 2, chars 3..12)
        ([(3, 12)], [2]),  # exactly "astronaut"
        ([(15, 23)], [4, 5]),  # " a white": starts at a space -> start+1 is "a" (token 4)
        ([(16, 24)], [4, 5]),  # "a white ": ends at a space -> end-2 is in "white" (token 5)
        ([(13, 18)], [3, 4]),  # "in a ": end-1 is a space, end-2 is "a" (token 4); end-3 would be a space
        ([(14, 19)], [3, 4, 5]),  # "n a w": starts inside "in", ends inside "white"
        ([(70, 75)], [15, 16]),  # "flag." includes the "." token
        ([(58, 74), (0, 12)], [1, 2, 13, 14, 15]),  # two spans: union, sorted
        ([(3, 12), (4, 8)], [2]),  # overlapping spans: unique
    ],
)
def test_caption_span_to_tokens(spans: list[tuple[int, int]], expected: list[int]) -> None:
    prompt = parse_prompt(ASTRONAUT, [spans])
    assert positive_map_label_to_token(prompt) == {1: expected}


def test_multi_token_word_spans() -> None:
    text = "A cup of coffee on a saucer"
    offsets = tokenize(text).offsets
    assert offsets[7:9] == [(21, 26), (26, 27)]  # "sauce", "##r"
    prompt = parse_prompt(text, [[(26, 27)], [(22, 26)], [(21, 27)]])
    assert positive_map_label_to_token(prompt) == {1: [8], 2: [7], 3: [7, 8]}


def test_second_fallbacks() -> None:
    # "x  y" = [CLS] x y [SEP]; chars 1 and 2 are spaces.
    assert tokenize("x  y").offsets == [(0, 0), (0, 1), (3, 4), (0, 0)]
    assert positive_map_label_to_token(parse_prompt("x  y", [[(1, 4)]])) == {1: [2]}  # start+2 -> "y"
    assert positive_map_label_to_token(parse_prompt("x  y", [[(0, 3)]])) == {1: [1]}  # end-3 -> "x"


def test_unmappable_spans_get_no_entry() -> None:
    # "a   b": span (1, 4) is only spaces -> start, start+1, start+2 all unmapped -> skipped.
    assert positive_map_label_to_token(parse_prompt("a   b", [[(1, 4)], [(0, 5)]])) == {2: [1, 2]}
    # "a  b": span (1, 3) resolves start to "b" (token 2) and end to "a" (token 1): empty range, no entry.
    assert positive_map_label_to_token(parse_prompt("a  b", [[(1, 3)], [(3, 4)]])) == {2: [2]}
    # A span near the text start whose end fallbacks run below 0 must not wrap around.
    assert positive_map_label_to_token(parse_prompt(" x", [[(0, 1)]])) == {}


def test_clean_name() -> None:
    assert clean_name("bow_(weapon)") == "bow "
    assert clean_name("a_(b)_c_(d)") == "a "  # greedy "(.*)"
    assert clean_name("a___b") == "a  b"  # single pass of "  " -> " "
    assert clean_name("traffic_light") == "traffic light"
    assert clean_name("plain") == "plain"


def test_bow_weapon_span() -> None:
    prompt = build_detection_prompt(["bow_(weapon)", "cup"])
    assert prompt.text == "bow . cup"
    assert prompt.phrases == ["bow_(weapon)", "cup"]
    assert prompt.spans == [[(0, 4)], [(6, 9)]]  # the trailing space stays inside the span
    # [CLS] bow . cup [SEP]: end-1 of "bow " is the space, end-2 resolves to "bow".
    assert positive_map_label_to_token(prompt) == {1: [1], 2: [3]}


def test_build_detection_prompt_rejects_empty_names() -> None:
    with pytest.raises(ValueError, match="empty after clean_name"):
        build_detection_prompt(["cup", "(nothing)"])
    with pytest.raises(ValueError, match="at least one"):
        build_detection_prompt([])


def test_build_detection_prompt_separator() -> None:
    prompt = build_detection_prompt(["person", "dog"], separator=" . ")
    assert prompt.text == "person . dog"
    assert prompt.spans == [[(0, 6)], [(9, 12)]]


# ---------------------------------------------------------------------------------------------- parse_prompt
@pytest.mark.parametrize(
    "text", ["person. bicycle.", "person . bicycle", " person.. bicycle . ", "person. bicycle"]
)
def test_parse_class_list_strings(text: str) -> None:
    prompt = parse_prompt(text)
    assert prompt == Prompt("person. bicycle", ["person", "bicycle"], [[(0, 6)], [(8, 15)]])
    assert parse_prompt(["person", "bicycle"]) == prompt


def test_parse_caption_nested_and_flat_spans() -> None:
    nested = parse_prompt(ASTRONAUT, [[(0, 12)], [(16, 34), (58, 74)]])
    assert nested.phrases == ["An astronaut", "a white space suit"]
    assert nested.spans == [[(0, 12)], [(16, 34), (58, 74)]]
    flat = parse_prompt(ASTRONAUT, [[0, 12], [16, 34]])  # cases.json style: one [start, end] per phrase
    assert flat.spans == [[(0, 12)], [(16, 34)]]
    assert parse_prompt(flat) == flat


@pytest.mark.parametrize(
    ("spans", "match"),
    [
        ([[(5, 5)]], r"\(5, 5\)"),
        ([[(-1, 3)]], r"\(-1, 3\)"),
        ([[(0, len(ASTRONAUT) + 1)]], rf"\(0, {len(ASTRONAUT) + 1}\)"),
        ([[(0, 3)], [(9, 4)]], r"phrase 1: span \(9, 4\)"),
        ([[(0, 3.5)]], "not a \\(start, end\\) pair"),
        ([[]], "non-empty"),
    ],
)
def test_parse_prompt_rejects_bad_spans(spans: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_prompt(ASTRONAUT, spans)


def test_parse_prompt_misuse() -> None:
    with pytest.raises(ValueError, match="no class names"):
        parse_prompt(" . . ")
    with pytest.raises(ValueError, match="spans"):
        parse_prompt(["person"], [[(0, 3)]])
    with pytest.raises(ValueError, match="phrases"):
        parse_prompt(Prompt("abc", ["a", "b"], [[(0, 1)]]))
    with pytest.raises(TypeError):
        parse_prompt(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- long prompts
def test_too_long_detection_prompt_raises() -> None:
    prompt = build_detection_prompt(COCO80 * 3)
    assert prompt_token_count(prompt.text) > 256
    with pytest.raises(ValueError, match="too long.*chunk_phrases"):
        positive_map_label_to_token(prompt)
    with pytest.raises(ValueError, match="too long"):
        positive_map_label_to_token(prompt, tokenize(prompt.text, pad_to=256))
    # A larger limit accepts it, and every index is inside that limit.
    label_to_token = positive_map_label_to_token(prompt, max_len=1024)
    assert len(label_to_token) == 240
    assert max(max(v) for v in label_to_token.values()) < prompt_token_count(prompt.text) - 1


def test_truncated_caption_boundary() -> None:
    """Word k is token k+1; with 256 slots the last content token is 254, slot 255 becomes [SEP]."""
    text = " ".join(["cat"] * 300)
    span_of_word = [(4 * k, 4 * k + 3) for k in range(300)]
    ok = parse_prompt(text, [[span_of_word[0]], [span_of_word[253]]])
    assert positive_map_label_to_token(ok) == {1: [1], 2: [254]}
    cut = parse_prompt(text, [[span_of_word[254]]])
    with pytest.raises(ValueError, match="needs token 255"):
        positive_map_label_to_token(cut)
    # A tokenisation truncated shorter than max_len tightens the limit.
    with pytest.raises(ValueError, match="too long"):
        positive_map_label_to_token(ok, tokenize(text, max_len=100))


def test_tokenized_for_another_text_is_rejected() -> None:
    with pytest.raises(ValueError, match="differs"):
        positive_map_label_to_token(parse_prompt("person. dog"), tokenize("person. cat"))


def test_chunk_phrases_packs_greedily() -> None:
    names = (COCO80 * 3)[:200]
    groups = chunk_phrases(names, max_len=256)
    assert len(groups) > 1
    assert [i for group in groups for i in group] == list(range(200))
    for k, group in enumerate(groups):
        assert prompt_token_count(build_detection_prompt([names[i] for i in group]).text) <= 256
        if k + 1 < len(groups):  # greedy: the next name would not have fitted
            grown = [names[i] for i in group + [groups[k + 1][0]]]
            assert prompt_token_count(build_detection_prompt(grown).text) > 256
        # each chunk maps without error within the limit
        assert len(positive_map_label_to_token(build_detection_prompt([names[i] for i in group]))) == len(group)


def test_chunk_phrases_limits() -> None:
    assert chunk_phrases(COCO80) == [list(range(80))]
    capped = chunk_phrases(COCO80, max_phrases=30)
    assert [len(g) for g in capped] == [30, 30, 20]
    long_name = " ".join(["word"] * 20)  # 20 tokens + [CLS]/[SEP]
    with pytest.raises(ValueError, match="alone needs 22 tokens"):
        chunk_phrases(["cat", long_name], max_len=16)
    assert chunk_phrases(["cat", long_name], max_len=22) == [[0], [1]]


def test_positive_map_matrix() -> None:
    matrix = positive_map_matrix({1: [1, 2], 3: [5]}, num_labels=3, num_tokens=8)
    assert matrix.dtype == torch.float32 and matrix.shape == (3, 8)
    expected = torch.zeros(3, 8)
    expected[0, 1:3] = 1
    expected[2, 5] = 1
    assert torch.equal(matrix, expected)
    with pytest.raises(ValueError, match="label 4"):
        positive_map_matrix({4: [1]}, num_labels=3, num_tokens=8)
    with pytest.raises(ValueError, match="position 8"):
        positive_map_matrix({1: [8]}, num_labels=3, num_tokens=8)


def test_configured_shared_tokenizer_is_detected() -> None:
    tokenizer = load_tokenizer()
    tokenizer.enable_truncation(8)
    try:
        with pytest.raises(RuntimeError, match="truncation"):
            prompt_token_count("person")
    finally:
        tokenizer.no_truncation()
    assert prompt_token_count("person") == 3


def test_a_comma_separated_prompt_is_one_class_and_says_so(caplog):
    """Grounding DINO and OWL users write "person, car"; GLIP's separator is '.', so that is one class name.
    It stays one (a class may contain a comma) but the run says how to write two."""
    import logging

    from glip_label.runs.ontology import load_ontology

    with caplog.at_level(logging.WARNING):
        assert load_ontology("person, car").categories == ["person, car"]
    assert "ONE class" in caplog.text and "'person. car.'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_ontology("person. car, truck.").categories == ["person", "car, truck"]
    assert caplog.text == ""
