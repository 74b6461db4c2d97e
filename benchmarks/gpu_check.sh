#!/usr/bin/env bash
# The GPU check of issue 19 (benchmarks/README.md, "GPU check"): the `gpu` tests, fp32/fp16/bf16 agreement on the
# parity fixture on CUDA, GLIP-T images/s at batch 1/4/8/16 per dtype (800x1200, 4 and 80 classes), pseudo-caption
# pairs/s and peak GPU memory, all written to benchmarks/results/gpu.json. Under 8 minutes on one H100/H200.
# Without a CUDA GPU it says so and exits 2. Run from anywhere; PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "gpu_check.sh: $PYTHON cannot import torch; activate the project's venv or set PYTHON=.venv/bin/python" >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: needs a CUDA GPU (torch.cuda.is_available() is False here); nothing was measured" >&2
    exit 2
fi
mkdir -p benchmarks/results
# The gpu tests first; their result is kept (gpu_tests.txt) and decides the exit status, the measurements run anyway.
tests_rc=0
"$PYTHON" -m pytest -q -m gpu tests/test_half_precision.py > benchmarks/results/gpu_tests.txt 2>&1 || tests_rc=$?
tail -n 5 benchmarks/results/gpu_tests.txt
"$PYTHON" benchmarks/gpu_check.py "$@"
exit "$tests_rc"
