#!/usr/bin/env bash
# The first check on a GPU node, in one command that fits one 9-minute call (checks are time-limited, 530 s in all):
#
#   bash benchmarks/gpu_check.sh            # on the GPU node: one PASS/FAIL/SKIP line per check + JSON
#   bash benchmarks/gpu_check.sh --cpu      # the CPU-possible checks on CPU (a rehearsal, ~3 min here)
#   bash benchmarks/gpu_check.sh --only flex-vs-sdpa sampler-memory
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
exec "$PY" benchmarks/gpu_check.py "$@"
