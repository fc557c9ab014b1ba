"""Discrete LIF layer, pure PyTorch — the reference every other backend must equal.

Per layer, neuron ``j``, step ``t`` (paper eq. 1, docs/ARCHITECTURE.md §3)::

    I[t] = x[t] @ W
    u[t] = β·u[t−1] + I[t] − θ·s[t−1]      (subtractive reset, NOT differentiated)
    s[t] = H(u[t] − θ)

One matrix product for all ``T·B`` rows, then the scan over time. The spike's backward is
``∂s/∂v := γ(v)`` with ``γ`` from :mod:`lzo_bench.core.gates`, so with the reset detached autograd
computes ``∂L/∂u[t] = e[t] + β·∂L/∂u[t+1]``, ``e[t] = ∂L/∂s[t]·γ[t]`` (docs/ARCHITECTURE.md §5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lzo_bench.core.conv import ConvShape, conv_current
from lzo_bench.core.gates import GateSpec, gate_values
from lzo_bench.core.rng import DrawKey


class LayerOut(NamedTuple):
    spikes: torch.Tensor                      # [T, B, N]
    active: int                               # (b, t, j) entries the backward must touch
    active_idx: torch.Tensor | None = None    # their flat indices, where a backend keeps a list


class _Heaviside(torch.autograd.Function):
    """``s = H(v)`` forward, ``∂L/∂v = ∂L/∂s · γ`` backward with a precomputed gate ``γ``."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (gate,) = ctx.saved_tensors
        return grad * gate, None


def lif_membrane(current: torch.Tensor, beta: float, theta: float) -> torch.Tensor:
    """``u[t] = β·u[t−1] + I[t] − θ·s[t−1]`` for all steps of input current ``[T, B, N]``, from
    ``u[−1] = s[−1] = 0``, with ``s[t] = H(u[t] − θ)``; the reset is detached."""
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(u)
    us = []
    for i_t in current.unbind(0):
        u = beta * u + i_t - theta * s
        s = (u - theta > 0).to(u.dtype)
        us.append(u)
    return torch.stack(us)


def lif_potentials(current: torch.Tensor, beta: float, theta: float) -> torch.Tensor:
    """``v[t] = u[t] − θ`` for all steps of input current ``[T, B, N]`` (:func:`lif_membrane`)."""
    return lif_membrane(current, beta, theta) - theta


def layer_current(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv: ConvShape | None = None) -> torch.Tensor:
    """``I = x @ W + b`` for ``x [T, B, N_in]`` (one product over all ``T·B`` rows), or the conv
    current with ``conv``."""
    if conv is not None:
        return conv_current(x, weight, bias, conv)
    steps, batch, _ = x.shape
    current = (x.reshape(steps * batch, x.shape[-1]) @ weight).view(steps, batch, weight.shape[1])
    return current if bias is None else current + bias


def lif_layer(
    x: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    theta: float,
    spec: GateSpec | None,
    key: DrawKey | None,
    layer: int,
    prev: LayerOut | None = None,
    bias: torch.Tensor | None = None,
    conv: ConvShape | None = None,
) -> LayerOut:
    """Spikes of one LIF layer for input spikes ``x [T, B, N_in]``, weights ``W [N_in, N]`` and an
    optional bias ``b [N]`` (``I[t] = x[t] @ W + b``); with ``conv``, ``W [C_out, C_in, K, K]`` and
    ``I = conv2d(x, W) + b`` on channels-last units (:func:`lzo_bench.core.conv.conv_current`).

    ``spec=None`` is inference: no gate is computed and nothing is kept for a backward.
    ``active`` counts the non-zero gate entries of a sparse rule; the dense ``surrogate`` rule
    touches every entry, so there it is ``T·B·N``. ``prev`` (the previous layer's output) is
    not needed here: autograd back-propagates densely.
    """
    current = layer_current(x, weight, bias, conv)
    v = lif_potentials(current, beta, theta)
    if spec is None:
        return LayerOut((v > 0).to(v.dtype), 0)
    if key is None:
        raise ValueError("a DrawKey is needed to compute gates")
    gate = gate_values(v.detach(), spec, key, layer)
    active = int(torch.count_nonzero(gate)) if spec.is_sparse else gate.numel()
    return LayerOut(_Heaviside.apply(v, gate), active)
