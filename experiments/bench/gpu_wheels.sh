#!/usr/bin/env bash
# Download, on a machine with the package registries, the wheels that a bare GPU machine with
# jax lacks (grain and array-record for lingjax's data, tokamax for the third gmm baseline, and
# their needs the device image does not have), into .whl/ (git-ignored), for gpu_check.sh:
#   bash experiments/bench/gpu_wheels.sh      # then carry .whl to the GPU machine
# Linux x86-64, CPython 3.12 wheels, no dependencies resolved: the list below is the whole set.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
WHEELS=(
  grain==0.2.18 array-record==0.8.6 portpicker
  tokamax==0.0.17 qwix einshape immutabledict tensorboardx xprof gviz-api
  pydantic pydantic-core annotated-types typing-inspection
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
du -sh .whl
