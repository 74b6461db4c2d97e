"""`annotate`'s options (what a run is asked) and summary (what it did)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glip_label.runs.run_options import RunOptions

FORMATS = ("coco", "odvg", "yolo", "labelstudio")
DEFAULT_FORMATS = ("coco", "odvg")


@dataclass
class AnnotateOptions(RunOptions):
    """Everything `annotate` takes: its input and output, the classes, how boxes are kept and written; the
    teacher, engine, resume, tta and report options are `RunOptions`'."""

    source: str
    out: Path
    prompt: str | None = None
    classes_file: str | None = None
    ontology: str | None = None
    threshold: float = 0.35
    nms_iou: float | None = None
    agnostic_nms: bool = False
    max_dets: int = 100
    min_box_size: float = 0.0
    formats: tuple[str, ...] = DEFAULT_FORMATS
    category_id_base: int = 1
    save_vis: int = 0
    batch_size: int = 1
    workers: int = 2
    recursive: bool = True

    def validate(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, got {self.engine!r}")
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"--nms-iou must be in (0, 1], got {self.nms_iou}")
        if self.batch_size < 1 or self.max_dets < 1:
            raise ValueError("--batch-size and --max-dets must be >= 1")
        if self.save_vis < 0:
            raise ValueError(f"--save-vis is how many pictures of the boxes to draw (0: none), got {self.save_vis}")
        if self.model is None and not self.random_init:
            raise ValueError("no --model given (pass --random-init to label with an untrained model)")
        if self.tta:
            self.tta_options()

    def tta_options(self):
        """The test-time augmentation settings (glip_label.tta), or None without --tta."""
        from glip_label.tta import TTAOptions

        return TTAOptions(scales=tuple(self.tta_scales), merge=self.tta_merge, max_detections=self.max_dets) \
            if self.tta else None


@dataclass
class AnnotateSummary:
    """What an annotate run did: counts, speed, and the files it wrote (relative to `out`)."""

    out: Path
    images: int
    labeled: int
    errors: int
    empty: int
    boxes_per_class: dict[str, int]
    seconds: float
    images_per_second: float
    files: dict[str, str]
