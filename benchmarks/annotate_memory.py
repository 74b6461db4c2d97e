"""Peak memory of `glip-label annotate` as the folder grows: results stream to disk, so RSS must stay flat.

Labels N small generated images with a glip-tiny checkpoint (random weights, token bias lifted so that every
image gets boxes) in a fresh process per N, and reports the peak resident set size of each run.

    python benchmarks/annotate_memory.py --counts 200 2000 --out benchmarks/results/annotate_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, time
from glip_label.runs.annotate import annotate
from glip_label.runs.annotate_options import AnnotateOptions
t0 = time.perf_counter()
options = AnnotateOptions(source=sys.argv[1], out=sys.argv[2], prompt="thing. other. stuff.", model=sys.argv[3],
                          threshold=0.2, formats=("coco", "odvg", "yolo", "labelstudio"))
summary = annotate(options, progress=False)
boxes = sum(summary.boxes_per_class.values())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, summary.labeled, boxes, time.perf_counter() - t0)
"""


def make_images(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def make_checkpoint(path: Path) -> None:
    import torch

    from glip_label.predictor import load_model

    predictor = load_model(None, config="glip-tiny", seed=0)
    with torch.no_grad():
        predictor.model.rpn.head.bias0.fill_(0.0)
    predictor.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/annotate_memory.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "tiny.pth")
        for count in args.counts:
            images = tmp / f"images{count}"
            make_images(images, count)
            line = subprocess.run([sys.executable, "-c", CHILD, str(images), str(tmp / f"out{count}"),
                                   str(tmp / "tiny.pth")], check=True, capture_output=True, text=True).stdout
            rss_kb, labeled, boxes, seconds = line.split()[-4:]
            rows.append({"images": count, "labeled": int(labeled), "boxes": int(boxes),
                         "peak_rss_mb": int(rss_kb) / 1024, "seconds": float(seconds)})
            print(rows[-1], flush=True)
    base = rows[0]["peak_rss_mb"]
    result = {"benchmark": "annotate peak RSS vs folder size", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {resource.getpagesize()} B pages, python {platform.python_version()}",
              "rows": rows, "rss_ratio_last_to_first": rows[-1]["peak_rss_mb"] / base}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
