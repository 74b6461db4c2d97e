"""Inference speed of glip-label's fast path against two baselines, in one run (project issue 8).

Configurations, each measured in its own child process (so that each one's peak RSS is its own):

  fast        GLIPPredictor defaults: prompt unpadded and encoded once (cached), the pure-PyTorch CPU DCN;
              batches of 1, 4 and 8 same-size images
  fast-tvdcn  the same at batch 1 with torchvision's deform_conv2d (CPU only): isolates the DCN's share
  official    official-like: same weights, pad_prompt=True (256 tokens), cache_text=False (the prompt is
              encoded again for every image), batch 1, torchvision's DCN (`--official-dcn fast` to change)
  gdino       transformers GroundingDinoForObjectDetection, GroundingDINO-tiny shapes (Swin-T, BERT-base),
              random weights, batch 1, model forward only (inputs built outside the timed region)
  fast-fp16   (--device cuda only) the fast path under torch.autocast(float16), with its box agreement
              with fp32

for two prompts: 4 classes ("person. bicycle. car. dog.") and the 80 COCO classes (prompts/coco80.txt).
GLIP times are whole `predict()` calls (resize/normalise, network, post-processing, boxes back to pixels).
GLIP models have random weights (seeded) with the token bias lifted to 0 (as tests/conftest.py does), so
that the post-processing sees candidate boxes as with a trained model; `--keep-prior` leaves the init.

Also a micro-benchmark of the modulated deformable conv at DyHead P3 size (torchvision vs ours).

    python benchmarks/inference_speed.py                  # full run, 800x1200 (long on 2 CPU cores)
    python benchmarks/inference_speed.py --quick          # 320x480, 1 timed run: checks that it all works
    python benchmarks/inference_speed.py --device cuda    # adds fp16 autocast and its agreement with fp32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PROMPTS = {"four": "person. bicycle. car. dog.", "coco80": REPO / "prompts" / "coco80.txt"}
CONFIGS = ("fast", "fast-tvdcn", "official", "gdino")


# ---------------------------------------------------------------------------------------------- inputs
def make_image(height: int, width: int, seed: int):
    """A deterministic RGB test image: smooth colour noise with random rectangles and ellipses."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    noisy = np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1 = min(width - 1, x0 + int(rng.integers(20, max(21, width // 3))))
        y1 = min(height - 1, y0 + int(rng.integers(20, max(21, height // 3))))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def prompt_classes(name: str) -> list[str]:
    source = PROMPTS[name]
    if isinstance(source, Path):
        return [line.strip() for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [p.strip() for p in source.split(".") if p.strip()]


def random_glip(model: str, height: int, width: int, keep_prior: bool = False, **kwargs):
    """A seeded random-weight GLIP predictor that takes height x width images at their own size.

    Unless keep_prior, the token bias is lifted to 0 (as tests/conftest.py does) so that the
    post-processing sees candidate boxes as with a trained model.
    """
    import warnings

    import torch

    from glip_label.predictor import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised": intended here
        predictor = load_model(None, config=model, seed=0, **kwargs)
    if not keep_prior:
        with torch.no_grad():
            predictor.model.rpn.head.bias0.fill_(0.0)
    # Feed the image at its own size (the predictor resizes to an 800 short side by default).
    predictor.config.min_size_test = min(height, width)
    predictor.config.max_size_test = max(predictor.config.max_size_test, height, width)
    return predictor


# ---------------------------------------------------------------------------------------------- child side
def _rss_now_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, warmup: int, runs: int, device: str) -> tuple[list[float], object]:
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def _box_agreement(ref, test, score_min: float = 0.3, iou_min: float = 0.9, score_tol: float = 0.02) -> dict:
    """Share of `ref` boxes above score_min matched by a `test` box of the same label (IoU, score diff)."""
    import torch
    from torchvision.ops import box_iou

    keep = ref.scores > score_min
    if not keep.any():
        return {"ref_boxes": 0, "matched": 0, "share": None}
    rb, rs, rl = torch.from_numpy(ref.boxes[keep]), torch.from_numpy(ref.scores[keep]), ref.labels[keep]
    tb, ts, tl = torch.from_numpy(test.boxes), torch.from_numpy(test.scores), test.labels
    if len(tb) == 0:
        return {"ref_boxes": int(keep.sum()), "matched": 0, "share": 0.0}
    iou = box_iou(rb, tb)
    ok = (iou >= iou_min) & ((rs[:, None] - ts[None, :]).abs() <= score_tol)
    ok &= torch.from_numpy(rl[:, None] == tl[None, :])
    matched = int(ok.any(dim=1).sum())
    return {"ref_boxes": int(keep.sum()), "matched": matched, "share": matched / int(keep.sum())}


def _run_glip(spec: dict) -> dict:
    import torch

    from glip_label.model import dcn

    mode, device = spec["config"], spec["device"]
    official = mode == "official"
    height, width = spec["height"], spec["width"]
    t0 = time.perf_counter()
    predictor = random_glip(spec["model"], height, width, spec["keep_prior"], device=device, pad_prompt=official,
                            cache_text=not official)
    dcn.FAST_CPU_DCN = mode not in ("fast-tvdcn", "official") or (official and spec["official_dcn"] == "fast")
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_now_mb()
    batch = spec["batch"]
    images = [make_image(height, width, seed=i) for i in range(batch)]
    prompt = prompt_classes(spec["prompt"])
    result: dict = {}
    if mode == "fast-fp16":
        reference = predictor.predict(images[0], prompt)  # fp32, also warms the text cache
        torch.cuda.reset_peak_memory_stats()

        def step():
            with torch.autocast("cuda", dtype=torch.float16):
                return predictor.predict(images, prompt, batch_size=batch)

        times, out = _timed(step, spec["warmup"], spec["runs"], device)
        with torch.autocast("cuda", dtype=torch.float16):  # a lower threshold so near-0.3 fp16 boxes can match
            test = predictor.predict(images[0], prompt, threshold=0.25)
        result["fp16_agreement"] = _box_agreement(reference, test)
    else:
        times, out = _timed(lambda: predictor.predict(images, prompt, batch_size=batch), spec["warmup"],
                            spec["runs"], device)
    result.update(load_s=load_s, rss_after_load_mb=rss_loaded, batch_times_s=times,
                  boxes_first_image=len(out[0]), dcn=("ours" if dcn.FAST_CPU_DCN and device == "cpu" else
                                                      "torchvision"),
                  text_tokens=256 if official else None)
    return result


def _run_gdino(spec: dict) -> dict:
    import numpy as np
    import torch
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    from glip_label.text.prompts import build_detection_prompt, load_tokenizer

    device = spec["device"]
    t0 = time.perf_counter()
    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      out_features=["stage2", "stage3", "stage4"])
    config = GroundingDinoConfig(backbone_config=swin, text_config=BertConfig())
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval().to(device)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_now_mb()
    # GroundingDINO's input: RGB / 255 normalised with the ImageNet mean/std, at the image's own size.
    image = np.asarray(make_image(spec["height"], spec["width"], seed=0), dtype=np.float32) / 255.0
    image = (image - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    pixel_values = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(device)
    text = build_detection_prompt(prompt_classes(spec["prompt"])).text + "."  # GroundingDINO ends with "."
    ids = load_tokenizer().encode(text).ids[: config.max_text_len]
    input_ids = torch.tensor([ids], device=device)
    attention_mask = torch.ones_like(input_ids)

    def step():
        with torch.inference_mode():
            return model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=torch.zeros_like(input_ids))

    times, _ = _timed(step, spec["warmup"], spec["runs"], device)
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "batch_times_s": times, "text_tokens": len(ids),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _run_dcn(spec: dict) -> dict:
    """torchvision vs the pure-PyTorch CPU DCN at DyHead P3 size of the benchmark image (interleaved runs)."""
    import torch
    from torchvision.ops import deform_conv2d

    from glip_label.model.dcn import deform_conv2d_cpu

    torch.manual_seed(0)
    # P3 (stride 8) of the padded network input, as the predictor pads to a multiple of 32.
    ph, pw = -(-spec["height"] // 32) * 32 // 8, -(-spec["width"] // 32) * 32 // 8
    rows = []
    for stride in (1, 2):
        x = torch.randn(1, 256, ph * stride, pw * stride)
        offset = torch.randn(1, 18, ph, pw)
        mask = torch.rand(1, 9, ph, pw)
        weight, bias = torch.randn(256, 256, 3, 3) * 0.01, torch.randn(256)
        tv_times, our_times = [], []
        with torch.inference_mode():
            ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
            ours = deform_conv2d_cpu(x, offset, weight, bias, mask, stride=stride, padding=1)
            for _ in range(spec["runs"]):
                t = time.perf_counter()
                deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
                tv_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                deform_conv2d_cpu(x, offset, weight, bias, mask, stride=stride, padding=1)
                our_times.append(time.perf_counter() - t)
        tv, fast = statistics.median(tv_times), statistics.median(our_times)
        rows.append({"stride": stride, "input": list(x.shape), "output": list(ref.shape),
                     "torchvision_s": tv, "ours_s": fast, "speedup": tv / fast,
                     "torchvision_min_s": min(tv_times), "ours_min_s": min(our_times),
                     "max_abs_diff_over_scale": ((ours - ref).abs().max() / ref.abs().max()).item()})
    return {"rows": rows}


def child_main(spec: dict) -> None:
    import torch

    from glip_label.runtime import keep_freed_memory

    malloc_tuned = keep_freed_memory() if spec.get("malloc_tuned") else False
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    kind = spec["config"]
    if kind == "dcn":
        result = _run_dcn(spec)
    elif kind == "gdino":
        result = _run_gdino(spec)
    else:
        result = _run_glip(spec)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["threads"] = torch.get_num_threads()
    result["malloc_tuned"] = malloc_tuned
    if spec["device"] == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- parent side
def run_child(spec: dict, timeout: float | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    result = json.loads(lines[-1][len("RESULT "):])
    result["child_wall_s"] = time.perf_counter() - start
    times = result.get("batch_times_s")
    if times:
        batch = spec.get("batch", 1)
        median = statistics.median(times)
        result.update(batch_median_s=median, per_image_s=median / batch, images_per_s=batch / median)
    return result


def plan(args: argparse.Namespace) -> list[dict]:
    common = {"height": args.height, "width": args.width, "device": args.device, "threads": args.threads,
              "warmup": args.warmup, "model": args.model, "keep_prior": args.keep_prior,
              "official_dcn": args.official_dcn}
    specs = []

    def tuned(config: str) -> bool:  # "cli": the fast path runs as the CLI runs it, the baselines as they ship
        return args.malloc == "tuned" or (args.malloc == "cli" and config.startswith("fast"))

    for prompt in args.prompts:
        if "fast" in args.configs:
            for batch in args.batch_sizes:
                specs.append({**common, "config": "fast", "prompt": prompt, "batch": batch, "runs": args.runs})
        if args.device == "cuda":
            for batch in args.batch_sizes:
                specs.append({**common, "config": "fast-fp16", "prompt": prompt, "batch": batch, "runs": args.runs})
        if "fast-tvdcn" in args.configs and args.device == "cpu":
            specs.append({**common, "config": "fast-tvdcn", "prompt": prompt, "batch": 1, "runs": args.baseline_runs})
        if "official" in args.configs:
            specs.append({**common, "config": "official", "prompt": prompt, "batch": 1, "runs": args.baseline_runs})
        if "gdino" in args.configs:
            specs.append({**common, "config": "gdino", "prompt": prompt, "batch": 1, "runs": args.baseline_runs})
    return [{**spec, "malloc_tuned": tuned(spec["config"])} for spec in specs]


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# Inference speed ({'quick check, ' if result['settings']['quick'] else ''}"
        f"{result['settings']['height']}x{result['settings']['width']}, {result['settings']['device']})",
        "",
        f"Measured {result['date']} on {env['cpu']} ({env['cpu_count']} cores, {env['threads']} torch threads), "
        f"torch {env['torch']}, torchvision {env['torchvision']}, transformers {env['transformers']}. "
        f"Load average at start / end: {env['loadavg_start']} / {env['loadavg_end']}.",
        f"Median of {result['settings']['runs']} timed runs (fast path) or {result['settings']['baseline_runs']} "
        f"(baselines) after {result['settings']['warmup']} warm-up; peak RSS of each configuration's own process "
        "(model build included).",
        "",
        "malloc tuned: the process ran `glip_label.runtime.keep_freed_memory()` (as the glip-label CLI does).",
        "",
        "| configuration | prompt | batch | latency / image (s) | images/s | peak RSS (MB) | boxes (image 1) | "
        "malloc tuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['config']} | {row['prompt']} | {row['batch']} | error: "
                         f"{row['error'].splitlines()[-1][:80] if row['error'] else ''} | | | | |")
            continue
        lines.append(f"| {row['config']} | {row['prompt']} | {row['batch']} | {_fmt(row['per_image_s'])} | "
                     f"{_fmt(row['images_per_s'], 2)} | {_fmt(row['peak_rss_mb'], 0)} | "
                     f"{row.get('boxes_first_image', '-')} | {'yes' if row.get('malloc_tuned') else 'no'} |")
    lines += ["", "## Ratios (baseline latency / fast-path latency per image)", "",
              "| prompt | fast batch | official-like / fast | fast-tvdcn / fast | gdino / fast |",
              "|---|---|---|---|---|"]
    for ratio in result["ratios"]:
        lines.append(f"| {ratio['prompt']} | {ratio['fast_batch']} | {_fmt(ratio.get('official'), 2)} | "
                     f"{_fmt(ratio.get('fast-tvdcn'), 2)} | {_fmt(ratio.get('gdino'), 2)} |")
    fp16 = [r for r in result["rows"] if r.get("fp16_agreement")]
    if fp16:
        lines += ["", "## fp16 autocast agreement with fp32 (fp32 boxes with score > 0.3 matched by an fp16 box of the "
                  "same label at IoU >= 0.9 and |score diff| <= 0.02)", "", "| prompt | batch | fp32 boxes | matched | "
                  "share |", "|---|---|---|---|---|"]
        for row in fp16:
            a = row["fp16_agreement"]
            lines.append(f"| {row['prompt']} | {row['batch']} | {a['ref_boxes']} | {a['matched']} | "
                         f"{_fmt(a['share'], 4)} |")
    if result.get("dcn"):
        lines += ["", "## Modulated deformable conv, DyHead P3 size (256 -> 256, 3x3)", "",
                  "| stride | input | torchvision (s) | ours (s) | speedup | max abs diff / output scale |",
                  "|---|---|---|---|---|---|"]
        for row in result["dcn"].get("rows", []):
            lines.append(f"| {row['stride']} | {'x'.join(map(str, row['input']))} | {_fmt(row['torchvision_s'])} | "
                         f"{_fmt(row['ours_s'])} | {_fmt(row['speedup'], 2)} | {row['max_abs_diff_over_scale']:.1e} |")
    return "\n".join(lines) + "\n"


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    ok = [r for r in rows if "error" not in r]
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        fast = {r["batch"]: r["per_image_s"] for r in ok if r["config"] == "fast" and r["prompt"] == prompt}
        base = {r["config"]: r["per_image_s"] for r in ok if r["config"] in ("official", "fast-tvdcn", "gdino")
                and r["prompt"] == prompt}
        for batch, latency in sorted(fast.items()):
            out.append({"prompt": prompt, "fast_batch": batch, **{k: v / latency for k, v in base.items()}})
    return out


def environment(threads: int | None) -> dict:
    import torch
    import torchvision
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="320x480 image, 1 timed run: checks the script works")
    parser.add_argument("--height", type=int, default=None, help="image height (default 800, quick 320)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 1200, quick 480)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs of the fast path (default 3, quick 1)")
    parser.add_argument("--baseline-runs", type=int, default=None,
                        help="timed runs of fast-tvdcn, official and gdino (default 2, quick 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompts", nargs="+", choices=tuple(PROMPTS), default=list(PROMPTS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--model", default="glip-t", help="GLIP preset for the fast and official-like paths")
    parser.add_argument("--official-dcn", choices=("torchvision", "fast"), default="torchvision",
                        help="DCN of the official-like mode (default torchvision's op)")
    parser.add_argument("--keep-prior", action="store_true", help="do not lift the token bias (almost no boxes)")
    parser.add_argument("--dcn-runs", type=int, default=None,
                        help="runs of the DCN micro-benchmark (default 7, quick 3; 0 skips it)")
    parser.add_argument("--only-dcn", action="store_true", help="run only the DCN micro-benchmark")
    parser.add_argument("--malloc", choices=("cli", "default", "tuned"), default="cli",
                        help="glibc malloc keeping freed memory (glip_label.runtime.keep_freed_memory): 'cli' "
                        "(default) for the fast configurations only, as the glip-label CLI runs them, the "
                        "baselines with the default allocator as they ship; 'tuned' for all; 'default' for none")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait before each configuration (default 30, quick 0): on the 2-core VM a "
                        "process started right after one that freed ~3 GB ran up to 15%% slower")
    parser.add_argument("--child-timeout", type=float, default=None, help="seconds per configuration")
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument("--out-md", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    args.height = args.height or (320 if args.quick else 800)
    args.width = args.width or (480 if args.quick else 1200)
    args.runs = args.runs or (1 if args.quick else 3)
    args.baseline_runs = args.baseline_runs or (1 if args.quick else 2)
    args.settle = args.settle if args.settle is not None else (0.0 if args.quick else 30.0)
    dcn_runs = args.dcn_runs if args.dcn_runs is not None else (3 if args.quick else 7)
    suffix = "_quick" if args.quick else ""
    out_json = args.out_json or RESULTS / f"inference_speed{suffix}.json"
    out_md = args.out_md or RESULTS / f"inference_speed{suffix}.md"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no CUDA device")

    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} before starting: other processes share the CPUs. With "
              "several torch threads per process, every parallel op then waits for descheduled threads (small ops "
              "slow down 10-100x); use an idle machine, or --threads 1 for numbers that suffer less.", file=sys.stderr)
    started = time.perf_counter()
    dcn = None
    if dcn_runs and args.device == "cpu":
        dcn = run_child({"config": "dcn", "device": "cpu", "threads": args.threads, "height": args.height,
                         "width": args.width, "runs": dcn_runs}, args.child_timeout)
        print("dcn", json.dumps(dcn), flush=True)
    rows = []
    for spec in [] if args.only_dcn else plan(args):
        time.sleep(args.settle)
        result = run_child(spec, args.child_timeout)
        row = {"config": spec["config"], "prompt": spec["prompt"], "batch": spec["batch"], **result}
        rows.append(row)
        shown = {k: row.get(k) for k in ("config", "prompt", "batch", "per_image_s", "images_per_s", "peak_rss_mb",
                                         "error")}
        print(json.dumps(shown), flush=True)
    env = environment(args.threads)
    env.update(loadavg_start=[round(x, 2) for x in load_start], loadavg_end=[round(x, 2) for x in os.getloadavg()])
    settings = {"quick": args.quick, "height": args.height, "width": args.width, "device": args.device,
                "runs": args.runs, "baseline_runs": args.baseline_runs, "warmup": args.warmup,
                "batch_sizes": args.batch_sizes, "model": args.model, "official_dcn": args.official_dcn,
                "malloc": args.malloc, "settle_s": args.settle,
                "token_bias_lifted": not args.keep_prior, "prompts": {k: str(v) for k, v in PROMPTS.items()}}
    result = {"benchmark": "inference speed: glip-label fast path vs official-like GLIP vs GroundingDINO-tiny",
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "environment": env,
              "settings": settings, "total_wall_s": time.perf_counter() - started, "dcn": dcn, "rows": rows,
              "ratios": ratios(rows)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    out_md.write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
