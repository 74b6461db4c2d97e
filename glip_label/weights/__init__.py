"""Where GLIP weights come from, and how they get into and out of a model: the public names, one job per module.

- hub.py: a short name ("glip-t") -> a file of the Hugging Face repo GLIPModel/GLIP, through the hub's cache;
- reading.py: a checkpoint file -> the model's state dict (memory-mapped, `weights_only`, damaged files named);
- keys.py: which checkpoint keys mean what (the DDP `module.` prefix, keys a model may lack, the prompt);
- layouts.py: which released architecture a state dict holds, from key names and shapes alone;
- loading.py: strict loading into a model, every misfit named in one error;
- writing.py: saving in the official layout or as safetensors, and converting official snapshots;
- describe.py: what a checkpoint holds, for `glip-label info`.
"""

from __future__ import annotations

from glip_label.weights.describe import describe_checkpoint
from glip_label.weights.hub import HUB_FILES, HUB_REPO, WeightsNotAvailableError, resolve_weights
from glip_label.weights.keys import IGNORABLE_KEY_PATTERNS, PROMPT_KEY, is_ignorable_key
from glip_label.weights.layouts import guess_preset
from glip_label.weights.loading import CheckpointMismatchError, StateDiff, diff_state_shapes, load_state_dict_strict
from glip_label.weights.reading import (
    CheckpointContents,
    CheckpointError,
    open_checkpoint,
    read_checkpoint,
    read_config_metadata,
)
from glip_label.weights.writing import convert_weights, official_extra_buffers, save_checkpoint

__all__ = [
    "HUB_REPO",
    "HUB_FILES",
    "IGNORABLE_KEY_PATTERNS",
    "PROMPT_KEY",
    "CheckpointContents",
    "CheckpointError",
    "CheckpointMismatchError",
    "WeightsNotAvailableError",
    "StateDiff",
    "resolve_weights",
    "open_checkpoint",
    "read_checkpoint",
    "is_ignorable_key",
    "diff_state_shapes",
    "guess_preset",
    "load_state_dict_strict",
    "save_checkpoint",
    "official_extra_buffers",
    "read_config_metadata",
    "convert_weights",
    "describe_checkpoint",
]
