#!/usr/bin/env bash
# The GPU check in ONE call of at most 10 minutes, on a GPU machine that has torch and CUDA but not
# this project, no network and no tonic/nir/nirtorch/peer libraries/neurobench/ray. It runs from this
# working tree with the machine's Python as it is (PYTHONPATH, nothing installed).
#
#   OUT=/tmp/o bash benchmarks/gpu_check.sh              # PYTHON=python3, GPU_CHECK_SECONDS=540
#   OUT=/tmp/o bash benchmarks/gpu_check.sh --dry-run    # no GPU: stand-ins for the stages (CI)
#
# One global deadline (GPU_CHECK_SECONDS, default 540 s, counted from the script's start): every stage
# runs under min(its own limit, what is left minus GPU_CHECK_RESERVE (default 10 s, for the last
# summary)); a stage that would get less than GPU_CHECK_MIN_STAGE (default 5 s) is not started
# (skipped: deadline). After every stage, and before each one starts, $OUT/summary.json and
# $OUT/rest.tar.gz are rewritten atomically (written beside, then renamed), so a call cut anywhere
# leaves at most 3 files, each readable: summary.json, log.txt (everything printed) and rest.tar.gz
# (rest/: the stage outputs). A machine without a GPU stops at once with one line and exit code 3.
# Exit code: 0 every stage ran and passed, 1 the build failed (the later stages skipped), 2 some
# stage failed, timed out or was skipped (but for GPU_CHECK_ONLY).
#
# Stages, by value (a cut keeps what matters most): env (machine facts); build (the CUDA ops, CPU kernels included,
# nvcc with -lineinfo through NVCC_APPEND_FLAGS; its failure stops the run); doctor (its CUDA ops
# row runs the self-check); gpu-tests (pytest -m gpu); nvml (the NVML probe); profile-nmnist
# (profile --energy, the mission's figure; synthetic N-MNIST-shaped input when the dataset is not
# there); memcheck, racecheck, synccheck, initcheck (compute-sanitizer on a T = 70 step of every
# method, instrumenting only the lzo kernels: --kernel-name kns=lzo); profile-nmnist-conv; then
# cuda-vs-reference (T = 300, twice: determinism), cuda-tests, layer-nmnist-l2 (with a per-kernel
# torch.profiler table), train-energy, onnxruntime, layer-nmnist-l1, layer-shd-l2, layer-shd-l1,
# profile-shd. A stage that needs a package the machine lacks says so in one line and is skipped.
#
# GPU_CHECK_ONLY="memcheck,racecheck": run only those stages (the others: skipped, "not selected").
# Dry run: every stage is `sleep` + exit code. GPU_CHECK_DRY_SLEEP="build:3,doctor:1" (seconds per
# stage, "*:S" for all; default 0.05), GPU_CHECK_DRY_FAIL="build,memcheck" (those exit 1),
# GPU_CHECK_DRY_MISSING="onnxruntime" (packages treated as not installed).
#
# summary.json (benchmarks/gpu_summary.py), field by field:
#   run.state       "running" (the call was cut: the last summary written says how far it got),
#                   "finished", or "stopped: <why>" (the build failed)
#   run.running     the stage in progress when this summary was written ("" between stages)
#   run.elapsed_s / run.deadline_s   seconds since the start / the deadline; run.dry_run
#   stages          one row per stage in order: stage, status (ok | failed | timeout | skipped),
#                   rc (exit code; 124/137: killed at its limit), seconds (its wall time), limit
#                   (seconds it was given: own limit or less at the deadline), started_at (seconds
#                   after the start; no stage starts later than deadline - reserve - min), note (why
#                   skipped: "deadline", "the build failed", "needs X", "not selected"; with a
#                   timeout: "clipped by the deadline" when the deadline, not its own limit, cut it)
#   failed_stages   stages whose status is failed or timeout; skipped_stages: skipped ones
#   gpu_tests       pytest -m gpu: tests, failures, errors, skipped (from its JUnit XML)
#   sanitizers      per tool: status and compute-sanitizer's "ERROR SUMMARY" line (full report in
#                   rest/<tool>.txt)
#   doctor, nvml, cuda_vs_reference, layer, profile, train_energy, onnxruntime: the stages' own
#                   JSON (profile: rows per method; {"missing": ...} where a stage wrote nothing)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
py="${PYTHON:-python3}"
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
t0=$(now_ms)
deadline_ms=$(( ${GPU_CHECK_SECONDS:-540} * 1000 ))
reserve_ms=$(( ${GPU_CHECK_RESERVE:-10} * 1000 ))
min_ms=$(( ${GPU_CHECK_MIN_STAGE:-5} * 1000 ))
grace=2  # seconds between a stage's TERM and KILL at its limit (inside the reserve)

if [ $dry = 0 ]; then
  why=$($py -c "import torch; print('' if torch.cuda.is_available() else 'torch ' + torch.__version__ + ' sees no CUDA GPU')" 2>&1 | tail -1)
  if [ -n "$why" ]; then
    echo "gpu_check: nothing to check here: $why (run it on a GPU machine, or --dry-run)" >&2
    exit 3
  fi
fi
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
rest="$work/rest"
mkdir -p "$rest"
log="$out/log.txt"
: > "$log"
rm -f "$out/summary.json" "$out/rest.tar.gz"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # lzo_bench from this checkout, uninstalled
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-lineinfo"  # sanitizer reports with lines
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
printf "stage\tstatus\trc\tseconds\tlimit\tstarted_at\tnote\n" > "$rest/stages.tsv"
state=running running="" stop=""

secs() { printf "%d.%03d" $(($1 / 1000)) $(($1 % 1000)); }  # milliseconds -> seconds

publish() {  # summary.json and rest.tar.gz, each written beside and renamed over the old one
  local elapsed
  elapsed=$(secs $(( $(now_ms) - t0 )))
  $py -I -S benchmarks/gpu_summary.py "$rest" --state "$state" --running "$running" --elapsed "$elapsed" \
    --deadline "$(secs $deadline_ms)" --dry-run "$dry" > "$out/.summary.json.tmp" 2>> "$log" \
    && mv -f "$out/.summary.json.tmp" "$out/summary.json"
  tar -czf "$out/.rest.tar.gz.tmp" -C "$work" rest 2>> "$log" && mv -f "$out/.rest.tar.gz.tmp" "$out/rest.tar.gz"
}

record() {  # record NAME STATUS RC SECONDS LIMIT STARTED NOTE
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$@" >> "$rest/stages.tsv"
}

dry_value() {  # dry_value LIST NAME DEFAULT: NAME's value in "a:1,b:2" ("*:v" for every name)
  local item value=$3
  for item in ${1//,/ }; do
    case $item in "$2":*|"*":*) value=${item#*:} ;; esac
  done
  echo "$value"
}

missing() {  # the packages of NEEDS this Python cannot import
  local pkg miss=""
  for pkg in ${NEEDS:-}; do
    if [ $dry = 1 ]; then
      case ",${GPU_CHECK_DRY_MISSING:-}," in *",$pkg,"*) miss="$miss $pkg" ;; esac
    elif ! $py -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)" 2> /dev/null; then
      miss="$miss $pkg"
    fi
  done
  echo "${miss# }"
}

stage() {  # [NEEDS="pkg ..."] stage NAME SECONDS COMMAND...: run under min(SECONDS, deadline), log, record
  local name=$1 own=$2 note="" start elapsed left limit_ms lacking rc status
  shift 2
  start=$(( $(now_ms) - t0 ))
  if [ -n "$stop" ]; then
    record "$name" skipped "" 0 0 "$(secs $start)" "$stop"
    return
  fi
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ ",$GPU_CHECK_ONLY," != *",$name,"* ]]; then
    record "$name" skipped "" 0 0 "$(secs $start)" "not selected"
    return
  fi
  lacking=$(missing)
  if [ -n "$lacking" ]; then
    echo "== $name skipped: needs $lacking (not installed here)" | tee -a "$log"
    record "$name" skipped "" 0 0 "$(secs $start)" "needs $lacking"
    return
  fi
  left=$(( deadline_ms - reserve_ms - start ))
  limit_ms=$(( own * 1000 ))
  if (( left < limit_ms )); then limit_ms=$left; note="clipped by the deadline"; fi
  if (( limit_ms < min_ms )); then
    echo "== $name skipped: deadline ($(secs $(( left > 0 ? left : 0 ))) s left)" | tee -a "$log"
    record "$name" skipped "" 0 0 "$(secs $start)" "deadline"
    return
  fi
  running=$name
  publish
  echo "== $name (limit $(secs $limit_ms) s, at $(secs $start) s)" | tee -a "$log"
  if [ $dry = 1 ]; then
    local fail=0
    case ",${GPU_CHECK_DRY_FAIL:-}," in *",$name,"*) fail=1 ;; esac
    set -- sh -c "sleep $(dry_value "${GPU_CHECK_DRY_SLEEP:-}" "$name" 0.05); exit $fail"
  fi
  timeout -k $grace "$(secs $limit_ms)" "$@" >> "$log" 2>&1
  rc=$?
  elapsed=$(( $(now_ms) - t0 - start ))
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  [ $status != timeout ] && note=""
  record "$name" $status $rc "$(secs $elapsed)" "$(secs $limit_ms)" "$(secs $start)" "$note"
  echo "   $status (rc=$rc) in $(secs $elapsed) s" | tee -a "$log"
  running=""
  publish
  return $rc
}

publish
stage env 20 sh -c "nvidia-smi --query-gpu=name,driver_version,mig.mode.current,memory.total --format=csv; \
  (nvcc --version | tail -2) 2>&1; lscpu | grep 'Model name'; echo CUDA_HOME=\${CUDA_HOME:-}; \
  $py -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))'"
if ! stage build 180 $py -c "from lzo_bench.ops import extension as ops; print(ops.build(cuda=True))"; then
  stop="the build failed"  # every later stage needs the CUDA ops
  echo "gpu_check: the CUDA ops did not build (log.txt, stage build); later stages skipped" | tee -a "$log"
fi
stage doctor 90 sh -c "$py cli.py doctor --json > '$rest/doctor.json'; rc=\$?; cat '$rest/doctor.json'; exit \$rc"
stage gpu-tests 150 $py -m pytest -q -p no:cacheprovider -rfEs -m gpu --continue-on-collection-errors --junitxml="$rest/gpu-tests.xml" tests
stage nvml 20 $py -c "
import json
from lzo_bench.measure.energy import counter_period_ms, open_meter
m = open_meter('cuda')
info = m.info() if m.available else None
r = {'available': m.available, 'reason': m.reason, 'power_instant': m.power_sample() is not None if m.available else None,
     'counter_period_ms': counter_period_ms(m) if m.available else None,
     'gpu': None if info is None else info.__dict__}
print(json.dumps(r)); open('$rest/nvml.json', 'w').write(json.dumps(r))"
stage profile-nmnist 150 $py -c "
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
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null || true)
[ $dry = 1 ] && sanitizer=compute-sanitizer
for tool in memcheck racecheck synccheck initcheck; do
  if [ -z "$sanitizer" ] && [ -z "$stop" ] && [[ -z "${GPU_CHECK_ONLY:-}" || ",$GPU_CHECK_ONLY," == *",$tool,"* ]]; then
    echo "== $tool skipped: compute-sanitizer not found" | tee -a "$log"
    record $tool skipped "" 0 0 "$(secs $(( $(now_ms) - t0 )))" "needs compute-sanitizer"
    continue
  fi
  # no caching allocator: out-of-bounds accesses inside torch's pooled blocks stay visible
  # only the lzo kernels instrumented (their names hold "lzo": namespace lzo); torch's own API errors not reported
  stage $tool 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${sanitizer:-compute-sanitizer}" --tool $tool --kernel-name kns=lzo \
    --report-api-errors no --error-exitcode 9 --print-limit 20 --log-file "$rest/$tool.txt" \
    $py benchmarks/cuda_check.py --sanitize
done
stage profile-nmnist-conv 120 $py -c "
from pathlib import Path
from lzo_bench.measure.profile import ProfileConfig, run_profile, write_report
r = run_profile(ProfileConfig(workload='nmnist', arch='conv', updates=10, warmup=2,
                              methods=('surrogate', 'sparsegrad', 'localzo'), device='cuda')).report
write_report(r, Path('$rest/profile-nmnist-conv'))
for row in r['rows']:
    print(row['method'], row['backend'], round(row['fwd_ms'], 3), round(row['bwd_ms'], 3), round(row['overall_speedup_vs_surrogate'], 2))"
stage cuda-vs-reference 90 sh -c "$py benchmarks/cuda_check.py > '$rest/cuda_check.json'"
stage cuda-tests 120 $py -m pytest -q -p no:cacheprovider -rfEs tests/test_event_network.py tests/test_ops.py -k cuda
stage layer-nmnist-l2 60 $py benchmarks/layer_speed.py --device cuda --repeats 20 --warmup 3 --n-in 200 --rate 0.01 \
  --json "$rest/layer-nmnist-l2.json" --profile-kernels
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
NEEDS="onnx onnxruntime" stage onnxruntime 90 sh -c "run=\$($py -c \"import json; print(json.load(open('$rest/train_energy.json'))['run'])\") && \
  $py cli.py export \"\$run\" --samples 128 --json > '$rest/onnx.json'"
for cfg in "nmnist-l1:--n-in 1156 --rate 0.012 --first-layer" "shd-l2:--n-in 200 --steps 500 --beta 0.8187 --rate 0.01" \
           "shd-l1:--n-in 700 --steps 500 --beta 0.8187 --rate 0.01 --first-layer"; do
  name=${cfg%%:*}
  stage "layer-$name" 60 $py benchmarks/layer_speed.py --device cuda --repeats 20 --warmup 3 ${cfg#*:} --json "$rest/layer-$name.json"
done
stage profile-shd 120 $py -c "
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
if [ -n "$stop" ]; then state="stopped: $stop"; else state=finished; fi
publish
echo "wrote $out/summary.json, $out/log.txt, $out/rest.tar.gz ($(secs $(( $(now_ms) - t0 ))) s)" | tee -a "$log"
[ -n "$stop" ] && exit 1
# failed, timed out, or skipped for any reason but GPU_CHECK_ONLY: exit 2
awk -F '\t' 'NR > 1 && $2 != "ok" && $7 != "not selected" { bad = 1 } END { exit !bad }' "$rest/stages.tsv" && exit 2
exit 0
