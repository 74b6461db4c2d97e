"""Which keys of a GLIP checkpoint mean what: the DDP prefix, the keys a model may do without, the prompt.

The official snapshots name every model key `module.` + the key (DDP); keys a re-implementation may
drop are those of the official checkpoint layout that carry nothing the model needs (microsoft/GLIP
`maskrcnn_benchmark/modeling/rpn/vldyhead.py` builds them: `cls_logits`, the anchor generator's cell
anchors, the heads of training-only losses, `tunable_linear`), plus BERT's pooler and position ids
(transformers' `BertModel`).
"""

from __future__ import annotations

import re

from torch import Tensor

MODULE_PREFIX = "module."
ANCHOR_PREFIX = "rpn.anchor_generator."
# The official prompt-tuning parameter (MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER; microsoft/GLIP
# maskrcnn_benchmark/modeling/rpn/vldyhead.py, `VLDyHeadModule.__init__`): one row added per text token.
PROMPT_KEY = "rpn.tunable_linear.weight"

# Checkpoint keys (without `module.`) that may be present in official files but carry nothing a
# model needs: the dead `cls_logits` conv, anchor cells (recomputed from the config), BERT's
# position ids (a non-persistent buffer in current transformers), the unused BERT pooler, and heads
# of training-only losses. They are dropped only when the model has no such key; a model that does
# have one gets it loaded and checked like any other key.
IGNORABLE_KEY_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"^rpn\.head\.cls_logits\.(weight|bias)$",
        r"^rpn\.anchor_generator\.",
        r"(^|\.)embeddings\.position_ids$",
        r"^language_backbone\.body\.model\.pooler\.",
        r"^rpn\.resizer\.",
        r"^rpn\.head\.mlm_head\.",
        r"^rpn\.loss_evaluator\.shallow_",
        r"^rpn\.tunable_linear\.",
    )
)
# Of the ignorable keys, these change inference results when dropped (prompt-tuned models), so
# dropping them is worth a warning.
BEHAVIOUR_CHANGING_PATTERN = re.compile(r"^rpn\.tunable_linear\.")


def is_ignorable_key(key: str) -> bool:
    return any(p.search(key) for p in IGNORABLE_KEY_PATTERNS)


def strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip `module.` only when every key has it, like the official strip_prefix_if_present."""
    if state and all(k.startswith(MODULE_PREFIX) for k in state):
        return {k[len(MODULE_PREFIX) :]: v for k, v in state.items()}
    return state


__all__ = [
    "ANCHOR_PREFIX",
    "BEHAVIOUR_CHANGING_PATTERN",
    "IGNORABLE_KEY_PATTERNS",
    "MODULE_PREFIX",
    "PROMPT_KEY",
    "is_ignorable_key",
    "strip_module_prefix",
]
