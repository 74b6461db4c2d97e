"""The one table of floating-point dtype names, and the device check every command runs first.

Why one module: `--dtype` (annotate, pseudo-caption, evaluate), `--amp` (train-student), `convert-weights
--dtype`, `predict(..., dtype=)` and `GLIPPredictor.save(dtype=)` all take the same names; parsing them in one
place gives every entry point the same spellings and the same one-line error.

Half precision follows the official code's mixed-precision rules (it trains and evaluates under AMP): the
deformable convolution runs in fp32 (`custom_fwd(cast_inputs=torch.float32)` in the official DCN), softmaxes
are taken in fp32, and box decoding, scores and NMS run on fp32 copies of the head outputs. fp32 is the exact,
parity-tested default; fp16 and bf16 agree with it within the tolerances of tests/test_half_precision.py.
"""

from __future__ import annotations

import numpy as np
import torch

from glip_label.records import Detections

# Accepted spellings -> dtype. The first name of each dtype is the canonical one (what run.json records).
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
HALF_DTYPES = (torch.float16, torch.bfloat16)
# `--amp` takes the half names only (fp32 is "no --amp").
AMP_NAMES = ("bf16", "fp16")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'fp32' / 'fp16' / 'bf16' (or float32, float16, half, bfloat16, any case, or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"unsupported dtype {name}; choose fp32, fp16 or bf16")
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose fp32, fp16 or bf16") from None


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'fp16' (the canonical name of the table)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; choose fp32, fp16 or bf16")


def parse_amp(name: str | None) -> torch.dtype | None:
    """`--amp`: None (off), 'fp16' or 'bf16' -> the autocast dtype (None when off)."""
    if name is None:
        return None
    dtype = parse_dtype(name)
    if dtype not in HALF_DTYPES:
        raise ValueError(f"amp must be one of {AMP_NAMES} (or unset for fp32), got {name!r}")
    return dtype


def check_device(device: str | torch.device | None) -> torch.device | None:
    """A device torch can use here, or a ValueError with one line that says why not (None stays None).

    Why: without a GPU, torch fails on `cuda` deep inside the first `.to()` with a message about drivers or
    the build; a user who typed `--device cuda` on a CPU machine should hear that before any work starts.
    """
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU here (torch.cuda.is_available() is False); "
                             "use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"unsupported device {str(device)!r}; use cpu, cuda or cuda:N")
    return parsed


def agreement(
    reference: Detections, other: Detections, min_score: float = 0.3, min_iou: float = 0.9, score_tol: float = 0.02
) -> tuple[int, int]:
    """How many reference boxes scoring above `min_score` `other` finds again: (found, total).

    A reference box (best first) is found by a not yet matched box of `other` with the same label, IoU >=
    `min_iou` and a score within `score_tol`; the one with the highest IoU is taken. `other` should be
    kept down to a lower threshold than `min_score`, so that a box that scores 0.299 instead of 0.301
    still counts. This is the acceptance rule for fp16/bf16 against fp32 (issue 19: at least 95% found).
    """
    from torchvision.ops import box_iou  # here: importing torchvision takes seconds, parse_dtype users need none

    ref = reference.select(reference.scores > min_score).sorted_by_score()
    if len(ref) == 0:
        return 0, 0
    if len(other) == 0:
        return 0, len(ref)
    iou = box_iou(torch.from_numpy(ref.boxes), torch.from_numpy(other.boxes)).numpy()  # [R, O]
    close = (ref.labels[:, None] == other.labels[None, :]) & (np.abs(ref.scores[:, None] - other.scores[None, :])
                                                              <= score_tol) & (iou >= min_iou)
    used = np.zeros(len(other), dtype=bool)
    found = 0
    for i in range(len(ref)):
        candidates = np.flatnonzero(close[i] & ~used)
        if len(candidates):
            used[candidates[np.argmax(iou[i, candidates])]] = True
            found += 1
    return found, len(ref)


__all__ = ["AMP_NAMES", "agreement", "DTYPES", "HALF_DTYPES", "check_device", "dtype_name", "parse_amp", "parse_dtype"]
