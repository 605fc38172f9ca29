#!/usr/bin/env bash
# The first check on a GPU node, in one command that fits one 10-minute call (570 s in all):
#
#   bash benchmarks/gpu_check.sh            # on the GPU node: the speed table, then the checks that fit
#   bash benchmarks/gpu_check.sh --only gpu-tests train-var ...   # a next call: the checks it names
#   bash benchmarks/gpu_check.sh --cpu      # the CPU-possible checks on CPU (a rehearsal, ~3 min here)
#
# First (not with --only or --cpu) benchmarks/gpu_speed.py: ours against the published code (needs
# benchmarks/third_party/VAR from make gpu-bundle), ~6 min, speed.json. Then benchmarks/gpu_check.py's checks,
# most informative first, within what is left of the 570 s; the ones that do not fit are named for a next call.
#
# Results: $OUT/gpu_check/ (the device tool's output folder) or benchmarks/out/gpu_check/: gpu_check.json (every
# check's numbers) and each training run's folder. Copy the PASS/FAIL lines into benchmarks/RESULTS.md with the
# date, card and torch version.
#
# What the node needs: torch >= 2.5 (FSDP2 and FlexAttention; the H200 used for our anchors has 2.11), numpy,
# pytorch-lightning >= 2.4, pytest (for the gpu tests); and for the var-train checks hydra-core, omegaconf,
# antlr4-python3-runtime, webdataset, braceexpand, lpips, torch-fidelity, scipy, pillow, rich. A node without
# internet takes them as wheels: `make gpu-bundle` on a machine with pip access fills benchmarks/wheels/
# (git-ignored; carry it), building the sdist-only antlr4-python3-runtime into a wheel, and this script
# installs every wheel there with --no-index first, then stops if Hydra still does not import.
# var_lightning itself runs from src/ (no `pip install -e .`, which would try to fetch torch's dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"   # e.g. PYTHON=.venv/bin/python
if [ -d benchmarks/wheels ] && ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --find-links benchmarks/wheels benchmarks/wheels/*.whl
fi
if ! "$PY" -c "import hydra, omegaconf, webdataset" 2>/dev/null && [[ " $* " != *" --only "* ]]; then
  echo "hydra-core / omegaconf / webdataset do not import here, so every var-train check would fail:" \
       "run make gpu-bundle where pip works and carry benchmarks/wheels" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
{
  date -Iseconds
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
}
TOTAL_S=570
OUTDIR="${OUT:-benchmarks/out}/gpu_check"
mkdir -p "$OUTDIR"
if [[ " $* " != *" --only "* && " $* " != *" --cpu "* ]]; then
  if [ -f benchmarks/third_party/VAR/trainer.py ]; then
    echo "== speed: ours vs the published code (benchmarks/gpu_speed.py, ~6 min)"
    timeout 400 "$PY" benchmarks/gpu_speed.py --budget-s 330 --json "$OUTDIR/speed.json" \
      || echo "FAIL speed table (exit $?): see above"
  else
    echo "SKIP speed table: benchmarks/third_party/VAR is missing (make gpu-bundle exports the published code)"
  fi
  echo "== checks ($((TOTAL_S - SECONDS)) s left)"
  exec "$PY" benchmarks/gpu_check.py --budget-s "$((TOTAL_S - SECONDS))" "$@"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
