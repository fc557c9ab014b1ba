"""A feed-forward spiking network as the backends run it: hidden LIF layers and a leaky readout, each
with its own constants, and the dense reference path through them.

Hidden layer ``l`` (docs/ARCHITECTURE.md §3, paper eq. 1), ``x_0`` the input, ``x_l = s_{l−1}``::

    I[t] = x_l[t] @ W_l + b_l
    u[t] = β_l·u[t−1] + I[t] − θ_l·s[t−1],   s[t] = H(u[t] − θ_l),   γ = gate_l(u − θ_l)

Readout: ``o[t] = β_r·o[t−1] + (1 − β_r)·(s_L[t] @ W_out + b_out)``, reduced by ``max_t`` or ``Σ_t``.
A bias enters the event path as one more input unit that fires at every step (its weight row is
``b``), and the readout's as its closed form ``(1 − β_r^{t+1})·b_out``, so the kernels need no bias.
Both :class:`lzo_bench.core.model.SNN` and :class:`lzo_bench.nn.Sequential` run through these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lzo_bench.core.conv import ConvShape, pool_dense
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.forward import Forward, leaky_readout
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey


@dataclass(frozen=True)
class Hidden:
    """One hidden LIF layer: weights ``[n_in, n]``, optional bias ``[n]``, constants, and its rule
    (``spec=None``: inference) with the key of this update's draws. A convolutional layer
    (:mod:`lzo_bench.core.conv`) has ``conv``, weights ``[C_out, C_in, K, K]`` and bias ``[C_out]``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    beta: float
    theta: float
    spec: GateSpec | None
    key: DrawKey | None
    conv: ConvShape | None = None

    @property
    def n_in(self) -> int:
        return self.conv.units_in if self.conv else self.weight.shape[0]

    @property
    def n_out(self) -> int:
        """The layer's neurons (its spikes' width)."""
        return self.conv.units_out if self.conv else self.weight.shape[1]

    @property
    def n_next(self) -> int:
        """The width of what the next layer receives (the spikes, pooled)."""
        return self.conv.units_next if self.conv else self.weight.shape[1]


@dataclass(frozen=True)
class Readout:
    weight: torch.Tensor
    bias: torch.Tensor | None
    beta: float
    reduce: str  # "max" or "sum" over time


@dataclass(frozen=True)
class Stack:
    """What a backend runs: the hidden layers in order and the readout."""

    hidden: tuple[Hidden, ...]
    readout: Readout

    def __post_init__(self) -> None:
        for a, b in zip(self.hidden, self.hidden[1:]):
            if a.n_next != b.n_in:
                raise ValueError(f"layer sizes do not chain: {a.n_next} outputs feed {b.n_in} inputs")
        if self.hidden and self.hidden[-1].n_next != self.hidden[-1].n_out:
            raise ValueError("the last hidden layer cannot pool: the readout takes its spikes as they are; "
                             "pool an earlier conv layer or add a layer after the pooling")
        specs = [h.spec for h in self.hidden]
        if any(s is None for s in specs) and not all(s is None for s in specs):
            raise ValueError("either every hidden layer has a rule (training) or none does (inference)")
        if len({s.is_sparse for s in specs if s is not None}) > 1:
            raise ValueError("the rules of one network must be all sparse (sparsegrad, localzo) or all "
                             "dense (surrogate): the sparse backward hands gradients between layers on "
                             "the active lists")

    @property
    def training(self) -> bool:
        return bool(self.hidden) and self.hidden[0].spec is not None

    @property
    def sparse(self) -> bool:
        return self.training and self.hidden[0].spec.is_sparse  # type: ignore[union-attr]


def readout_logits(stack: Stack, o: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, C]`` from the readout's ``o [T, B, C]`` without its bias: adds
    ``(1 − β_r^{t+1})·b_out`` (the bias through the recursion from ``o[−1] = 0``) and reduces."""
    r = stack.readout
    if r.bias is not None:
        t = torch.arange(o.shape[0], device=o.device, dtype=o.dtype)
        o = o + (1.0 - r.beta ** (t + 1.0))[:, None, None] * r.bias
    return o.amax(0) if r.reduce == "max" else o.sum(0)


def dense_network(stack: Stack, x: torch.Tensor | SpikeEvents, layer_fn: Callable) -> Forward:
    """The network on dense tensors, layer by layer through ``layer_fn`` (the pure-PyTorch reference
    :func:`lzo_bench.core.lif.lif_layer`, or the naive per-step baseline)."""
    h = x.dense() if isinstance(x, SpikeEvents) else x if x.is_floating_point() else x.float()
    spikes, active, out = [], [], None
    for layer, hid in enumerate(stack.hidden):
        out = layer_fn(h, hid.weight, hid.beta, hid.theta, hid.spec, hid.key, layer, out, bias=hid.bias, conv=hid.conv)
        spikes.append(out.spikes)
        active.append(out.active)
        h = pool_dense(out.spikes, hid.conv) if hid.conv else out.spikes
    o = leaky_readout(h, stack.readout.weight, stack.readout.beta)
    return Forward(readout_logits(stack, o), [s.sum(0) for s in spikes], active, spikes)


def with_bias_unit(x: SpikeEvents) -> SpikeEvents:
    """``x`` with one more unit, index ``width``, firing with value 1 at every row: the layer's
    current ``Σ x·W`` over ``[W; b]`` is then ``x @ W + b``."""
    rows = x.steps * x.batch
    n = x.nnz
    counts = (x.ptr[1:] - x.ptr[:-1]).long()
    ptr = x.ptr + torch.arange(rows + 1, device=x.ptr.device, dtype=x.ptr.dtype)
    pos = torch.arange(n, device=x.col.device) + torch.repeat_interleave(
        torch.arange(rows, device=x.col.device), counts)
    col = torch.full((n + rows,), x.width, dtype=x.col.dtype, device=x.col.device)
    col[pos] = x.col[:n]
    val = x.val
    if val.numel():
        val = torch.ones(n + rows, dtype=x.val.dtype, device=x.val.device)
        val[pos] = x.val[:n]
    return SpikeEvents(ptr, col, val, x.steps, x.batch, x.width + 1)
