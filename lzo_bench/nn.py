"""Sparse LIF layers for a user's own feed-forward network: the event-driven stack of ``lzo-bench
train`` as modules, any depth, β, θ and rule per layer, optional bias.

::

    from lzo_bench import nn, spike
    net = nn.Sequential(
        nn.LIF(64, 300, beta=0.9, rule=spike.LocalZO(delta=0.05, seed=1), bias=True),
        nn.LIF(300, 300, beta=0.5, rule=spike.LocalZO(delta=0.05, seed=2)),
        nn.LeakyReadout(300, 10, beta=0.9, reduce="max"),
    )
    logits = net(x)          # x: [T, B, 64] dense (float, bool or uint8) or SpikeEvents

Hidden layer ``l`` (:mod:`lzo_bench.network`)::

    u[t] = β_l·u[t−1] + x_l[t] @ W_l + b_l − θ_l·s[t−1],   s[t] = H(u[t] − θ_l)

and the readout ``o[t] = β_r·o[t−1] + (1 − β_r)·(s_L[t] @ W_out + b_out)``, ``logits = max_t o`` (or ``Σ_t``).
:class:`Sequential` keeps spikes as events between layers and runs the C++/CUDA event ops (the same
code as :class:`lzo_bench.model.SNN`): a sparse rule's backward touches only the active neurons. Its
rules must be all sparse or all dense; a rule without a C++ form (a custom ``g``) runs the
pure-PyTorch reference. On a training forward (``train()`` mode, grad enabled) each rule draws with
key ``(seed, counter)`` — layer ``l``'s position in the Philox counter — and its counter then
advances by one, so a run is reproducible from the seeds.

A :class:`LIF` on its own (outside :class:`Sequential`) is a dense layer whose spike function is the
rule (:mod:`lzo_bench.spike`): the estimator, not the sparse speed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lzo_bench import ops, spike
from lzo_bench.backends import Backend, select_backend
from lzo_bench.events import SpikeEvents
from lzo_bench.forward import Forward, leaky_readout
from lzo_bench.lif import lif_membrane
from lzo_bench.network import Hidden, Readout, Stack, dense_network, readout_logits
from lzo_bench.rng import DrawKey


def _checked(x: torch.Tensor | SpikeEvents) -> torch.Tensor | SpikeEvents:
    if not isinstance(x, SpikeEvents) and x.dim() != 3:
        raise ValueError(f"input must have shape [T, B, n], got {tuple(x.shape)}")
    return x


def _as_float(x: torch.Tensor | SpikeEvents) -> torch.Tensor | SpikeEvents:
    x = _checked(x)
    return x if isinstance(x, SpikeEvents) or x.dtype == torch.float32 else x.to(torch.float32)


class LIF(nn.Module):
    """LIF layer ``n_in → n_out``: weights ``[n_in, n_out]`` (as ``x @ W``) drawn from
    ``N(0, gain·(1 − β)/√n_in)`` (``gain/√n_in`` at β = 0), bias zero."""

    def __init__(self, n_in: int, n_out: int, beta: float = 0.95, theta: float = 1.0,
                 rule: spike.SpikeFunction | None = None, bias: bool = False, init_gain: float = 10.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if n_in < 1 or n_out < 1:
            raise ValueError(f"layer sizes must be ≥ 1, got {n_in} → {n_out}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        if not (theta > 0 and math.isfinite(theta)):
            raise ValueError(f"theta must be > 0, got {theta}")
        std = init_gain * ((1.0 - beta) if beta < 1.0 else 1.0) / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, std, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.beta, self.theta = float(beta), float(theta)
        self.rule = rule if rule is not None else spike.LocalZO()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, n_out]`` of the dense layer, the rule as spike function on ``u − θ``."""
        x = _as_float(x)
        if isinstance(x, SpikeEvents):
            x = x.dense()
        current = x @ self.weight if self.bias is None else x @ self.weight + self.bias
        return self.rule(lif_membrane(current, self.beta, self.theta) - self.theta)

    def extra_repr(self) -> str:
        n_in, n_out = self.weight.shape
        return f"{n_in}, {n_out}, beta={self.beta:g}, theta={self.theta:g}, bias={self.bias is not None}"


class LeakyReadout(nn.Module):
    """Non-spiking leaky readout ``n_in → n_out``, reduced over time by ``max`` or ``sum``."""

    def __init__(self, n_in: int, n_out: int, beta: float = 0.9, reduce: str = "max", bias: bool = False,
                 init_gain: float = 10.0, generator: torch.Generator | None = None):
        super().__init__()
        if reduce not in ("max", "sum"):
            raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        std = init_gain * (1.0 - beta) / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, std, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.beta, self.reduce = float(beta), reduce

    def readout(self) -> Readout:
        return Readout(self.weight, self.bias, self.beta, self.reduce)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_out]`` from spikes ``[T, B, n_in]``."""
        o = leaky_readout(_as_float(s), self.weight, self.beta)  # type: ignore[arg-type]
        return readout_logits(Stack((), self.readout()), o)


class Sequential(nn.Module):
    """``LIF, …, LIF, LeakyReadout`` run as one event-driven network; ``backend`` as ``--backend``
    (``auto``: the C++/CUDA event ops where they run, else the pure-PyTorch reference)."""

    def __init__(self, *layers: nn.Module, backend: str = "auto"):
        super().__init__()
        if len(layers) < 2 or not all(isinstance(m, LIF) for m in layers[:-1]) \
                or not isinstance(layers[-1], LeakyReadout):
            raise TypeError("Sequential takes one or more nn.LIF layers followed by one nn.LeakyReadout, got "
                            + ", ".join(type(m).__name__ for m in layers))
        for a, b in zip(layers[:-1], layers[1:]):
            if a.weight.shape[1] != b.weight.shape[0]:
                raise ValueError(f"layer sizes do not chain: {a.weight.shape[1]} outputs feed "
                                 f"{b.weight.shape[0]} inputs")
        self.layers = nn.ModuleList(layers)
        self.backend_name = backend
        self._backends: dict[tuple[str, bool], Backend] = {}

    @classmethod
    def from_snn(cls, model: nn.Module, rule: spike.SpikeFunction, backend: str = "auto") -> "Sequential":
        """The layers of an :class:`lzo_bench.model.SNN`, sharing its parameters, every layer with
        ``rule``."""
        s = model.spec
        hidden = []
        for w in model.weights[:-1]:
            layer = LIF(w.shape[0], w.shape[1], s.beta, s.theta, rule)
            layer.weight = w
            hidden.append(layer)
        out = LeakyReadout(model.weights[-1].shape[0], model.weights[-1].shape[1], s.beta_out, s.reduce)
        out.weight = model.weights[-1]
        return cls(*hidden, out, backend=backend)

    def stack(self, training: bool) -> Stack:
        """The network as the backends run it; on a training forward each rule's key is taken and
        its counter advanced (once per rule, however many layers share it)."""
        hidden, seen = [], set()
        for lif in self.layers[:-1]:
            rule = lif.rule
            spec = rule.spec if training else None
            key = DrawKey(rule.seed, rule.counter) if training else None
            hidden.append(Hidden(lif.weight, lif.bias, lif.beta, lif.theta, spec, key))
        if training:
            for lif in self.layers[:-1]:
                if id(lif.rule) not in seen:
                    seen.add(id(lif.rule))
                    lif.rule.counter += 1
        return Stack(tuple(hidden), self.layers[-1].readout())

    def _backend(self, device: torch.device, stack: Stack) -> Backend:
        specs = [h.spec for h in stack.hidden if h.spec is not None]
        custom = False
        for spec in specs:
            try:
                ops.check_supported(spec)
            except ops.UnsupportedGate:
                custom = True
        name = "torch" if custom and self.backend_name == "auto" else self.backend_name
        cache = (f"{device}", name)
        if cache not in self._backends:
            self._backends[cache] = select_backend(name, device, specs[0] if specs else None)
        return self._backends[cache]

    def run(self, x: torch.Tensor | SpikeEvents) -> Forward:
        """Logits, spike counts per hidden layer, active entries and spikes (:class:`Forward`); a bool
        or uint8 ``x`` goes to the event compaction as it is (no float copy)."""
        x = _checked(x)
        stack = self.stack(self.training and torch.is_grad_enabled())
        backend = self._backend(stack.readout.weight.device, stack)
        if backend.network is not None:
            return backend.network(stack, x, None, None)
        return dense_network(stack, x, backend.layer)

    def forward(self, x: torch.Tensor | SpikeEvents) -> torch.Tensor:
        """Logits ``[B, C]`` for input ``x [T, B, n_in]``."""
        return self.run(x).logits

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_backends"] = {}
        return state
