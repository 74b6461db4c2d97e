"""Batch B against batch 1 on the same images in one process, interleaved (project issue 8's batch point).

`inference_speed.py` times each batch size in its own process on its own images (batch 1: image 0 only,
3 timed runs), so its batch-4-vs-1 comparison carries process-to-process and image-to-image noise of a
few per cent, while on CPU the two do the same work (batches run through the network image by image).
This script measures the difference directly: one model, the same B images, and R rounds that each
time `predict(images, batch_size=1)` and `predict(images, batch_size=B)` back to back, alternating which
goes first. It reports per-image times of every round and the ratio of the two totals
(throughput of batch B / throughput of batch 1; >= 1 means batch B is not slower).

    python benchmarks/batch_throughput.py                      # 800x1200, both prompts, B=4, 4 rounds
    python benchmarks/batch_throughput.py --quick              # 320x480, 1 round: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import PROMPTS, RESULTS, environment, make_image, prompt_classes, random_glip  # noqa: E402


def measure(prompt: str, batch: int, rounds: int, height: int, width: int) -> dict:
    predictor = random_glip("glip-t", height, width)
    images = [make_image(height, width, seed=i) for i in range(batch)]
    classes = prompt_classes(prompt)
    predictor.predict(images[:1], classes)  # warm-up: text cache, allocator, kernels

    per_image: dict[int, list[float]] = {1: [], batch: []}
    for r in range(rounds):
        order = (1, batch) if r % 2 == 0 else (batch, 1)
        for size in order:
            start = time.perf_counter()
            predictor.predict(images, classes, batch_size=size)
            per_image[size].append((time.perf_counter() - start) / batch)
    ratio = sum(per_image[1]) / sum(per_image[batch])
    return {"prompt": prompt, "batch": batch, "rounds": rounds, "images": batch,
            "per_image_s": {str(k): v for k, v in per_image.items()},
            "median_per_image_s": {str(k): statistics.median(v) for k, v in per_image.items()},
            "throughput_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320x480 image, 1 round")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=None, help="default 4 (quick: 1)")
    parser.add_argument("--prompts", nargs="+", choices=tuple(PROMPTS), default=list(PROMPTS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="tuned: the allocator setting the CLI applies (glip_label.runtime.keep_freed_memory)")
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args()
    if args.batch < 2:
        parser.error("--batch must be at least 2")

    import torch

    from glip_label.runtime import keep_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "tuned":
        keep_freed_memory()
    height, width = (320, 480) if args.quick else (800, 1200)
    rounds = args.rounds or (1 if args.quick else 4)
    rows = []
    for prompt in args.prompts:
        row = measure(prompt, args.batch, rounds, height, width)
        rows.append(row)
        medians = row["median_per_image_s"]
        print(f"{prompt}: batch 1 {medians['1']:.3f} s/image, batch {args.batch} {medians[str(args.batch)]:.3f} "
              f"s/image (medians of {rounds} rounds); throughput batch {args.batch} / batch 1 = "
              f"{row['throughput_ratio']:.4f}", flush=True)
    out = args.out_json or RESULTS / ("batch_throughput_quick.json" if args.quick else "batch_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"height": height, "width": width, "malloc": args.malloc, "rows": rows,
              "environment": environment(args.threads)}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
