"""The device a run computes on: its name (for the run's environment record and benchmarks), a
sync before reading a clock, and full-fp32 convolutions where two computations are compared."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of ``/proc/cpuinfo`` (``model name``, ``flags``), or "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(field)), "")
    except OSError:
        return ""


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``, else the platform's word for it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def vector_isa() -> str:
    """The widest x86 vector extension the CPU reports (``avx512f``, ``avx2``, ``avx``), or the machine's
    word for its architecture; the C++ ops are built with ``-march=native`` and their fast paths need AVX2."""
    flags = _cpuinfo("flags").split()
    return next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), platform.machine())


def cpu_facts() -> dict[str, object]:
    """What a CPU timing depends on, for every benchmark's header (issue 21): the model, its widest vector
    extension, logical CPUs, torch's threads, the 1-minute load average when the run started, and the
    allocator setting (:mod:`lzo_bench.runtime.memory`)."""
    from lzo_bench.runtime.memory import malloc_state

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": device_name(torch.device("cpu")), "vector_isa": vector_isa(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_1min": load, "malloc": malloc_state()}


def cpu_header(facts: dict[str, object] | None = None) -> str:
    """:func:`cpu_facts` on one line."""
    f = facts or cpu_facts()
    load = "n/a" if f["load_1min"] is None else f"{f['load_1min']:.2f}"
    return (f"CPU {f['cpu']} ({f['vector_isa']}, {f['logical_cpus']} logical), torch threads {f['torch_threads']}, "
            f"load {load}, malloc: {f['malloc']}")


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full fp32 inside the block, restored after. torch lets cuDNN use TF32 for
    them by default on Ampere and newer GPUs (a 10-bit mantissa: ~1e-3 relative error), while the conv
    event kernels compute in fp32; the self-check and the GPU tests compare the two, so both sides run
    in fp32 there. Through the legacy flag (``torch.backends.cudnn.allow_tf32``), which every torch
    version honours; a training run keeps the user's setting."""
    cudnn = torch.backends.cudnn
    was = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = was
