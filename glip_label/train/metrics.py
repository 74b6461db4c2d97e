"""What a run logs per step: out_dir/metrics.csv, and TensorBoard scalars when it is installed.

The columns are the official `maskrcnn_benchmark/engine/trainer.py`, `do_train` log line (loss, each
loss term, lr) plus the epoch, the gradient norm and the step time. On resume the rows logged after the
checkpoint are dropped, so the resumed run writes them again and the file reads as one run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from glip_label.io import atomic_write_text

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss_dot_product_token", "loss_reg", "loss_centerness")
METRIC_FIELDS = ("step", "epoch", "loss", *LOSS_NAMES, "lr", "grad_norm", "step_time_s")


class MetricsWriter:
    """metrics.csv (one row per logged step) and, when `torch.utils.tensorboard` imports, TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int | None) -> None:
        self.path = out_dir / "metrics.csv"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step)
        except Exception as exc:  # noqa: BLE001 - tensorboard is optional (ImportError or a broken install)
            log.debug("TensorBoard logging disabled: %s", exc)

    def _truncate_after(self, step: int) -> None:
        """Rows logged after the checkpoint belong to the killed run; the resumed run writes them again."""
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.DictReader(fh) if int(row["step"]) <= step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        new_file = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, lineterminator="\n")
            if new_file:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})
        if self._tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, float) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"train/{key}", value, row["step"])

    def write_validation(self, step: int, metrics: dict[str, Any]) -> None:
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"val/{key}", value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


__all__ = ["LOSS_NAMES", "METRIC_FIELDS", "MetricsWriter"]
