"""The feed-forward spiking network of the paper (§5) and SparseGrad: LIF layers, leaky readout.

Hidden layers follow :mod:`lzo_bench.core.lif`. The readout is a non-spiking leaky integrator::

    o[t] = β_r·o[t−1] + (1 − β_r)·(s_L[t] @ W_out)

reduced over time by ``max_t o[t]`` (or ``Σ_t o[t]`` for SHD) into logits, then
log-softmax and NLL. The SparseGrad spike-count regularisers are added per hidden layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from lzo_bench.core.conv import ConvLayer, ConvShape, chain_shapes
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.forward import Forward, leaky_readout
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.lif import lif_layer
from lzo_bench.core.network import Hidden, Readout, Stack, dense_network
from lzo_bench.core.rng import DrawKey

if TYPE_CHECKING:
    from lzo_bench.ops.backends import Backend

__all__ = ["SNN", "NetworkSpec", "SpikeRegularizer", "classification_loss", "Forward", "leaky_readout",
           "lif_problem", "readout_problem"]


def lif_problem(beta: float, theta: float) -> str | None:
    """What is wrong with a LIF layer's leak ``beta`` and threshold ``theta``, or None: the one rule that
    ``nn.LIF``, ``nn.ConvLIF`` and a checkpoint's network are held to (β in [0, 1]; θ > 0 and finite)."""
    if not 0.0 <= beta <= 1.0:  # NaN fails it too
        return f"beta must lie in [0, 1], got {beta}"
    if not (theta > 0 and math.isfinite(theta)):
        return f"theta must be > 0, got {theta}"
    return None


def readout_problem(beta: float) -> str | None:
    """What is wrong with a leaky readout's ``beta`` (it must lie in [0, 1): at 1 the readout never forgets
    and ``1 − β`` scales its input to 0), or None; ``nn.LeakyReadout``'s rule and a checkpoint's ``beta_out``'s."""
    if not 0.0 <= beta < 1.0:
        return f"beta must lie in [0, 1), got {beta}"
    return None


@dataclass(frozen=True)
class NetworkSpec:
    """Shape and constants of the network; enough to rebuild it from a checkpoint."""

    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    beta: float
    beta_out: float
    theta: float = 1.0
    reduce: str = "max"  # "max" or "sum" over time
    init: str = "normal"  # "normal": N(0, gain·(1−β)/√fan_in); "uniform": U(±gain/√fan_in)
    init_gain: float = 10.0
    conv: tuple[ConvLayer, ...] = ()  # conv layers before the hidden ones (lzo_bench.core.conv)
    frame: tuple[int, int, int] | None = None  # (C, H, W) of the input, channels-last units, with conv

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.hidden) or not (self.hidden or self.conv):
            raise ValueError(f"hidden sizes must be positive integers, got {self.hidden}")
        if self.conv:
            if self.frame is None or self.frame[0] * self.frame[1] * self.frame[2] != self.n_in:
                raise ValueError(f"conv layers need frame (C, H, W) with C·H·W = n_in = {self.n_in}, got {self.frame}")
            self.conv_shapes()
        if self.reduce not in ("max", "sum"):
            raise ValueError(f"reduce must be 'max' or 'sum', got {self.reduce!r}")
        if self.init not in ("normal", "uniform"):
            raise ValueError(f"init must be 'normal' or 'uniform', got {self.init!r}")

    @property
    def arch(self) -> str:
        """``conv`` for a network with conv layers, else ``fc``."""
        return "conv" if self.conv else "fc"

    def conv_shapes(self) -> list[ConvShape]:
        return chain_shapes(self.frame, self.conv) if self.conv else []  # type: ignore[arg-type]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Neurons per spiking layer, the conv layers' first."""
        return (*(c.units_out for c in self.conv_shapes()), *self.hidden)

    @property
    def flat_in(self) -> int:
        """The width of the first fully connected layer's input (the conv part flattened)."""
        shapes = self.conv_shapes()
        return shapes[-1].units_next if shapes else self.n_in

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["conv"] = [c.to_dict() for c in self.conv]
        d["frame"] = list(self.frame) if self.frame else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSpec":
        frame = d.get("frame")
        return cls(**{**d, "hidden": tuple(d["hidden"]), "conv": tuple(ConvLayer(**c) for c in d.get("conv", ())),
                      "frame": tuple(frame) if frame else None})


@dataclass(frozen=True)
class SpikeRegularizer:
    """SparseGrad's spike-count regularisers, per hidden layer and sample ``b``::

        upper = λ_up · relu(mean_j count[b, j] − f_up)
        lower = λ_low · Σ_j relu(f_low − count[b, j])² / N

    summed over layers and averaged over the batch; ``count[b, j] = Σ_t s[t, b, j]`` (the
    forward's ``counts``, ``[B, N]`` per layer).
    """

    lambda_up: float = 0.06
    f_up: float = 1.0
    lambda_low: float = 100.0
    f_low: float = 1e-3
    enabled: bool = field(default=True)

    def __call__(self, counts: list[torch.Tensor]) -> torch.Tensor:
        total = counts[0].new_zeros(())
        if not self.enabled:
            return total
        for count in counts:
            upper = self.lambda_up * F.relu(count.mean(1) - self.f_up)
            lower = self.lambda_low * F.relu(self.f_low - count).pow(2).sum(1) / count.shape[1]
            total = total + (upper + lower).mean()
        return total


class SNN(nn.Module):
    """Feed-forward LIF network; weights are stored ``[fan_in, fan_out]`` as in ``x @ W``, a conv
    layer's ``[C_out, C_in, K, K]`` as in ``conv2d`` (fan-in ``C_in·K²``)."""

    def __init__(self, spec: NetworkSpec, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = spec
        sizes = (spec.flat_in, *spec.hidden, spec.n_out)
        convs = [self._init(c.c_in * c.kernel ** 2, (c.c_out, c.c_in, c.kernel, c.kernel), generator)
                 for c in spec.conv_shapes()]
        self.weights = nn.ParameterList(
            [nn.Parameter(w) for w in convs]
            + [nn.Parameter(self._init(fan_in, (fan_in, fan_out), generator))
               for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
        )

    def _init(self, fan_in: int, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        w = torch.empty(shape)
        if self.spec.init == "normal":
            std = self.spec.init_gain * (1.0 - self.spec.beta) / math.sqrt(fan_in)
            return w.normal_(0.0, std, generator=generator)
        bound = self.spec.init_gain / math.sqrt(fan_in)
        return w.uniform_(-bound, bound, generator=generator)

    def forward(
        self,
        x: torch.Tensor | SpikeEvents,
        gate: GateSpec | None = None,
        key: DrawKey | None = None,
        backend: Backend | None = None,
    ) -> Forward:
        """Logits for input spikes ``x [T, B, n_in]`` (a tensor or its events); ``gate=None`` runs
        inference only.

        ``backend=None`` is the pure-PyTorch reference. A backend with a whole-network path (the
        C++ event ops) runs it; the others run layer by layer on dense tensors.
        """
        if backend is None:
            return dense_network(self.stack(gate, key), x, lif_layer)
        if backend.network is not None:
            return backend.network(self, x, gate, key)
        assert backend.layer is not None, f"backend {backend.name} has neither a network nor a layer path"
        return dense_network(self.stack(gate, key), x, backend.layer)

    def stack(self, gate: GateSpec | None, key: DrawKey | None) -> Stack:
        """The network as the backends run it: every hidden layer with this β, θ, rule and key."""
        s = self.spec
        shapes = s.conv_shapes() + [None] * len(s.hidden)
        hidden = tuple(Hidden(w, None, s.beta, s.theta, gate, key, c) for w, c in zip(self.weights[:-1], shapes))
        return Stack(hidden, Readout(self.weights[-1], None, s.beta_out, s.reduce))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``NLL(log_softmax(logits))``, mean over the batch."""
    return F.nll_loss(F.log_softmax(logits, dim=1), labels)
