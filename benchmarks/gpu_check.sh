#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (and no network), make pycuda
# importable from files carried in vendor/, run the CUDA tests on the real GPU,
# then print the GPU benchmark table (benchmarks/bench_gpu.py).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Prepare vendor/ first, on a machine with the package registry and nvcc:
#   bash benchmarks/vendor_pycuda.sh        # builds vendor/gpu-site for python 3.12
# Logs go to $OUT when it is set (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
log="${OUT:-/tmp}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
python3 --version
if ! python3 -c "import pycuda" 2>/dev/null; then
    if [ -d vendor/gpu-site ]; then
        # pycuda built ahead by vendor_pycuda.sh, with the pure-Python packages it needs.
        export PYTHONPATH="$PWD/vendor/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
    elif [ -d vendor/pycuda ]; then
        # Build from the sdist against the numpy and CUDA toolkit there (a minute or two).
        python3 -m pip install -q --no-index --find-links vendor/pycuda --no-build-isolation pycuda || exit 1
    else
        echo "pycuda is missing and vendor/ holds neither gpu-site nor pycuda: run benchmarks/vendor_pycuda.sh"
        exit 1
    fi
fi
python3 -c "import minicomp" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import pycuda.autoinit, pycuda.driver as d; print('pycuda', d.get_version(), 'sees', d.Device(0).name())" || exit 1
python3 -c "import llvmlite, numpy, networkx, ml_dtypes; print('llvmlite', llvmlite.__version__, 'numpy', numpy.__version__)"

status=0
workers=$(( $(nproc) / 2 )); [ "$workers" -ge 1 ] || workers=1
xdist=""; python3 -c "import xdist" 2>/dev/null && xdist="-n $workers"
CI=true MINICOMP_CUDA_DEVICE=gpu timeout "${GPU_TEST_SECONDS:-300}" python3 -m pytest -q -p no:cacheprovider $xdist \
    -rf --tb=short --junitxml="$log/gpu_tests.xml" tests/backends/test_cuda.py 2>&1 | tee "$log/gpu_tests.log" || status=1
timeout "${GPU_BENCH_SECONDS:-240}" python3 benchmarks/bench_gpu.py 2>&1 | tee "$log/gpu_bench.log" || status=1
exit $status
