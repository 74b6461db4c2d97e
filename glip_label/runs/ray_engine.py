"""Run `pseudo-caption` batches on a Ray cluster with Ray Data: read -> map_batches (a pool of model actors) -> ordered
results back to the driver, which writes the sharded journal exactly as the local engine does.

Each Ray row is one of our fixed batches (pickled (key, item) pairs), so actors see the same batches as the local
engine and give the same records. Batches are submitted in windows to keep the driver's memory bounded; each
window reuses nothing from the last but the cluster, so a window costs one model load per actor.

On one machine `ray.init()` starts a local instance; on a cluster start Ray with `ray start --head` / `ray start
--address=HEAD:6379` on each node and pass `--ray-address auto` (or HEAD:6379).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

WINDOW_BATCHES = 256


class _Labeler:
    """A Ray Data actor: loads the teacher once, grounds one pickled batch per call."""

    def __init__(self, options_dict: dict[str, Any], finder_state: dict[str, Any]) -> None:
        from glip_label.runs.pseudo_caption import PhraseFinder, PseudoCaptionOptions, _load_predictor, _set_threads

        self.options = PseudoCaptionOptions(**options_dict)
        _set_threads(self.options.torch_threads)
        self.predictor = _load_predictor(self.options)
        self.finder = PhraseFinder(finder_state["mode"], finder_state["class_names"])

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        from glip_label.runs.pseudo_caption import label_batch

        out = []
        for payload in rows["payload"]:
            entries = pickle.loads(payload)
            results = label_batch(self.predictor, self.finder, entries, self.options.box_floor,
                                  self.options.max_pixels)
            out.append(pickle.dumps(results))
        return {"results": out}


def _windows(batches: Iterable[list], size: int) -> Iterator[list[list]]:
    window: list[list] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def run_ray(options, finder, batches: Iterable[list]) -> Iterator[list[dict[str, Any]]]:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError("the Ray engine needs Ray Data: pip install 'glip-label[ray]'") from exc

    started_here = False
    if not ray.is_initialized():
        init_args: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": False}
        if options.ray_address:
            init_args["address"] = options.ray_address
        ray.init(**init_args)
        started_here = True
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    options_dict = asdict(options)
    options_dict["out"] = str(options_dict["out"])
    finder_state = {"mode": finder.mode, "class_names": finder.class_names}
    try:
        for window in _windows(batches, WINDOW_BATCHES):
            dataset = ray.data.from_items([{"payload": pickle.dumps(batch)} for batch in window])
            labeled = dataset.map_batches(
                _Labeler,
                fn_constructor_args=(options_dict, finder_state),
                batch_size=1,
                concurrency=options.ray_actors,
                num_cpus=options.ray_cpus_per_actor,
                num_gpus=options.ray_gpus_per_actor or None,
            )
            for row in labeled.iter_rows():
                yield pickle.loads(row["results"])
    finally:
        if started_here:
            ray.shutdown()
