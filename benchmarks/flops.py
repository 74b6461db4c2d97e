"""Work per image: FLOPs of GLIP-T (fast path, official-like) and GroundingDINO-tiny, and this CPU's GEMM rate.

Why: issue 8 asks for latency ratios against two baselines. A ratio is bounded by how much arithmetic
each model must do and how fast this CPU does it; this script measures both, in one run, so the
benchmark tables can be read against them. FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`
(matmuls, convolutions and attention; elementwise ops, softmax, grid_sample and norms are not counted),
one forward pass at 800x1200, random weights. The GEMM rate is the best of a few runs of fp32 matmuls of
the shapes that dominate GLIP-T (a DyHead 3x3 deformable conv as one im2col GEMM, a Swin MLP, a square GEMM). The
DyHead deformable convs are counted through glip-label's CPU implementation (an im2col GEMM), for
both GLIP modes, since torchvision's op is invisible to the counter; the arithmetic is the same.

    python benchmarks/flops.py                 # writes benchmarks/results/flops.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from inference_speed import prompt_classes
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


def glip_flops(prompt: list[str], height: int, width: int, official: bool) -> float:
    from inference_speed import make_image

    from glip_label.predictor import load_model

    predictor = load_model(None, config="glip-t", seed=0, pad_prompt=official, cache_text=not official)
    predictor.config.min_size_test = min(height, width)
    predictor.config.max_size_test = max(predictor.config.max_size_test, height, width)
    image = make_image(height, width, seed=0)
    predictor.predict(image, prompt)  # caches the text features of the fast path, as in a labelling run
    with FlopCounterMode(display=False) as counter:
        predictor.predict(image, prompt)
    return counter.get_total_flops()


def gdino_flops(prompt: list[str], height: int, width: int) -> float:
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    from glip_label.text.prompts import build_detection_prompt, load_tokenizer

    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      out_features=["stage2", "stage3", "stage4"])
    config = GroundingDinoConfig(backbone_config=swin, text_config=BertConfig())
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval()
    ids = load_tokenizer().encode(build_detection_prompt(prompt).text + ".").ids[: config.max_text_len]
    input_ids = torch.tensor([ids])
    pixel_values = torch.randn(1, 3, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
              token_type_ids=torch.zeros_like(input_ids))
    return counter.get_total_flops()


def gemm_rate(shapes: list[tuple[int, int, int]], repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of `a @ b` for each (m, k, n)."""
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        rates[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "flops.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = {name: prompt_classes(name) for name in ("four", "coco80")}
    result: dict = {"image": [args.height, args.width], "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(), "gflops": {}}
    for name, prompt in prompts.items():
        result["gflops"][name] = {
            "fast": round(glip_flops(prompt, args.height, args.width, official=False) / 1e9, 1),
            "official": round(glip_flops(prompt, args.height, args.width, official=True) / 1e9, 1),
            "gdino": round(gdino_flops(prompt, args.height, args.width) / 1e9, 1),
        }
        print(name, result["gflops"][name], flush=True)
    result["gemm_gflops_per_s"] = gemm_rate([(256, 2304, 15200), (15200, 384, 1536), (2048, 2048, 2048)])
    print(result["gemm_gflops_per_s"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
