"""The run engine shared by `annotate` and `pseudo-caption`: labelers' batches in, ordered results out.

A tool describes its work as a `glip_label.runs.labeler.Labeler`. Engines only move batches and results:
the local engine calls the labeler in this process, the Ray engine (`glip_label.runs.ray_engine`) in
long-lived actors; both yield results in batch order, and :func:`label_into_journal` writes them to the
tool's run journal. Same batches, same labeler, same thread count: the records are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from glip_label.runs.journal import RunJournal
from glip_label.runs.labeler import ItemResult, Labeler
from glip_label.runs.ray_engine import RayOptions, run_ray
from glip_label.runs.run_options import RunOptions


def run_local(labeler: Labeler, batches: Iterable[Sequence[Any]]) -> Iterator[list[ItemResult]]:
    """Label every batch in this process, in order."""
    labeler.load()
    for batch in batches:
        yield labeler.label_batch(batch)


def run_batches(labeler: Labeler, batches: Iterable[Sequence[Any]], engine: str,
                ray: RayOptions | None = None) -> Iterator[list[ItemResult]]:
    """Results of every batch, in order, from the chosen engine ("local" or "ray")."""
    if engine == "ray":
        return run_ray(labeler, batches, ray or RayOptions())
    if engine != "local":
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    return run_local(labeler, batches)


def label_into_journal(labeler: Labeler, batches: Iterable[Sequence[Any]], options: RunOptions, journal: RunJournal,
                       done: set[str], bar, on_batch: Callable[[int], None] | None = None) -> None:
    """Label every batch on the engine `options` name and record each result not in `done` in the journal.

    bar: a tqdm bar advanced per batch (closed at the end); on_batch: called with each batch's size.
    """
    ray = RayOptions(options.ray_address, options.ray_actors, options.ray_cpus_per_actor, options.ray_gpus_per_actor)
    for results in run_batches(labeler, batches, options.engine, ray):
        for result in results:
            if result.key not in done:
                journal.add(result.key, record=result.record, error=result.error)
        bar.update(len(results))
        if on_batch is not None:
            on_batch(len(results))
    bar.close()
    journal.flush()
