#!/usr/bin/env bash
# The folder that goes along to a GPU node without internet (torch + Lightning there; see docs/scale_out.md):
#
#   make gpu-bundle        # = bash benchmarks/gpu_bundle.sh
#
# benchmarks/wheels/ (git-ignored) gets a wheel of every package the checks need that such a node lacks:
# downloaded as wheels where PyPI has them, built here where it has an sdist only (antlr4-python3-runtime,
# omegaconf's parser runtime; pure Python). benchmarks/gpu_check.sh installs them there with --no-index.
# The whole carried tree must stay under the device's 64 MiB: the wheels are checked against 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DIR=benchmarks/wheels
LIMIT_MIB=60
WHEELS=(hydra-core omegaconf webdataset braceexpand lpips torch-fidelity pytest pluggy iniconfig)
SDISTS=("antlr4-python3-runtime==4.9.3")

rm -rf "$DIR"
mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" "${WHEELS[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DIR" "${SDISTS[@]}"
ls -1 "$DIR"
size=$(du -sm "$DIR" | cut -f1)
echo "benchmarks/wheels: $(ls "$DIR" | wc -l) wheels, ${size} MiB"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "the wheels take ${size} MiB, over the ${LIMIT_MIB} MiB that fit a device call's 64 MiB" >&2
  exit 1
fi
