"""Throughput (image-caption pairs per second) of `glip-label pseudo-caption` by batch size.

Builds a caption jsonl of N pairs by repeating examples/captions.jsonl (absolute image paths; by default
the records' own "phrases" column is used, so no phrase chunker runs: `--phrases rule|auto` to include
one) and labels it with `glip_label.runs.pseudo_caption` at batch sizes 1, 4 and 8, for these teachers
(random weights, seeded):

  glip-tiny         as initialised: every token scores the 0.01 prior, under the 0.05 box floor, so no
                    pair gets a box (it measures the pipeline without box output)
  glip-tiny-boxes   the same with the token bias lifted to 0 and saved as an official-format .pth (as
                    tests/conftest.py's tiny_checkpoint), so that every pair gets boxes
  glip-t            (--model glip-t) GLIP-T with the token bias lifted, loaded once in this process

The model is loaded once per teacher and handed to `pseudo_caption` (load time is not counted); one
warm-up pass over a few pairs runs first. pairs/s is the tool's own figure (its wall clock from start to
the journal's last flush, final files excluded) and wall_pairs_per_s the whole call including the final files.

    python benchmarks/pseudo_caption_speed.py
    python benchmarks/pseudo_caption_speed.py --model glip-t --pairs 8 --batch-sizes 1 4
    python benchmarks/pseudo_caption_speed.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def make_source(path: Path, pairs: int) -> None:
    records = [json.loads(line) for line in (EXAMPLES / "captions.jsonl").read_text().splitlines() if line.strip()]
    with path.open("w") as f:
        for i in range(pairs):
            record = dict(records[i % len(records)])
            record["image"] = str((EXAMPLES / record["image"]).resolve())
            record["id"] = f"pair{i:05d}"
            f.write(json.dumps(record) + "\n")


def build_teacher(name: str, tmp: Path, device: str):
    """(predictor, model argument for PseudoCaptionOptions) for one teacher."""
    import torch

    from glip_label.predictor import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "glip-tiny":
            return load_model(None, config="glip-tiny", seed=0, device=device), None
        predictor = load_model(None, config="glip-t" if name == "glip-t" else "glip-tiny", seed=0, device=device)
    with torch.no_grad():
        predictor.model.rpn.head.bias0.fill_(0.0)
    if name == "glip-tiny-boxes":
        path = tmp / "tiny_boxes.pth"
        predictor.save(path)
        return load_model(path, device=device), str(path)
    return predictor, None


def run_once(predictor, model_arg: str | None, source: Path, out: Path, batch: int, threads: int | None,
             device: str, phrases: str) -> dict:
    from glip_label.runs.pseudo_caption import PseudoCaptionOptions, pseudo_caption

    options = PseudoCaptionOptions(source=str(source), out=out, model=model_arg, random_init=model_arg is None,
                                   batch_size=batch, torch_threads=threads, device=device, phrases=phrases,
                                   phrases_column="phrases" if phrases == "column" else None)
    start = time.perf_counter()
    summary = pseudo_caption(options, predictor=predictor, progress=False)
    wall = time.perf_counter() - start
    return {"pairs": summary.pairs, "grounded": summary.grounded, "skipped": summary.skipped,
            "boxes": summary.boxes, "seconds": summary.seconds, "pairs_per_s": summary.pairs_per_second,
            "wall_s": wall, "wall_pairs_per_s": summary.pairs / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="pairs in the generated source (default 16, quick 8)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--model", action="append", choices=("glip-tiny", "glip-tiny-boxes", "glip-t"),
                        help="teachers to run (repeatable; default glip-tiny and glip-tiny-boxes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--phrases", choices=("column", "rule", "auto"), default="column",
                        help="phrase source: the records' own (default), the rule chunker, or auto (spaCy if any)")
    parser.add_argument("--quick", action="store_true", help="8 pairs: checks the script works")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/pseudo_caption_speed[_quick].json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    pairs = args.pairs or (8 if args.quick else 16)
    teachers = args.model or ["glip-tiny", "glip-tiny-boxes"]
    suffix = "_quick" if args.quick else ""
    out_path = args.out or REPO / "benchmarks" / "results" / f"pseudo_caption_speed{suffix}.json"

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "captions.jsonl"
        make_source(source, pairs)
        warm_source = tmp / "warm.jsonl"
        make_source(warm_source, 2)
        for teacher in teachers:
            start = time.perf_counter()
            predictor, model_arg = build_teacher(teacher, tmp, args.device)
            load_s = time.perf_counter() - start
            run_once(predictor, model_arg, warm_source, tmp / f"warm-{teacher}", 2, args.threads, args.device,
                     args.phrases)
            for batch in args.batch_sizes:
                row = {"teacher": teacher, "batch_size": batch, "load_s": load_s,
                       **run_once(predictor, model_arg, source, tmp / f"out-{teacher}-{batch}", batch, args.threads,
                                  args.device, args.phrases)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del predictor
    result = {"benchmark": "pseudo-caption pairs/s by batch size", "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv), "pairs": pairs, "source": "examples/captions.jsonl repeated",
              "phrases": args.phrases,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                         f"torch {torch.__version__}, python {platform.python_version()}",
              "loadavg_start": [round(x, 2) for x in load_start],
              "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": rows}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
