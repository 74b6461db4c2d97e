"""What every labeling run is asked besides its input: the teacher, where it runs, resume and shards, tta, report.

`AnnotateOptions` and `PseudoCaptionOptions` extend :class:`RunOptions`, so these options are declared once
and mean the same in both tools; the CLI maps its options onto the fields (`glip_label.cli.option_map`).
"""

from __future__ import annotations

from dataclasses import dataclass

from glip_label.data.images import DEFAULT_MAX_PIXELS


@dataclass(kw_only=True)
class RunOptions:
    """The options the run engine and the predictor labelers read (`glip_label.runs.labeler.PredictorLabeler`,
    `glip_label.runs.engine.label_into_journal`). Keyword-only, so a tool's own fields keep their order."""

    model: str | None = "glip-t"
    config: str | list[str] | None = None  # a preset, a yaml, or yamls merged in order
    random_init: bool = False
    seed: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    resume: bool = False
    shard: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    flush_every: int = 64
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int = 1
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0
    torch_threads: int | None = None
    thresholds: str | None = None
    tta: bool = False
    tta_merge: str = "nms"
    tta_scales: tuple[float, ...] = (0.8, 1.0, 1.2)
    report: bool = False
