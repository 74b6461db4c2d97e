"""Which text tokens each box of a training caption is trained on: the binary positive map.

GLIP's loss scores every anchor against every token of the caption, so each box needs the tokens of
its phrase. The map is built like the official training one (`create_positive_map` in
`maskrcnn_benchmark/data/datasets/modulated_coco.py`, re-binarised by the collator), with the char ->
token fallbacks of `glip_label.text.prompts.positive_map_label_to_token`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from glip_label.data.samples import Span
from glip_label.text.prompts import MAX_QUERY_LEN, Prompt, TokenizedPrompt, positive_map_label_to_token, tokenize


def caption_positive_map(
    caption: str, box_spans: Sequence[Sequence[Span]], max_len: int = MAX_QUERY_LEN
) -> tuple[TokenizedPrompt, torch.Tensor, np.ndarray]:
    """Tokenise a caption and build the binary token map of every box [G, T] (T = real tokens, unpadded).

    Spans resolve to tokens with the official char->token fallbacks (`positive_map_label_to_token`),
    on the untruncated tokenisation. A box whose phrase maps to no token, or to a token beyond what
    fits in max_len (the caption was truncated), is dropped: training it would teach the wrong token.
    Returns (TokenizedPrompt, positive map [K, T] float32, kept box indices [K]).
    """
    tokens = tokenize(caption, max_len=max_len)
    num_tokens = tokens.num_tokens
    if not box_spans:
        return tokens, torch.zeros((0, num_tokens), dtype=torch.float32), np.zeros(0, dtype=np.int64)
    prompt = Prompt(caption, [caption[s[0][0] : s[0][1]] if s else "" for s in box_spans], [list(s) for s in box_spans])
    # A limit above the real length makes the lookup never raise; fitting is checked here instead.
    label_to_token = positive_map_label_to_token(prompt, None, max_len=max(max_len, 1 << 30))
    last_content = num_tokens - 2
    rows, kept = [], []
    for box_index in range(len(box_spans)):
        positions = label_to_token.get(box_index + 1)
        if not positions or max(positions) > last_content:
            continue
        row = torch.zeros(num_tokens, dtype=torch.float32)
        row[positions] = 1.0
        rows.append(row)
        kept.append(box_index)
    positive_map = torch.stack(rows) if rows else torch.zeros((0, num_tokens), dtype=torch.float32)
    return tokens, positive_map, np.asarray(kept, dtype=np.int64)

