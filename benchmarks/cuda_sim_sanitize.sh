#!/usr/bin/env bash
# The CUDA kernels (kernels/snn_cuda_kernels.cuh) under ThreadSanitizer and under AddressSanitizer +
# UBSan: benchmarks/cuda_sim_harness.cpp runs them through the CUDA execution simulator
# (kernels/cuda_sim.h), with no torch and no Python. Exit 0 when both builds run every case without a
# report; non-zero on any report.
#
#   bash benchmarks/cuda_sim_sanitize.sh            # the kernels as shipped
#   bash benchmarks/cuda_sim_sanitize.sh --prove    # also shows that it catches a removed __syncthreads
#                                                   # and a removed __syncwarp (TSan) and an
#                                                   # out-of-bounds write (ASan)
#
# What it cannot catch (kernels/cuda_sim.h): races between blocks (blocks run one at a time), the GPU
# memory model, nvcc's code generation, speed; compute-sanitizer in benchmarks/gpu_check.sh covers those.
set -uo pipefail
cd "$(dirname "$0")/.."
cxx="${CXX:-g++}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
flags=(-std=c++17 -O1 -g -pthread -DLZO_THREADS=64 -fno-omit-frame-pointer)
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0"
export ASAN_OPTIONS="halt_on_error=1 exitcode=67 detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 exitcode=68"

# build_run LABEL KERNEL_DIR SANITIZER_FLAGS...: compile the harness against KERNEL_DIR's kernels, run it
build_run() {
  local label=$1 dir=$2
  shift 2
  if ! "$cxx" "${flags[@]}" "$@" -I"$dir" -Ikernels benchmarks/cuda_sim_harness.cpp -o "$work/$label" 2> "$work/$label.build"; then
    cat "$work/$label.build" >&2
    echo "cuda_sim_sanitize: $label: the harness did not build" >&2
    return 90
  fi
  local t0=$SECONDS
  "$work/$label" > "$work/$label.log" 2>&1
  local rc=$?
  echo "$label: exit $rc in $((SECONDS - t0)) s; $(tail -1 "$work/$label.log")"
  [ $rc -ne 0 ] && grep -m 3 -E "WARNING: ThreadSanitizer|ERROR: AddressSanitizer|runtime error|cuda_sim:" "$work/$label.log" | sed 's/^/    /'
  [ $rc -ne 0 ] && grep -m 4 -E "^    #[0-9] .*(snn_cuda_kernels|cuda_sim_harness)" "$work/$label.log" | sed 's/^/    /'
  return $rc
}

status=0
build_run tsan kernels -fsanitize=thread || status=1
build_run asan-ubsan kernels -fsanitize=address,undefined -fno-sanitize-recover=undefined || status=1
[ $status -eq 0 ] && echo "cuda_sim_sanitize: clean (ThreadSanitizer, AddressSanitizer + UBSan)"

if [ "${1:-}" = "--prove" ]; then
  # mutation 1: block_rank2's second barrier (after thread 0 turned the per-warp counts into offsets)
  mkdir -p "$work/no-barrier" "$work/no-syncwarp" "$work/oob"
  python3 - "$work" <<'PY'
import sys
from pathlib import Path
work = Path(sys.argv[1])
src = Path("kernels/snn_cuda_kernels.cuh").read_text()
head, rest = src.split("__device__ int4 block_rank2", 1)
body, tail = rest.split("\n}\n", 1)
first = body.index("__syncthreads();")
second = body.index("__syncthreads();", first + 1)
body = body[:second] + "/* mutation: barrier removed */" + body[second + len("__syncthreads();"):]
(work / "no-barrier" / "snn_cuda_kernels.cuh").write_text(head + "__device__ int4 block_rank2" + body + "\n}\n" + tail)
sync = "      __syncwarp();\n"  # mutation 2: conv_dx_scatter_kernel's barrier between two entries of a row
assert src.count(sync) == 1
(work / "no-syncwarp" / "snn_cuda_kernels.cuh").write_text(src.replace(sync, "      /* mutation: removed */\n"))
old = "for (int64_t q = lane; q < n; q += kWarp) out[ptr[r] + q] = slot[r * width + q];"
assert old in src
(work / "oob" / "snn_cuda_kernels.cuh").write_text(src.replace(old, old.replace("q < n;", "q <= n;")))
PY
  echo "--- proof: block_rank2 without its second __syncthreads, under ThreadSanitizer (must report)"
  if build_run tsan-no-barrier "$work/no-barrier" -fsanitize=thread; then
    echo "cuda_sim_sanitize: the removed barrier was NOT caught" >&2; status=1
  fi
  echo "--- proof: conv_dx_scatter_kernel without its __syncwarp, under ThreadSanitizer (must report)"
  if build_run tsan-no-syncwarp "$work/no-syncwarp" -fsanitize=thread; then
    echo "cuda_sim_sanitize: the removed __syncwarp was NOT caught" >&2; status=1
  fi
  echo "--- proof: compact_kernel writing one entry past each row (q <= n), under AddressSanitizer (must report)"
  if build_run asan-oob "$work/oob" -fsanitize=address,undefined; then
    echo "cuda_sim_sanitize: the out-of-bounds write was NOT caught" >&2; status=1
  fi
  [ $status -eq 0 ] && echo "cuda_sim_sanitize: all three mutations caught"
fi
exit $status
