"""The workloads ``profile`` and ``peers`` time: a dataset's shape and the paper's network constants.

One catalogue (:data:`WORKLOADS`, one :class:`Workload` per dataset of :data:`~lzo_bench.data.DATASET_INFO`)
for both, so ``peers`` does not import ``profile`` for it, and the gain calibration both apply to
synthetic input (:func:`calibrate_gain`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from lzo_bench.core.conv import CONV_NETWORKS, ConvLayer
from lzo_bench.core.model import SNN, NetworkSpec
from lzo_bench.data import DATASET_INFO
from lzo_bench.ops.backends import select_backend


@dataclass(frozen=True)
class Workload:
    """A dataset's shape and the paper's network constants for it (docs/ARCHITECTURE.md §3)."""

    name: str
    n_in: int
    n_out: int
    steps: int
    beta: float
    beta_out: float
    reduce: str
    init: str
    init_gain: float
    synthetic_rate: float  # input spikes per (step, unit) when the data is not on disk
    batch: int = 256
    f_up: float = 1.0  # the spike-count regulariser's upper bound
    hidden: tuple[int, ...] = (200, 200)
    theta: float = 1.0
    conv: tuple[ConvLayer, ...] = ()  # conv layers before the hidden ones, on channels-last frames
    frame: tuple[int, int, int] | None = None

    def network(self, init: str | None = None, init_gain: float | None = None) -> NetworkSpec:
        """The paper's 2 × 200 network for this workload, or its conv network (optionally with another init)."""
        return NetworkSpec(self.n_in, self.hidden, self.n_out, self.beta, self.beta_out, self.theta,
                           reduce=self.reduce, init=init or self.init,
                           init_gain=self.init_gain if init_gain is None else init_gain, conv=self.conv,
                           frame=self.frame)


#: input spikes per (step, unit) of the synthetic stand-in for each dataset (about the real rate)
SYNTHETIC_RATE = {"digits": 0.012, "nmnist": 0.012, "shd": 0.01, "fmnist": 0.005}


def workload(name: str) -> Workload:
    """The paper's constants for dataset ``name`` (from its :class:`DatasetInfo`)."""
    info = DATASET_INFO[name]
    return Workload(name, info.n_units, info.n_classes, info.default_steps,
                    math.exp(-info.dt_ms / info.tau_mem_ms), math.exp(-info.dt_ms / info.tau_out_ms),
                    info.reduce, info.init, info.init_gain, SYNTHETIC_RATE[name], f_up=info.f_up)


WORKLOADS = {name: workload(name) for name in DATASET_INFO}


def conv_workload(name: str) -> Workload:
    """Dataset ``name``'s conv network (:data:`~lzo_bench.core.conv.CONV_NETWORKS`) on its channels-last frames,
    flattened straight into the readout; the synthetic input rate split over the channels (N-MNIST's two
    polarities: half the merged units' rate each); batch at most 32 (a dense ``[T·B, 12·30·30]`` float
    tensor of the N-MNIST network is 3.3 GB at B = 256)."""
    w, frame = WORKLOADS[name], DATASET_INFO[name].frame
    if name not in CONV_NETWORKS or frame is None:
        raise ValueError(f"{name} has no frames for a conv network; choose one of: {', '.join(CONV_NETWORKS)}")
    return replace(w, n_in=frame[0] * frame[1] * frame[2], hidden=(), conv=CONV_NETWORKS[name], frame=frame,
                   batch=min(w.batch, 32), synthetic_rate=w.synthetic_rate / frame[0])


#: the conv network of issue 22 on N-MNIST's frames: conv 2→12 5×5, sum-pooled 2×2, conv 12→32 5×5 stride 2
CONV_WORKLOAD = conv_workload("nmnist")


SYNTHETIC_HIDDEN_RATE = 0.01


@torch.no_grad()
def calibrate_gain(net: NetworkSpec, x: torch.Tensor, target: float = SYNTHETIC_HIDDEN_RATE) -> tuple[float, float]:
    """Gain ``g`` of ``N(0, g·(1−β)/√fan_in)`` weights at which hidden layer 1 fires at ``target``
    spikes per (step, neuron) on ``x`` (bisection in log-space); returns ``(g, rate reached)``.

    Untrained networks with the paper's init are silent on synthetic input; a trained network is
    not, and a silent one would make every sparse backward trivially empty.
    """

    backend = select_backend("auto", x.device)
    lo, hi = 0.1, 1e4
    rate = 0.0
    for _ in range(30):
        g = math.sqrt(lo * hi)
        model = SNN(replace(net, init="normal", init_gain=g), torch.Generator().manual_seed(0)).to(x.device)
        count = model(x, backend=backend).counts[0]
        rate = float(count.sum()) / (x.shape[0] * count.numel())
        lo, hi = (g, hi) if rate < target else (lo, g)
        if abs(rate - target) < 0.05 * target:
            break
    return math.sqrt(lo * hi), rate


@torch.no_grad()
def calibrate_deeper_layers(model: SNN, x: torch.Tensor, target: float = SYNTHETIC_HIDDEN_RATE) -> list[float]:
    """Scale each hidden layer after the first (in place, bisection in log-space on a factor of its
    weights) so that it too fires at ``target`` spikes per (step, neuron) on ``x``, layer by layer;
    returns every hidden layer's rate. One gain for all layers leaves a conv network's second layer,
    fed sum-pooled counts, near 10 %."""
    backend = select_backend("auto", x.device)

    def rates() -> list[float]:
        return [float(c.sum()) / (x.shape[0] * c.numel()) for c in model(x, backend=backend).counts]

    for layer in range(1, len(model.weights) - 1):
        w0 = model.weights[layer].detach().clone()
        lo, hi = 1e-3, 1e3
        for _ in range(30):
            scale = math.sqrt(lo * hi)
            model.weights[layer].copy_(w0 * scale)
            rate = rates()[layer]
            lo, hi = (scale, hi) if rate < target else (lo, scale)
            if abs(rate - target) < 0.05 * target:
                break
    return rates()
