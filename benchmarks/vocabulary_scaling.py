"""Seconds per 800x1200 image on CPU against the vocabulary size (project issue 17), in one run.

Vocabularies: the first 4 COCO names and the prompts/ files (80 COCO, 365 Objects365, 601 Open Images,
1203 LVIS names), split into prompt chunks of <= 256 tokens as the predictor does. Modes:

  fast       GLIPPredictor defaults: the image's text-independent features computed once and reused by
             every chunk (backbone + FPN; for GLIP-T(A), which has no fusion, also the head's tower, boxes
             and centerness), prompt encoded once (cached)
  no-reuse   the same code with reuse_features=False: the whole network once per chunk
  official   official-like (as benchmarks/inference_speed.py builds it): the whole network per chunk,
             prompt padded to 256 tokens and encoded again for every image, torchvision's deformable conv

Models: glip-t and glip-t-a with random weights (benchmarks' `random_glip()`, token bias lifted so the
post-processing sees candidate boxes). Each setting times whole `predict()` calls on one image after a
warm-up on the same model (the prompt's text encoding is cached before timing, except in the official-like
mode, which re-encodes by design). The official-like mode costs ~15 s per chunk and image, so by default it
runs only at the vocabulary sizes listed in --official-sizes (1203: the acceptance point).

    python benchmarks/vocabulary_scaling.py                 # full run (long on 2 CPU cores)
    python benchmarks/vocabulary_scaling.py --quick         # 320x480, 4 and 80 names: checks it all runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference_speed import make_image, random_glip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VOCABULARIES = {4: "coco80.txt", 80: "coco80.txt", 365: "objects365.txt", 601: "openimages.txt", 1203: "lvis.txt"}


def vocabulary(size: int) -> list[str]:
    names = [n.strip() for n in (REPO / "prompts" / VOCABULARIES[size]).read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")][:size]
    if len(names) != size:
        raise ValueError(f"prompts/{VOCABULARIES[size]} has {len(names)} names, expected {size}")
    return names


def time_predict(predictor, image, names: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(image, names)
        times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict:
    import torch

    from glip_label.model import dcn
    from glip_label.predictor import GLIPPredictor

    torch.set_num_threads(args.threads)
    image = make_image(args.height, args.width, seed=0)
    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": args.threads, "torch": torch.__version__,
                    "load_average_start": os.getloadavg()},
        "image": [args.height, args.width], "runs": args.runs, "rows": [],
    }
    out = Path(args.out_json)
    models = {}
    for model_name in args.models:
        fast = random_glip(model_name, args.height, args.width)
        models[model_name] = {
            "fast": fast,
            "no-reuse": GLIPPredictor(fast.model, reuse_features=False),
            "official": GLIPPredictor(fast.model, pad_prompt=True, cache_text=False, reuse_features=False),
        }
        for predictor in models[model_name].values():
            predictor.config = fast.config  # random_glip's image size settings
        time_predict(fast, image, vocabulary(4), 1)  # warm-up: allocator, kernels
    for size in sorted(args.sizes, reverse=True):  # the acceptance point (LVIS) first
        names = vocabulary(size)
        for model_name, modes in models.items():
            chunks = len(modes["fast"].encode_prompt(names))
            for mode, predictor in modes.items():
                if mode == "official" and size not in args.official_sizes:
                    continue
                if mode != "official":
                    predictor.encode_prompt(names)  # cached before timing (encoded once per prompt in use)
                dcn.FAST_CPU_DCN = mode != "official"
                times = time_predict(predictor, image, names, args.runs)
                dcn.FAST_CPU_DCN = True
                row = {"model": model_name, "classes": size, "chunks": chunks, "mode": mode,
                       "seconds_per_image": min(times), "times_s": times, "load_average": os.getloadavg()}
                results["rows"].append(row)
                results["ratios"] = ratios(results["rows"])
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(results, indent=1))
    results["machine"]["load_average_end"] = os.getloadavg()
    results["ratios"] = ratios(results["rows"])
    out.write_text(json.dumps(results, indent=1))
    return results


def ratios(rows: list[dict]) -> list[dict]:
    """Per model and vocabulary: baseline seconds / fast seconds."""
    table = {(r["model"], r["classes"], r["mode"]): r["seconds_per_image"] for r in rows}
    out = []
    for (model, size, mode), seconds in sorted(table.items()):
        if mode == "fast":
            entry = {"model": model, "classes": size}
            for baseline in ("no-reuse", "official"):
                if (model, size, baseline) in table:
                    entry[f"{baseline}/fast"] = table[(model, size, baseline)] / seconds
            out.append(entry)
    return out


def plot(results: dict, path: Path) -> None:
    """Seconds per image against vocabulary size, one line per model and mode (matplotlib, else Pillow)."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in results["rows"]:
        series.setdefault((r["model"], r["mode"]), []).append((r["classes"], r["seconds_per_image"]))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pillow(series, path)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, mode), points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", linestyle="-" if mode == "fast" else "--", label=f"{model} {mode}")
    ax.set_xlabel("class names in the vocabulary")
    ax.set_ylabel(f"seconds per {results['image'][0]}x{results['image'][1]} image (CPU)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_pillow(series: dict[tuple[str, str], list[tuple[int, float]]], path: Path) -> None:
    import math

    from PIL import Image, ImageDraw

    width, height, margin = 900, 560, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [math.log10(y) for pts in series.values() for _, y in pts]
    x0, x1, y0, y1 = 0, max(xs), min(ys), max(ys) + 1e-9

    def at(x: float, y: float) -> tuple[float, float]:
        return (margin + (x - x0) / (x1 - x0) * (width - 2 * margin),
                height - margin - (math.log10(y) - y0) / (y1 - y0) * (height - 2 * margin))

    draw.rectangle((margin, margin, width - margin, height - margin), outline="black")
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for k, ((model, mode), points) in enumerate(sorted(series.items())):
        pts = [at(x, y) for x, y in sorted(points)]
        colour = colours[k % len(colours)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for px, py in pts:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        draw.text((margin + 10, margin + 10 + 14 * k), f"{model} {mode}", fill=colour)
    draw.text((width // 2 - 80, height - margin + 25), "class names (x), seconds per image (log y)", fill="black")
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["glip-t-a", "glip-t"])
    parser.add_argument("--sizes", nargs="+", type=int, default=sorted(VOCABULARIES), choices=sorted(VOCABULARIES))
    parser.add_argument("--official-sizes", nargs="*", type=int, default=[1203])
    parser.add_argument("--runs", type=int, default=1, help="timed predict() calls per setting (min is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suffers least on a shared machine)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--quick", action="store_true", help="320x480, 4 and 80 names, official-like at 80")
    parser.add_argument("--out-json", default=str(RESULTS / "vocabulary_scaling.json"))
    parser.add_argument("--out-png", default=str(RESULTS / "vocabulary_scaling.png"))
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out-json (no measuring)")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out_json).read_text()), Path(args.out_png))
        return
    if args.quick:
        args.height, args.width, args.sizes, args.official_sizes = 320, 480, [4, 80], [80]
        args.out_json = args.out_json.replace(".json", "_quick.json")
        args.out_png = args.out_png.replace(".png", "_quick.png")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args)
    plot(results, Path(args.out_png))
    for entry in results["ratios"]:
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
