#!/usr/bin/env bash
# Wheels the GPU check needs beyond a CUDA image's own packages (torch, transformers, safetensors,
# numpy, psutil, pytest are there; msgspec and pyzmq are not), fetched here for the image's Python
# (3.12 by default) into .whl/, to carry to a machine that cannot reach PyPI. There:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 scripts/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${PYV:-3.12}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "msgspec>=0.19" "pyzmq>=26"
ls -l .whl
