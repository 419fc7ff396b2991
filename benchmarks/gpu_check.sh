#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (and no network), install
# pycuda from files carried in vendor/pycuda if it is missing, run the CUDA
# tests on the real GPU, then print the GPU benchmark table (benchmarks/bench_gpu.py).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Fetch the files first, on a machine with the package registry:
#   bash benchmarks/vendor_pycuda.sh [PYTHON_VERSION]   # default 3.12 (the GPU machines' python)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
if ! python3 -c "import pycuda" 2>/dev/null; then
    [ -d vendor/pycuda ] || { echo "pycuda is missing and vendor/pycuda is absent: run benchmarks/vendor_pycuda.sh"; exit 1; }
    # pycuda builds from its sdist against the numpy and CUDA toolkit already there.
    python3 -m pip install -q --no-index --find-links vendor/pycuda --no-build-isolation pycuda || exit 1
fi
python3 -c "import minicomp" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import pycuda.autoinit, pycuda.driver as d; print('pycuda sees', d.Device(0).name())" || exit 1

status=0
MINICOMP_CUDA_DEVICE=gpu python3 -m pytest -q -p no:cacheprovider tests/backends/test_cuda.py || status=1
python3 benchmarks/bench_gpu.py || status=1
exit $status
