"""``lzo-bench doctor``: what works on this machine, and why not where it does not.

Each check is one row ``(item, status, detail)`` with status ``ok``, ``missing`` (not installed or
not built: the detail says how to get it) or ``n/a`` (cannot work here: the detail says why). Nothing
is guessed: a check that cannot run says so.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

OK, MISSING, NA = "ok", "missing", "n/a"

#: optional packages: (import name, distribution, extra that installs it, what uses it)
EXTRAS = (
    ("tonic", "tonic", None, "reads N-MNIST and SHD"),
    ("nir", "nir", "nir", "export --format nir"),
    ("nirtorch", "nirtorch", "nir", "the NIR export's check"),
    ("neurobench", "neurobench", "neurobench", "NeuroBench's own harness on a run"),
    ("ray", "ray", "ray", "reproduce --engine ray"),
    ("snntorch", "snntorch", "bench", "peer timings, the NeuroBench adapter"),
    ("spikingjelly", "spikingjelly", "bench", "peer timings"),
    ("norse", "norse", "bench", "peer timings"),
)


@dataclass(frozen=True)
class Check:
    item: str
    status: str
    detail: str


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def torch_checks() -> list[Check]:
    cuda = torch.version.cuda
    rows = [Check("torch", OK, f"{torch.__version__}, {'CUDA ' + cuda + ' build' if cuda else 'CPU-only build'}; "
                               f"{torch.get_num_threads()} threads")]
    from lzo_bench.runtime.devices import device_name

    rows.append(Check("CPU", OK, f"{device_name(torch.device('cpu'))}, {os.cpu_count()} logical CPUs"))
    return rows


def cpp_ops_check() -> Check:
    from lzo_bench.ops import extension as ops

    try:
        ext = ops.build(cuda=False)
    except Exception as e:
        return Check("C++ ops", MISSING, f"failed to build: {_first_line(e)}")
    return Check("C++ ops", OK, f"compiled, cached in {Path(ext.path).parent}")


def cuda_home_check() -> Check:
    """The CUDA toolkit the CUDA ops build with, and whether torch's own guess of CUDA_HOME is wrong
    (a wrapper nvcc on PATH, /usr/local/bin/nvcc, makes torch take /usr/local and link a missing
    /usr/local/lib64)."""
    from lzo_bench.ops import extension as ops

    if torch.version.cuda is None:
        return Check("CUDA_HOME", NA, "this torch is a CPU-only build: nothing to compile CUDA for")
    home, how = ops.find_cuda_home()
    if home is None:
        return Check("CUDA_HOME", MISSING, f"{how}: install the CUDA toolkit {torch.version.cuda} and set CUDA_HOME")
    problem = ops.cuda_home_problem()
    if problem:
        return Check("CUDA_HOME", MISSING, problem)
    return Check("CUDA_HOME", OK, f"{home} (from {how})")


def gpu_checks() -> list[Check]:
    """GPU, CUDA ops (with their self-check) and the NVML meter."""
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA GPU"
        return [Check("GPU", NA, f"no GPU here ({why})"),
                Check("CUDA ops", NA, "not built: they need a GPU"),
                Check("NVML energy", NA, "no GPU to meter")]
    from lzo_bench.measure.energy import counter_period_ms, open_meter
    from lzo_bench.ops import extension as ops
    from lzo_bench.ops.backends import BackendUnavailable, select_backend

    device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    meter = open_meter(device)
    info = meter.info() if meter.available else None
    mig = _mig_mode(meter)
    rows.append(Check("GPU", OK, f"{torch.cuda.get_device_name(device)}"
                                 f"{', driver ' + info.driver if info else ''}, MIG {mig}"))
    try:
        ops.build(cuda=True)
        backend = select_backend("cuda", device)
        rows.append(Check("CUDA ops", OK, f"compiled; {backend.reason}"))
    except BackendUnavailable as e:
        rows.append(Check("CUDA ops", NA, str(e)))
    except Exception as e:
        rows.append(Check("CUDA ops", MISSING, f"failed to build: {_first_line(e)}"))
    if not meter.available:
        rows.append(Check("NVML energy", NA, str(meter.reason)))
    else:
        period = counter_period_ms(meter)
        power = meter.power_sample() is not None
        rows.append(Check("NVML energy", OK, f"energy counter updates every {period:.0f} ms" if period else
                          "energy counter readable (its update period could not be measured)"))
        rows.append(Check("NVML power", OK if power else NA, "instant power readable" if power else
                          "NVML_FI_DEV_POWER_INSTANT not supported by this GPU or driver"))
    return rows


def _mig_mode(meter) -> str:
    nvml = getattr(meter, "nvml", None)
    if nvml is None:
        return "unknown (no NVML)"
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(meter.handle)
    except Exception:
        return "not supported"
    return "enabled" if current else "disabled"


def rapl_check() -> Check:
    from lzo_bench.measure.energy import MeterUnavailable, RaplMeter

    try:
        RaplMeter()
    except MeterUnavailable as e:
        return Check("RAPL (CPU energy)", NA, str(e))
    return Check("RAPL (CPU energy)", OK, "package energy counters readable")


def onnxruntime_check() -> Check:
    names = {d.metadata["Name"].lower() for d in metadata.distributions() if d.metadata["Name"]}
    both = {"onnxruntime", "onnxruntime-gpu"} <= names
    try:
        import onnxruntime as ort
    except ImportError:
        return Check("onnxruntime", MISSING, "not installed: pip install onnxruntime (or onnxruntime-gpu)")
    providers = ", ".join(ort.get_available_providers())
    if both:
        return Check("onnxruntime", NA, f"onnxruntime and onnxruntime-gpu are both installed and clash: "
                                        f"pip uninstall -y onnxruntime onnxruntime-gpu, then install one (providers: {providers})")
    return Check("onnxruntime", OK, f"{ort.__version__}; providers {providers}")


def extra_checks() -> list[Check]:
    rows = []
    for module, dist, extra, use in EXTRAS:
        try:
            version = metadata.version(dist)
            importlib.import_module(module)
        except metadata.PackageNotFoundError:
            how = f"pip install 'lzo-bench[{extra}]'" if extra else f"pip install {dist}"
            rows.append(Check(module, MISSING, f"not installed ({use}): {how}"))
            continue
        except Exception as e:  # installed but broken: say how
            rows.append(Check(module, NA, f"installed but fails to import: {_first_line(e)}"))
            continue
        rows.append(Check(module, OK, f"{version} ({use})"))
    return rows


def run_checks() -> list[Check]:
    """Every check, in the order the table shows them."""
    return [*torch_checks(), cpp_ops_check(), cuda_home_check(), *gpu_checks(), rapl_check(), onnxruntime_check(), *extra_checks()]


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
