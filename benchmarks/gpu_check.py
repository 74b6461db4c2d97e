"""The GPU check of issue 19, one run on a CUDA machine (benchmarks/gpu_check.sh runs it after the gpu tests).

Measures, and writes to benchmarks/results/gpu.json:
  agreement   GLIP-T (the parity fixture's generated checkpoint) on CUDA in fp32, fp16 and bf16 against the
              official fp32 detections of every fixture case (glip_label.precision.agreement: fp32 boxes above
              0.3 found again with the same phrase, IoU >= 0.9, |score diff| <= 0.02; acceptance >= 95%)
  throughput  images/s of GLIP-T (random weights, seeded) on 800x1200 images at batch 1, 4, 8 and 16 in each
              dtype, with 4 and with 80 classes, and the peak GPU memory of each configuration
  captions    pseudo-caption pairs/s (GLIP-T, batch 8) in each dtype
  acceptance  fp16 and bf16 images/s at batch 8 >= 2x fp32 at batch 1 (4 classes), agreement >= 95%

Without CUDA it says so and exits 2 (no numbers are made up). `--smoke` runs the same code on the CPU with
glip-tiny at 160x240, one round, and writes to a temporary file: it only checks that the script runs.

    python benchmarks/gpu_check.py                # on a GPU machine, under 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --smoke        # anywhere: does the script work?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from inference_speed import RESULTS, make_image, prompt_classes, random_glip  # noqa: E402
from pseudo_caption_speed import make_source, run_once  # noqa: E402

# The parity fixture: ../shared beside the checkout (as the tests find it), or GLIP_PARITY_FIXTURE.
FIXTURE = Path(os.environ.get("GLIP_PARITY_FIXTURE", REPO.parent / "shared" / "fixtures" / "glip-parity"))
DTYPES = ("fp32", "fp16", "bf16")
NO_GPU_EXIT = 2


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def agreement_on_fixture(device: str, model: str, checkpoint: Path | None) -> list[dict]:
    """Per dtype and fixture case: (found, total) of the official fp32 boxes above 0.3."""
    import numpy as np

    from glip_label.precision import agreement
    from glip_label.predictor import load_model
    from glip_label.records import Detections

    cases = json.loads((FIXTURE / "cases.json").read_text())
    rows = []
    for dtype in DTYPES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = load_model(checkpoint, config=model, device=device, dtype=dtype, seed=0)
        for case in cases:
            pred = json.loads((FIXTURE / "cases" / case["case"] / "predictions.json").read_text())["predictions"]
            official = Detections(pred["boxes_xyxy"], pred["scores"], np.asarray(pred["labels"]) - 1, [])
            args = ({"prompt": case["classes"]} if "classes" in case
                    else {"prompt": case["caption"], "spans": [[tuple(s)] for s in case["spans"]]})
            found = predictor.predict(FIXTURE / "inputs" / case["image"], threshold=0.0, **args)
            hit, total = agreement(official, found)
            rows.append({"dtype": dtype, "case": case["case"], "found": hit, "total": total,
                         "fraction": hit / total if total else None})
        del predictor
    return rows


def throughput(device: str, model: str, height: int, width: int, batches: list[int], rounds: int) -> list[dict]:
    """images/s and peak memory per (dtype, prompt, batch); `rounds` timed batches after one warm-up batch."""
    import torch

    rows = []
    for dtype in DTYPES:
        predictor = random_glip(model, height, width, device=device, dtype=dtype)
        for prompt in ("four", "coco80"):
            classes = prompt_classes(prompt)
            for batch in batches:
                images = [make_image(height, width, seed=i) for i in range(batch)]
                predictor.predict(images, classes, batch_size=batch)  # warm-up: kernels, text cache, allocator
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                _sync(device)
                start = time.perf_counter()
                for _ in range(rounds):
                    predictor.predict(images, classes, batch_size=batch)
                _sync(device)
                seconds = time.perf_counter() - start
                rows.append({"dtype": dtype, "prompt": prompt, "classes": len(classes), "batch": batch,
                             "images": batch * rounds, "seconds": seconds,
                             "images_per_s": batch * rounds / seconds,
                             "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None})
                print(json.dumps(rows[-1]), flush=True)
        del predictor
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def caption_throughput(device: str, model: str, pairs: int, batch: int) -> list[dict]:
    """pseudo-caption pairs/s per dtype (random-weight teacher with its token bias lifted, given phrases)."""
    import torch

    from glip_label.predictor import load_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source = tmp / "captions.jsonl"
        make_source(source, pairs)
        for dtype in DTYPES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predictor = load_model(None, config=model, seed=0, device=device, dtype=dtype)
            with torch.no_grad():
                predictor.model.rpn.head.bias0.fill_(0.0)
            run_once(predictor, None, source, tmp / f"warm-{dtype}", batch, None, device, "column")
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result = run_once(predictor, None, source, tmp / f"run-{dtype}", batch, None, device, "column")
            rows.append({"dtype": dtype, "batch": batch, **result,
                         "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None})
            print(json.dumps(rows[-1]), flush=True)
            del predictor
    return rows


def acceptance(agreement_rows: list[dict], speed_rows: list[dict]) -> dict:
    speed = {(r["dtype"], r["prompt"], r["batch"]): r["images_per_s"] for r in speed_rows}
    base = speed.get(("fp32", "four", 1))
    result = {}
    for dtype in ("fp16", "bf16"):
        at8 = speed.get((dtype, "four", 8))
        result[f"{dtype}_batch8_over_fp32_batch1"] = at8 / base if at8 and base else None
        fractions = [r["fraction"] for r in agreement_rows if r["dtype"] == dtype and r["fraction"] is not None]
        result[f"{dtype}_min_agreement"] = min(fractions) if fractions else None
        result[f"{dtype}_passes"] = bool(at8 and base and at8 >= 2 * base and fractions and min(fractions) >= 0.95)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, glip-tiny, 160x240, 1 round: does it run?")
    parser.add_argument("--out-json", type=Path, default=None, help="default benchmarks/results/gpu.json")
    args = parser.parse_args()

    import torch

    if args.smoke:
        device, model, height, width, batches, rounds, pairs = "cpu", "glip-tiny", 160, 240, [1, 2], 1, 4
        out = args.out_json or Path(tempfile.gettempdir()) / "gpu_check_smoke.json"
        checkpoint = None
    else:
        if not torch.cuda.is_available():
            print("gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured",
                  file=sys.stderr)
            return NO_GPU_EXIT
        device, model, height, width, batches, rounds, pairs = "cuda", "glip-t", 800, 1200, [1, 4, 8, 16], 3, 64
        out = args.out_json or RESULTS / "gpu.json"
        checkpoint = Path(tempfile.gettempdir()) / "glip_t_dev_seed1.pth"
        if not checkpoint.exists():
            subprocess.run([sys.executable, str(FIXTURE / "make_weights.py"), "--keys",
                            str(FIXTURE / "glip_t_keys.txt"), "--seed", "1", "--out", str(checkpoint)], check=True)

    started = time.perf_counter()
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "smoke": args.smoke, "model": model, "image_hw": [height, width],
    }
    report["agreement"] = agreement_on_fixture(device, model, checkpoint)
    report["throughput"] = throughput(device, model, height, width, batches, rounds)
    report["pseudo_caption"] = caption_throughput(device, model, pairs, batch=8 if device == "cuda" else 2)
    report["acceptance"] = acceptance(report["agreement"], report["throughput"])
    report["seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["acceptance"], indent=2))
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
