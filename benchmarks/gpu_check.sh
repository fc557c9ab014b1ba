#!/usr/bin/env bash
# GPU check for the lzo ops, one call on a GPU machine (fits in 10 minutes on one H200):
#   1. build the CUDA extension, 2. run the op tests (they repeat every case on CUDA when a GPU
#   is visible) and the gpu-marked tests, 3. the layer benchmark on CUDA (layer 2 and layer 1),
# printing short tables; logs and JSON go to $OUT (or ./gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda ] && export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee "$out/env.txt"
python -c "from lzo_bench import ops; print(ops.build(cuda=True))" 2>&1 | tail -3 | tee "$out/build.txt"
python -m pytest -q tests/test_ops.py -k cuda 2>&1 | tail -15 | tee "$out/tests.txt"
python -m pytest -q -m gpu tests 2>&1 | tail -5 | tee -a "$out/tests.txt"
python benchmarks/layer_speed.py --device cuda --repeats 30 --warmup 5 --json "$out/layer2.json" 2>&1 | tee "$out/bench.txt"
python benchmarks/layer_speed.py --device cuda --repeats 30 --warmup 5 --first-layer --json "$out/layer1.json" 2>&1 | tee -a "$out/bench.txt"
# whole-update profile with NVML energy (4 methods x 4 repeats x 2 window kinds x >= 5 s ≈ 3 min)
python cli.py profile --workload nmnist --device cuda --updates 30 --energy --out "$out/profile" 2>&1 | tee "$out/profile.txt"
python benchmarks/profiler_overhead.py --device cuda --workload nmnist --updates 40 2>&1 | tee -a "$out/profile.txt"
# train --energy overhead: the same short run with and without it
for e in "" "--energy" "" "--energy"; do /usr/bin/time -f "train $e: %e s" python cli.py train --device cuda --epochs 3 $e --out "$(mktemp -d)/r" 2>&1 | tail -1; done | tee -a "$out/profile.txt"
