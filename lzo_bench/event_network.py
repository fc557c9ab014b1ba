"""The whole network sparse end to end: event-driven forward, gradients handed between layers as
values on the active lists (DESIGN.md §5b), on the ``lzo`` ops of ``kernels/snn_cpu.cpp`` (CPU)
and ``kernels/snn_cuda.cu`` (CUDA).

Forward, per hidden layer ``l`` (input events ``x_l``: the data's for ``l = 0``, else layer
``l − 1``'s spikes)::

    I[t, b, :] = Σ_{events (t, b, i) of x_l} x·W_l[i, :]     (one GEMM instead when x_l is dense)
    u = β·u + I − θ·s_prev,  s = H(u − θ),  γ = gate(u − θ)   (fused, per batch row)
    readout  o[t] = β_r·o[t−1] + (1 − β_r)·(s_L[t] @ W_out)   from the last layer's spike events

One autograd node takes the weights and returns ``o [T, B, C]`` and the spike counts
``count_l [B, N_l]`` (the regulariser's input). Its backward, for the sparse rules::

    d_a = (1 − β_r)·ĝ_o,  dW_out = Σ_spikes d_a,  g_L = d_a·W_out[j] at layer L's active entries
    layer l:  e = (g_l + ∂L/∂count_l)·γ_l on its active list;  dW_l from e and x_l's trace;
              g_{l−1} = Σ_{t' ≥ t} β^{t'−t} e W_l[i, j]  only at layer l−1's active entries

so no [T, B, N] tensor exists in the backward. The dense ``surrogate`` rule runs the same forward and
a dense backward (reverse scan, dW from the input events or one GEMM, dx by GEMM).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from lzo_bench import ops
from lzo_bench.events import SpikeEvents
from lzo_bench.forward import Forward
from lzo_bench.gates import GateSpec
from lzo_bench.rng import DrawKey

if TYPE_CHECKING:
    from lzo_bench.model import SNN

#: how a layer's current is formed: chosen by input density (``auto``), or forced for benchmarks
CURRENT_MODES = {"auto": 0, "events": 1, "gemm": 2}


@dataclass
class LayerState:
    """What the forward of one hidden layer leaves: its spikes (the next layer's input) and, for the
    backward, its active list (sparse rules) or its dense gate (``surrogate``)."""

    spikes: SpikeEvents
    counts: torch.Tensor
    active_ptr: torch.Tensor
    active_col: torch.Tensor
    active_gate: torch.Tensor
    dense_gate: torch.Tensor

    @property
    def active(self) -> torch.Tensor:
        """Active entries, ``active_ptr[-1]`` as a 0-d tensor on the list's device (lists made on the
        GPU are allocated at their bound); ``Forward.active`` reads them, without a sync per layer."""
        return self.active_ptr[-1]


@dataclass
class _Run:
    """One forward's constants and what it leaves for the caller."""

    x: SpikeEvents
    spec: GateSpec | None
    key: DrawKey | None
    beta: float
    theta: float
    beta_out: float
    current_mode: int
    lib: Any = None  # the op namespace: torch.ops.lzo, or torch.ops.lzo_sim (the CUDA kernels, simulated)
    layers: list[LayerState | None] = field(default_factory=list)


def _layer_forward(run: _Run, x: SpikeEvents, w: torch.Tensor, layer: int) -> LayerState:
    table, *params = ops.gate_args(run.spec, run.key, w.device)
    s_ptr, s_col, counts, a_ptr, a_col, a_gate, dense_gate = run.lib.lif_events_forward(
        x.ptr, x.col, x.val, w, table, x.steps, run.beta, run.theta, *params, layer, run.current_mode)
    spikes = SpikeEvents(s_ptr, s_col, s_col.new_empty(0, dtype=torch.float32), x.steps, x.batch, w.shape[1])
    return LayerState(spikes, counts, a_ptr, a_col, a_gate, dense_gate)


def _forward_all(run: _Run, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    h = run.x
    for layer, w in enumerate(weights[:-1]):
        state = _layer_forward(run, h, w, layer)
        run.layers.append(state)
        h = state.spikes
    return run.lib.readout_forward(h.ptr, h.col, weights[-1], h.steps, run.beta_out)


class _EventNetwork(torch.autograd.Function):
    """``(o, count_1, …, count_L) = network(weights…)``; see the module docstring."""

    @staticmethod
    def forward(ctx, run: _Run, *weights: torch.Tensor):  # type: ignore[override]
        o = _forward_all(run, weights)
        saved: list[torch.Tensor] = [run.x.ptr, run.x.col, run.x.val, *weights]
        for st in run.layers:
            saved += [st.spikes.ptr, st.spikes.col, st.active_ptr, st.active_col, st.active_gate, st.dense_gate]
        ctx.save_for_backward(*saved)
        ctx.set_materialize_grads(False)  # an output the loss does not use gets None, not a zero tensor
        ctx.run = replace(run, layers=[None] * len(run.layers))  # tensors live in saved_tensors only: freed after backward
        ctx.n_weights = len(weights)
        return (o, *(st.counts for st in run.layers))

    @staticmethod
    def backward(ctx, grad_o: torch.Tensor | None, *grad_counts: torch.Tensor | None):  # type: ignore[override]
        run: _Run = ctx.run
        saved = ctx.saved_tensors
        x = SpikeEvents(*saved[:3], run.x.steps, run.x.batch, run.x.width)
        weights = saved[3:3 + ctx.n_weights]
        per_layer = [saved[3 + ctx.n_weights + 6 * i: 3 + ctx.n_weights + 6 * (i + 1)] for i in range(len(run.layers))]
        steps, batch = x.steps, x.batch
        empty_f = weights[0].new_empty(0)
        empty_i = run.x.ptr.new_empty(0)
        empty_c = run.x.col.new_empty(0)
        inputs = [x] + [SpikeEvents(p[0], p[1], empty_f, steps, batch, w.shape[1])
                        for p, w in zip(per_layer, weights[:-1])]
        last = per_layer[-1]
        sparse = run.spec is not None and run.spec.is_sparse
        grads: list[torch.Tensor | None] = [None] * ctx.n_weights
        if grad_o is None:  # only the counts reach the loss: no readout gradient, as autograd gives
            n_last = weights[-1].shape[0]
            g = empty_f.new_zeros(last[3].numel() if sparse else steps * batch * n_last)
            g = g if sparse else g.view(steps * batch, n_last)
        else:
            grads[-1], d_a, g = run.lib.readout_backward(
                grad_o.contiguous(), last[0], last[1], weights[-1], run.beta_out,
                last[2] if sparse else empty_i, last[3] if sparse else empty_c)
            if not sparse:
                g = d_a @ weights[-1].t()
        for layer in reversed(range(len(per_layer))):
            _, _, a_ptr, a_col, a_gate, dense_gate = per_layer[layer]
            cg = grad_counts[layer] if grad_counts[layer] is not None else empty_f
            xin = inputs[layer]
            if sparse:
                prev = per_layer[layer - 1] if layer > 0 else None
                grads[layer], g = run.lib.lif_sparse_backward(
                    g, a_ptr, a_col, a_gate, cg, xin.ptr, xin.col, xin.val, weights[layer], run.beta, steps,
                    prev[2] if prev else empty_i, prev[3] if prev else empty_c)
            else:
                grads[layer], g = run.lib.lif_dense_backward(
                    g, dense_gate, cg, xin.ptr, xin.col, xin.val, weights[layer], run.beta, steps, layer > 0,
                    run.current_mode)
        return (None, *grads)


def as_events(x: torch.Tensor | SpikeEvents) -> SpikeEvents:
    """``x`` as events (the C++ compaction for a dense CPU tensor)."""
    if isinstance(x, SpikeEvents):
        return x
    ops.build()  # cached: loads the ops when no backend has yet
    ptr, col, val = torch.ops.lzo.to_events(x.float())
    if val.numel() and bool((val == 1).all()):
        val = val.new_empty(0)
    return SpikeEvents(ptr, col, val, x.shape[0], x.shape[1], x.shape[2])


def event_network(model: "SNN", x: torch.Tensor | SpikeEvents, spec: GateSpec | None, key: DrawKey | None,
                  current: str = "auto", lib: Any = None) -> Forward:
    """The forward of ``model`` on ``x`` through the event ops (``lib``: their namespace, by default
    ``torch.ops.lzo``); differentiable in the weights."""
    net = model.spec
    events = as_events(x)
    if events.width != net.n_in:
        raise ValueError(f"x has {events.width} input units but the network takes {net.n_in}")
    run = _Run(events, spec, key, net.beta, net.theta, net.beta_out, CURRENT_MODES[current], lib or torch.ops.lzo)
    weights = tuple(model.weights)
    if spec is None:
        with torch.no_grad():
            o = _forward_all(run, weights)
        counts = [st.counts for st in run.layers]
    else:
        o, *counts = _EventNetwork.apply(run, *weights)
    logits = o.amax(0) if net.reduce == "max" else o.sum(0)
    sparse = spec is not None and spec.is_sparse
    active = [st.active if sparse else (0 if spec is None else st.counts.shape[0] * events.steps * st.counts.shape[1])
              for st in run.layers]
    return Forward(logits, counts, active, [st.spikes for st in run.layers])
