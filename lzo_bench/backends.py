"""Which implementation of the LIF layer runs, and why.

Order of preference is ``cuda → cpp → torch`` (DESIGN.md §6): the ``lzo`` C++/CUDA ops
(:mod:`lzo_bench.ops`) on the device of the data, else the pure-PyTorch reference
(:mod:`lzo_bench.lif`). ``--backend`` forces one; ``describe()`` gives the one line to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import torch

from lzo_bench import lif, ops
from lzo_bench.event_network import event_network
from lzo_bench.gates import GateSpec


class BackendName(str, Enum):
    AUTO = "auto"
    CUDA = "cuda"
    CPP = "cpp"
    TORCH = "torch"


class BackendUnavailable(RuntimeError):
    """A backend asked for with ``--backend`` cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """A LIF implementation: ``layer`` runs one layer on dense tensors (the reference and the naive
    baseline); ``network`` runs the whole network sparse end to end through the event ops (the
    extension's backends, which have no per-layer path)."""

    name: str
    layer: Callable[..., lif.LayerOut] | None
    reason: str
    network: Callable[..., Any] | None = None

    def describe(self) -> str:
        return f"backend: {self.name} ({self.reason})"


AUTOGRAD_LOOP = Backend(
    "autograd-loop", lif.autograd_loop_layer,
    "plain per-step autograd loop with a surrogate spike function (the naive baseline)",
)


def _extension(device: torch.device, spec: GateSpec | None) -> Backend:
    """The C++/CUDA backend for ``device``; raises BackendUnavailable with the reason."""
    if spec is not None:
        try:
            ops.check_supported(spec)
        except ops.UnsupportedGate as e:
            raise BackendUnavailable(str(e)) from None
    cuda = device.type == "cuda"
    try:
        ext = ops.build(cuda=True if cuda else None)
    except Exception as e:  # a compiler error is long; its first line says what failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendUnavailable(f"the C++ extension failed to build: {first}") from None
    if cuda and not ext.cuda:
        raise BackendUnavailable("the extension was built without CUDA")
    if cuda:
        backend = Backend("cuda", None, f"lzo CUDA ops on {torch.cuda.get_device_name(device)}, event-driven end to end",
                          event_network)
        return verified(backend, device)
    return Backend("cpp", None, "lzo C++ ops on the CPU, event-driven end to end", event_network)


def verified(backend: Backend, device: torch.device) -> Backend:
    """``backend`` once its self-check against the reference on ``device`` has passed in this process
    (:mod:`lzo_bench.selfcheck`); raises BackendUnavailable naming what differed otherwise."""
    from lzo_bench import selfcheck

    verdict = selfcheck.cached_verdict(backend, device)
    if not verdict.ok:
        raise BackendUnavailable(selfcheck.refusal(verdict))
    return Backend(backend.name, backend.layer, f"{backend.reason}; self-check passed", backend.network)


def cuda_simulator() -> Backend:
    """The CUDA kernels of ``kernels/snn_cuda_kernels.cuh`` executed on the CPU by the CUDA execution
    simulator (``kernels/cuda_sim.h``), on CPU tensors: the CUDA code path, verifiable without a GPU
    (slow: every thread of a block is an OS thread)."""
    from functools import partial

    ops.build_sim()
    return Backend("cuda-sim", None, "lzo CUDA kernels run by the CUDA execution simulator on the CPU",
                   partial(event_network, lib=torch.ops.lzo_sim))


def select_backend(
    requested: BackendName | str = BackendName.AUTO,
    device: torch.device | str = "cpu",
    spec: GateSpec | None = None,
) -> Backend:
    """The backend to run: the requested one, or for ``auto`` the fastest that works here."""
    requested = BackendName(requested)
    device = torch.device(device)
    if requested is BackendName.TORCH:
        return Backend("torch", lif.lif_layer, "pure-PyTorch reference, requested with --backend torch")
    if requested is BackendName.CUDA and device.type != "cuda":
        raise BackendUnavailable("--backend cuda needs --device cuda")
    if requested is BackendName.CPP and device.type != "cpu":
        raise BackendUnavailable("--backend cpp runs on the CPU; use --device cpu or --backend cuda")
    try:
        return _extension(device, spec)
    except BackendUnavailable as e:
        if requested is not BackendName.AUTO:
            raise
        return Backend("torch", lif.lif_layer, f"pure-PyTorch reference; fell back because {e}")
