"""`calibrate`'s options and the names of its criteria, free of numpy and torch: the CLI imports them at
start-up (`--evidence`'s default) and every `glip-label` call pays for what it imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# glip_label.runs.thresholds says what each criterion does and how EVIDENCE was chosen.
CRITERIA = ("micro-f1", "class-f1", "global")
EVIDENCE = 0.75


@dataclass
class CalibrateOptions:
    gold: str
    out: Path
    prompt: str | None = None
    classes_file: str | None = None
    ontology: str | None = None
    model: str | None = "glip-t"
    config: str | list[str] | None = None  # a preset, a yaml, or yamls merged in order (repeatable --config)
    target_precision: float | None = None
    criterion: str = "micro-f1"
    evidence: float = EVIDENCE
    floor: float = 0.05
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    tta: Any = None  # glip_label.tta.TTAOptions or None

    def validate(self) -> None:
        if self.target_precision is not None and not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"--target-precision must be in (0, 1], got {self.target_precision}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"--criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if not 0.0 <= self.evidence < 1.0:
            raise ValueError(f"--evidence must be in [0, 1), got {self.evidence}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"--floor must be in [0, 1), got {self.floor}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")


__all__ = ["CRITERIA", "EVIDENCE", "CalibrateOptions"]
