"""The Ray engine: a tool's fixed batches labeled by a pool of long-lived Ray actors, results back in order.

read (the driver streams the tool's batches) -> actor pool (each actor `load`s the labeler's model once and
keeps it for the whole run) -> ordered results back to the driver, which writes the sharded run journal
exactly as the local engine does (same batches, same labeler: the same records; resumable the same way).

The pool is a set of Ray actors fed through a bounded window of in-flight batches (2 per actor), so the
driver holds a few batches, never the dataset, and a source of any length streams through. (A Ray Data
`map_batches` pool lives only as long as its dataset: streaming an unbounded source through it means one
dataset per window and a model load per actor per window, which this engine avoids.)

On one machine `ray.init()` starts a local instance; on a cluster start Ray with `ray start --head` /
`ray start --address=HEAD:6379` on each node and pass `--ray-address auto` (or HEAD:6379). On a multi-GPU
node, `--ray-actors N --ray-gpus-per-actor 1` gives each actor its own GPU.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from glip_label.runs.labeler import ItemResult, Labeler

IN_FLIGHT_PER_ACTOR = 2


@dataclass
class RayOptions:
    """Where and how wide the Ray engine runs (the `--ray-*` options of annotate and pseudo-caption)."""

    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


class LabelerActor:
    """One Ray actor: loads the labeler's model once, then labels pickled batches for the rest of the run."""

    def __init__(self, labeler_bytes: bytes) -> None:
        self.labeler: Labeler = pickle.loads(labeler_bytes)
        self.labeler.load()

    def label(self, batch_bytes: bytes) -> bytes:
        return pickle.dumps(self.labeler.label_batch(pickle.loads(batch_bytes)))


def run_ray(labeler: Labeler, batches: Iterable[Sequence[Any]], options: RayOptions) -> Iterator[list[ItemResult]]:
    """Results of every batch, in batch order, labeled by `options.actors` Ray actors."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray engine needs Ray: pip install 'glip-label[ray]'") from exc
    if options.actors < 1:
        raise ValueError("--ray-actors must be >= 1")

    started_here = False
    if not ray.is_initialized():
        init_args: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": False}
        if options.address:
            init_args["address"] = options.address
        ray.init(**init_args)
        started_here = True
    try:
        actor_class = ray.remote(num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None)(
            LabelerActor)
        labeler_ref = ray.put(pickle.dumps(labeler))
        actors = [actor_class.remote(labeler_ref) for _ in range(options.actors)]
        in_flight: deque = deque()  # object refs of submitted batches, oldest first
        limit = IN_FLIGHT_PER_ACTOR * len(actors)
        for submitted, batch in enumerate(batches):
            if len(in_flight) >= limit:
                yield pickle.loads(ray.get(in_flight.popleft()))
            in_flight.append(actors[submitted % len(actors)].label.remote(pickle.dumps(list(batch))))
        while in_flight:
            yield pickle.loads(ray.get(in_flight.popleft()))
    finally:
        if started_here:
            ray.shutdown()
