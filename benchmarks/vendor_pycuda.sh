#!/usr/bin/env bash
# Download pycuda's sdist and the wheels it needs into vendor/pycuda (ignored
# by git), for benchmarks/gpu_check.sh on a GPU machine without network.
#   bash benchmarks/vendor_pycuda.sh [PYTHON_VERSION]   # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
mkdir -p vendor/pycuda
python3 -m pip download -q --no-deps --no-binary pycuda -d vendor/pycuda pycuda
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d vendor/pycuda pytools platformdirs mako siphash24 typing_extensions
ls vendor/pycuda
