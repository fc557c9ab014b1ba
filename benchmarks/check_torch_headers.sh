#!/usr/bin/env bash
# The kernels compile as the GPU machine compiles them (issue 31.2): against the headers of the torch
# it has (2.11, C++17 extensions), not the torch of this checkout's venv. Fetches the torch wheel
# without dependencies (about 530 MB, once; only torch/include/* is unpacked, about 62 MB), then:
#   - g++ -std=c++17 -fsyntax-only on every CPU source (kernels/*.cpp, the CPU ops and the simulator
#     build kernels/snn_cuda_sim.cpp), with the defines and include dirs torch's cpp_extension passes
#     (TORCH_EXTENSION_NAME, TORCH_API_INCLUDE_EXTENSION_H, -isystem torch + python includes) and ours
#     (lzo_bench/ops/extension.py: -fopenmp / -pthread -DLZO_THREADS=64, -ffp-contract=off);
#   - nvcc -std=c++17 -arch=sm_90 -c (to an object in a temp dir) on kernels/*.cu, with torch's
#     COMMON_NVCC_FLAGS and ours (-O3 --fmad=false).
# One line per source (ok / FAILED with the first errors), exit 0 when all compile, 1 when one fails,
# 3 when the wheel cannot be fetched (the registry has no such version: said in one line).
#
#   bash benchmarks/check_torch_headers.sh          # TORCH_VERSION=2.11.0 PYTHON=python3
#   TORCH_HEADERS_DIR=/tmp/th NVCC=/usr/local/bin/nvcc CUDA_HOME=/usr/local/cuda bash benchmarks/check_torch_headers.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ver="${TORCH_VERSION:-2.11.0}"
py="${PYTHON:-python3}"
dir="${TORCH_HEADERS_DIR:-${TMPDIR:-/tmp}/torch-$ver-headers}"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
cxx="${CXX:-g++}"

if [ ! -f "$dir/torch/include/torch/extension.h" ]; then
  mkdir -p "$dir/wheel"
  echo "fetching the torch $ver wheel (no dependencies, ~530 MB) into $dir/wheel"
  if ! $py -m pip download "torch==$ver" --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 -d "$dir/wheel" -q; then
    echo "check_torch_headers: the registry gave no torch $ver wheel for cp312 manylinux_2_28_x86_64" >&2
    exit 3
  fi
  unzip -q -o "$dir"/wheel/torch-"$ver"-*.whl 'torch/include/*' 'torch/version.py' -d "$dir" || exit 3
  [ -n "${KEEP_WHEEL:-}" ] || rm -rf "$dir/wheel"
fi
echo "torch headers: $(grep -h "^__version__" "$dir/torch/version.py" 2> /dev/null || echo "$ver") in $dir/torch/include"
pyinc=$($py -c "import sysconfig; print(sysconfig.get_path('include', scheme='posix_prefix'))")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(-DTORCH_EXTENSION_NAME=lzo_header_check -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1
        -Ikernels -isystem "$dir/torch/include" -isystem "$dir/torch/include/torch/csrc/api/include"
        -isystem "$pyinc")
fails=0

check() {  # check SOURCE COMMAND...: one line per source
  local src=$1
  shift
  local t0=$SECONDS
  if "$@" > "$tmp/out.txt" 2>&1; then
    echo "ok      $src ($((SECONDS - t0)) s)"
  else
    echo "FAILED  $src ($((SECONDS - t0)) s): $*"
    grep -m 8 -E "error|Error" "$tmp/out.txt" | sed 's/^/        /'
    fails=$((fails + 1))
  fi
}

for src in kernels/*.cpp; do
  case $src in
    *_sim.cpp) flags=(-O2 -pthread -DLZO_THREADS=64) ;;
    *) flags=(-O3 -fopenmp) ;;
  esac
  check "$src" "$cxx" -std=c++17 -fsyntax-only -fPIC "${common[@]}" "${flags[@]}" -ffp-contract=off "$src"
done
if [ -x "$nvcc" ] || command -v "$nvcc" > /dev/null; then
  for src in kernels/*.cu; do
    check "$src" "$nvcc" -std=c++17 -arch=sm_90 -c -o "$tmp/$(basename "$src").o" "${common[@]}" \
      -isystem "$cuda_home/include" -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
      --compiler-options -fPIC -O3 --fmad=false "$src"
  done
else
  echo "skipped kernels/*.cu: no nvcc ($nvcc)"
fi
echo "check_torch_headers: $fails source(s) failed against torch $ver headers"
[ $fails = 0 ]
