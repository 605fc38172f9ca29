#!/usr/bin/env bash
# The speed check of issue [8/8] on one H200, from the repository root:
#
#   bash benchmarks/run_h200.sh            # d16 benchmark, GPU equality tests, d30 training (~10 min with compiles)
#   bash benchmarks/run_h200.sh bench      # d16 sampling B=1/64/256 + d16 training B=64, plain vs fast
#   bash benchmarks/run_h200.sh tests      # tests/gpu/test_speed_paths.py only
#   bash benchmarks/run_h200.sh d30        # d30 training B=64, fast only (the plain anchor is known)
#
# What the card needs: nothing beyond what it has (torch 2.11 + numpy). bench_speed.py imports only torch, numpy and
# var_lightning's model code, found through PYTHONPATH=src; do not `pip install -e .` there (pip would try to fetch
# hydra-core, omegaconf, lpips, torch-fidelity, webdataset, none of which the benchmark or the GPU tests use).
# The tests need pytest; if `python -c "import pytest"` fails on the card, carry the wheels
# (pytest, pluggy, iniconfig; packaging is already there with Lightning) in wheels/ and install them with
#   pip install --no-index --find-links wheels/ pytest
# Results go to $OUT (the device tool's output folder) or benchmarks/out/: the JSON files, the printed tables
# and the card's description. Copy the tables into benchmarks/RESULTS.md with the date and the card.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
what="${1:-all}"

{
  date -Iseconds
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT_DIR/card.txt"

bench_d16() {
  # ~3-4 min: sampling is 2 warm-up + 5 timed calls per batch; training 3 warm-up steps (torch.compile, ~1 min)
  # + 10 timed. Variants: plain (the published code's setting) and fast (all levers).
  timeout 480 python benchmarks/bench_speed.py --device cuda --preset d16 --sample-batch 1 64 256 \
    --train-batch 64 --variants plain fast --json "$OUT_DIR/d16.json" 2>&1 | tee "$OUT_DIR/d16.txt"
}

bench_d30() {
  # ~3 min, mostly compilation. The published eager d30 ran out of memory at B=64 (48.6 img/s at B=32).
  timeout 420 python benchmarks/bench_speed.py --device cuda --preset d30 --what train --train-batch 64 \
    --variants fast --json "$OUT_DIR/d30.json" 2>&1 | tee "$OUT_DIR/d30.txt"
}

gpu_tests() {
  if python -c "import pytest" 2>/dev/null; then
    timeout 420 python -m pytest -q -p no:cacheprovider tests/gpu/test_speed_paths.py 2>&1 | tee "$OUT_DIR/gpu_tests.txt"
  else
    echo "pytest is not installed on this machine: carry its wheels (see the top of this script)" | tee "$OUT_DIR/gpu_tests.txt"
  fi
}

case "$what" in
  bench) bench_d16 ;;
  tests) gpu_tests ;;
  d30) bench_d30 ;;
  all) bench_d16; gpu_tests; bench_d30 ;;
  *) echo "usage: $0 [all|bench|tests|d30]" >&2; exit 2 ;;
esac
