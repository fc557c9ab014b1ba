#!/usr/bin/env bash
# One prepared call on a GPU machine that has torch and CUDA but not this project (and no network):
# every stage of the GPU check under its own timeout (first run on an H200, 2026-12-04: the build
# failed, torch 2.11 builds extensions as C++17), results in 3 files under $OUT (or ./gpu-check-out): summary.json (one JSON
# summary, benchmarks/gpu_summary.py), log.txt (everything printed) and rest.tar.gz (the stage
# outputs). On a machine without a GPU it stops at once with one line and exit code 3.
#
#   OUT=/tmp/o bash benchmarks/gpu_check.sh            # PYTHON=python3 by default
#
# Stages, most important first (a run cut short keeps what matters most; the build failing stops it):
# machine facts; `lzo-bench doctor` (builds the CUDA ops, runs their self-check); the build on its own
# (cached; its failure stops the run); NVML probe;
# CUDA op tests and gpu-marked tests (the conv kernels' included); CUDA vs reference at T = 300, twice
# (determinism); profile --energy on nmnist; profile of the nmnist conv network (issue 22); layer
# benchmark at N-MNIST layer 2 with a per-kernel torch.profiler table;
# compute-sanitizer racecheck and memcheck on a T = 70 step; train --energy overhead (in-process);
# onnxruntime providers and parity; layer benchmarks N-MNIST layer 1, SHD layers 2 and 1; profile
# --energy on shd.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
why=$($py -c "import torch; print('' if torch.cuda.is_available() else 'torch ' + torch.__version__ + ' sees no CUDA GPU')" 2>&1 | tail -1)
if [ -n "$why" ]; then
  echo "gpu_check: nothing to check here: $why (run it on a GPU machine)" >&2
  exit 3
fi
out="${OUT:-gpu-check-out}"
rest="$out/rest"
mkdir -p "$rest"
log="$out/log.txt"
: > "$log"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # lzo_bench from this checkout, uninstalled
[ -d /usr/local/cuda ] && export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
printf "stage\trc\tseconds\n" > "$rest/stages.tsv"

stage() {  # stage NAME SECONDS COMMAND...: run under timeout, output to the log, rc and time to stages.tsv
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  printf "%s\t%s\t%s\n" "$name" "$rc" "$((SECONDS - t0))" >> "$rest/stages.tsv"
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}

stage env 30 sh -c "nvidia-smi --query-gpu=name,driver_version,mig.mode.current,memory.total --format=csv; \
  (nvcc --version | tail -2) 2>&1; lscpu | grep 'Model name'; \
  $py -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))'"
stage doctor 300 sh -c "$py cli.py doctor --json > '$rest/doctor.json'; rc=\$?; cat '$rest/doctor.json'; exit \$rc"
stage build 120 $py -c "from lzo_bench.ops import extension as ops; print(ops.build(cuda=True))"
if [ "$(tail -1 "$rest/stages.tsv" | cut -f2)" != 0 ]; then  # every later stage needs the CUDA ops
  echo "gpu_check: the CUDA ops did not build (log.txt, stage build); later stages skipped" | tee -a "$log"
  $py benchmarks/gpu_summary.py "$rest" > "$out/summary.json" 2>> "$log"
  tar -czf "$out/rest.tar.gz" -C "$out" rest && rm -rf "$rest"
  exit 1
fi
stage nvml 30 $py -c "
import json, torch
from lzo_bench.measure.energy import counter_period_ms, open_meter
m = open_meter('cuda')
info = m.info() if m.available else None
r = {'available': m.available, 'reason': m.reason, 'power_instant': m.power_sample() is not None if m.available else None,
     'counter_period_ms': counter_period_ms(m) if m.available else None,
     'gpu': None if info is None else info.__dict__}
print(json.dumps(r)); open('$rest/nvml.json', 'w').write(json.dumps(r))"
stage tests 180 $py -m pytest -q -p no:cacheprovider -x tests/test_event_network.py tests/test_ops.py -k cuda
stage gpu-tests 120 $py -m pytest -q -p no:cacheprovider -m gpu tests
stage cuda-vs-reference 120 sh -c "$py benchmarks/cuda_check.py > '$rest/cuda_check.json'"
stage profile-nmnist 150 $py -c "
import torch
from pathlib import Path
from lzo_bench.measure.profile import EnergyConfig, ProfileConfig, run_profile, write_report
cfg = ProfileConfig(workload='nmnist', updates=20, warmup=3, methods=('surrogate', 'sparsegrad', 'localzo'), device='cuda',
                    energy=True, energy_cfg=EnergyConfig(min_seconds=2.0, min_updates=32, repeats=3, idle_seconds=3.0, settle_seconds=1.0))
p = run_profile(cfg)
r = p.report
write_report(r, Path('$rest/profile-nmnist'), p.sampler)
for row in r['rows']:
    print(row['method'], row['backend'], round(row['fwd_ms'], 3), round(row['bwd_ms'], 3), round(row['overall_speedup_vs_surrogate'], 2),
          row['j_per_update'], row['j_per_update_std'], row['energy_ratio_vs_surrogate'])
print('energy:', r['energy'])"
stage profile-nmnist-conv 150 $py -c "
from pathlib import Path
from lzo_bench.measure.profile import ProfileConfig, run_profile, write_report
r = run_profile(ProfileConfig(workload='nmnist', arch='conv', updates=10, warmup=2,
                              methods=('surrogate', 'sparsegrad', 'localzo'), device='cuda')).report
write_report(r, Path('$rest/profile-nmnist-conv'))
for row in r['rows']:
    print(row['method'], row['backend'], round(row['fwd_ms'], 3), round(row['bwd_ms'], 3), round(row['overall_speedup_vs_surrogate'], 2))"
stage layer-nmnist-l2 90 $py benchmarks/layer_speed.py --device cuda --repeats 20 --warmup 3 --n-in 200 --rate 0.01 \
  --json "$rest/layer-nmnist-l2.json" --profile-kernels
if command -v compute-sanitizer > /dev/null; then
  stage racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 $py benchmarks/cuda_check.py --sanitize
  stage memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 9 $py benchmarks/cuda_check.py --sanitize
else
  echo "compute-sanitizer not found: racecheck and memcheck skipped" | tee -a "$log"
fi
stage train-energy 120 $py -c "
import json, time, tempfile
from lzo_bench.training.train import TrainConfig, train
times = {False: [], True: []}
for energy in (False, True, False, True):
    t0 = time.perf_counter()
    res = train(TrainConfig(epochs=3, device='cuda', energy=energy, out=tempfile.mkdtemp() + '/r'))
    times[energy].append(time.perf_counter() - t0)
r = {'plain_s': times[False], 'energy_s': times[True], 'energy': res.energy, 'epochs': [h.energy_j for h in res.history],
     'notes': [h.energy_note for h in res.history], 'run': str(res.out), 'test_acc': res.history[-1].test_acc}
print(json.dumps(r)); open('$rest/train_energy.json', 'w').write(json.dumps(r))"
stage onnxruntime 120 sh -c "run=\$($py -c \"import json; print(json.load(open('$rest/train_energy.json'))['run'])\") && \
  $py cli.py export \"\$run\" --samples 128 --json > '$rest/onnx.json'"
for cfg in "nmnist-l1:--n-in 1156 --rate 0.012 --first-layer" "shd-l2:--n-in 200 --steps 500 --beta 0.8187 --rate 0.01" \
           "shd-l1:--n-in 700 --steps 500 --beta 0.8187 --rate 0.01 --first-layer"; do
  name=${cfg%%:*}
  stage "layer-$name" 90 $py benchmarks/layer_speed.py --device cuda --repeats 20 --warmup 3 ${cfg#*:} --json "$rest/layer-$name.json"
done
stage profile-shd 150 $py -c "
from pathlib import Path
from lzo_bench.measure.profile import EnergyConfig, ProfileConfig, run_profile, write_report
cfg = ProfileConfig(workload='shd', updates=20, warmup=3, methods=('surrogate', 'localzo'), device='cuda', energy=True,
                    energy_cfg=EnergyConfig(min_seconds=2.0, min_updates=32, repeats=3, idle_seconds=3.0, settle_seconds=1.0))
p = run_profile(cfg)
r = p.report
write_report(r, Path('$rest/profile-shd'), p.sampler)
for row in r['rows']:
    print(row['method'], row['backend'], round(row['fwd_ms'], 3), round(row['bwd_ms'], 3), round(row['overall_speedup_vs_surrogate'], 2),
          row['j_per_update'], row['energy_ratio_vs_surrogate'])"
$py benchmarks/gpu_summary.py "$rest" > "$out/summary.json" 2>> "$log"
tar -czf "$out/rest.tar.gz" -C "$out" rest && rm -rf "$rest"
echo "wrote $out/summary.json, $out/log.txt, $out/rest.tar.gz" | tee -a "$log"
