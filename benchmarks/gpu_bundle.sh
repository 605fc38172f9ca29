#!/usr/bin/env bash
# What goes along to a GPU node without internet (torch + Lightning there; see docs/scale_out.md):
#
#   make gpu-bundle                                   # = bash benchmarks/gpu_bundle.sh
#   bash benchmarks/gpu_bundle.sh --wheels-dir DIR --no-published    # the wheels only, into DIR (the tests)
#
# 1. benchmarks/wheels/ (git-ignored): a wheel of every package the checks need that such a node lacks,
#    downloaded as wheels where PyPI has them, built here where it has an sdist only (antlr4-python3-runtime,
#    omegaconf's parser runtime; pure Python). benchmarks/gpu_check.sh installs them there with --no-index.
# 2. benchmarks/third_party/VAR/ (git-ignored): the published implementation's code that
#    benchmarks/gpu_speed.py times (models/, utils/, dist.py, trainer.py, LICENSE; ~170 KiB), exported from
#    $VAR_PUBLISHED_SRC (a clone or its .git directory) or cloned from GitHub. Kept when already there.
# Both travel with the checkout (carry benchmarks/wheels and benchmarks/third_party); together they must stay
# under 60 MiB of the device's 64.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DIR=benchmarks/wheels
PUBLISHED=benchmarks/third_party/VAR
WITH_PUBLISHED=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels-dir) DIR="$2"; shift 2 ;;
    --no-published) WITH_PUBLISHED=0; shift ;;
    *) echo "gpu_bundle.sh: unknown argument $1 (--wheels-dir DIR, --no-published)" >&2; exit 2 ;;
  esac
done
LIMIT_MIB=60
WHEELS=(hydra-core omegaconf webdataset braceexpand lpips torch-fidelity pytest pluggy iniconfig)
SDISTS=("antlr4-python3-runtime==4.9.3")
PUBLISHED_FILES=(LICENSE dist.py trainer.py models utils)

rm -rf "$DIR"
mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" "${WHEELS[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DIR" "${SDISTS[@]}"
ls -1 "$DIR"
echo "$DIR: $(ls "$DIR" | wc -l) wheels, $(du -sm "$DIR" | cut -f1) MiB"

if [ "$WITH_PUBLISHED" = 1 ] && [ ! -f "$PUBLISHED/trainer.py" ]; then
  mkdir -p "$PUBLISHED"
  src="${VAR_PUBLISHED_SRC:-}"
  tmp=""
  if [ -z "$src" ]; then
    tmp=$(mktemp -d)
    git clone -q --depth 1 https://github.com/FoundationVision/VAR "$tmp/VAR" || {
      echo "could not clone https://github.com/FoundationVision/VAR: set VAR_PUBLISHED_SRC to a clone" >&2
      exit 1
    }
    src="$tmp/VAR"
  fi
  gitdir="$src"; [ -d "$src/.git" ] && gitdir="$src/.git"
  git --git-dir="$gitdir" archive HEAD "${PUBLISHED_FILES[@]}" | tar -x -C "$PUBLISHED"
  echo "$PUBLISHED: the published code at $(git --git-dir="$gitdir" rev-parse --short HEAD)"
  [ -n "$tmp" ] && rm -rf "$tmp"
fi

size=$(du -smc "$DIR" $( [ -d "$PUBLISHED" ] && echo "$PUBLISHED" ) | tail -1 | cut -f1)
echo "to carry: ${size} MiB"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "the bundle takes ${size} MiB, over the ${LIMIT_MIB} MiB that fit a device call's 64 MiB" >&2
  exit 1
fi
