"""Which implementation of the LIF layer runs, and why.

Order of preference is ``cuda → cpp → torch`` (docs/ARCHITECTURE.md §6): the ``lzo`` C++/CUDA ops
(:mod:`lzo_bench.ops.extension`) on the device of the data, else the pure-PyTorch reference
(:mod:`lzo_bench.core.lif`). ``--backend`` forces one; ``describe()`` gives the one line to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import torch

from lzo_bench import spike
from lzo_bench.core import lif
from lzo_bench.core.conv import ConvShape
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import extension as ops
from lzo_bench.ops import library
from lzo_bench.ops.event_network import event_network


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


def autograd_loop_layer(
    x: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    theta: float,
    spec: GateSpec | None,
    key: DrawKey | None,
    layer: int,
    prev: lif.LayerOut | None = None,
    bias: torch.Tensor | None = None,
    conv: ConvShape | None = None,
) -> lif.LayerOut:
    """The naive baseline: a per-step loop with one matmul per step and a surrogate spike function,
    as users of other SNN libraries write it. Always the dense surrogate ``g`` of ``spec``."""
    if spec is None:
        return lif.lif_layer(x, weight, beta, theta, None, None, layer, bias=bias, conv=conv)
    fire = spike.Surrogate(spec.dist, spec.delta)
    n = conv.units_out if conv else weight.shape[1]
    u = torch.zeros(x.shape[1], n, dtype=x.dtype, device=x.device)
    s = torch.zeros_like(u)
    out = []
    for x_t in x.unbind(0):
        i_t = lif.layer_current(x_t[None], weight, bias, conv)[0]
        u = beta * u + i_t - theta * s.detach()
        s = fire(u - theta)
        out.append(s)
    spikes = torch.stack(out)
    return lif.LayerOut(spikes, spikes.numel())


AUTOGRAD_LOOP = Backend(
    "autograd-loop", autograd_loop_layer,
    "plain per-step autograd loop with a surrogate spike function (the naive baseline)",
)


def _extension(device: torch.device, spec: GateSpec | None) -> Backend:
    """The C++/CUDA backend for ``device``; raises BackendUnavailable with the reason."""
    if spec is not None:
        try:
            library.check_supported(spec)
        except library.UnsupportedGate as e:
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
    (:mod:`lzo_bench.ops.selfcheck`); raises BackendUnavailable naming what differed otherwise."""
    from lzo_bench.ops import selfcheck

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
