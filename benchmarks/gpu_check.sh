#!/usr/bin/env bash
# GPU check for the lzo ops, one call on a bare GPU machine (fits in 10 minutes on one H200; the
# machine has torch but cannot install anything, so nothing here needs the project installed):
#   1. build the CUDA extension, 2. run the op tests (they repeat every case on CUDA when a GPU
#   is visible) and the gpu-marked tests, 3. the layer benchmark on CUDA (layer 2 and layer 1),
#   4. the whole-update profile with NVML energy, the profiler overhead and train --energy's.
# Everything printed goes to $OUT/log.txt (or ./gpu-check-out); besides it layer2.json, layer1.json
# and profile/{profile.json,profile.csv,power.csv}: 6 files, within what a device call brings back.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # lzo_bench from this checkout, uninstalled
[ -d /usr/local/cuda ] && export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
py="${PYTHON:-python3}"
{
  echo "== env"
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo "== build"
  $py -c "from lzo_bench import ops; print(ops.build(cuda=True))" 2>&1 | tail -3
  echo "== tests"
  $py -m pytest -q -p no:cacheprovider tests/test_ops.py -k cuda 2>&1 | tail -15
  $py -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -5
  echo "== layer benchmark"
  $py benchmarks/layer_speed.py --device cuda --repeats 30 --warmup 5 --json "$out/layer2.json" 2>&1
  $py benchmarks/layer_speed.py --device cuda --repeats 30 --warmup 5 --first-layer --json "$out/layer1.json" 2>&1
  echo "== profile (4 methods x 4 repeats x 2 window kinds x >= 5 s, about 3 min)"
  $py cli.py profile --workload nmnist --device cuda --updates 30 --energy --out "$out/profile" 2>&1
  $py benchmarks/profiler_overhead.py --device cuda --workload nmnist --updates 40 2>&1
  echo "== train --energy overhead: the same short run without and with it"
  TIMEFORMAT="%R s"
  for e in "" "--energy" "" "--energy"; do
    echo -n "train ${e:-(plain)}: "
    { time $py cli.py train --device cuda --epochs 3 $e --out "$(mktemp -d)/r" > /dev/null 2>&1; } 2>&1
  done
} 2>&1 | tee "$log"
