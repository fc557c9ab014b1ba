"""The whole network sparse end to end: event-driven forward, gradients handed between layers as
values on the active lists (docs/ARCHITECTURE.md §5b), on the ``lzo`` ops of ``kernels/cpu_*.cpp`` (CPU)
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

A dense float input that requires grad also gets its gradient (nothing is computed otherwise):
``∂L/∂x[t, b, i] = Σ_j W[i, j]·∂L/∂u[t, b, j]`` with ``∂L/∂u[t] = e[t] + β·∂L/∂u[t+1]``; the sparse rules
build ``∂L/∂u`` densely from the first layer's active list (a reverse β-filter over time) and take one
product with ``Wᵀ`` (conv: the transposed convolution), the dense rule asks its backward op for ``dx``.
A bias unit's column is dropped. There is no second derivative: a backward with ``create_graph`` is
refused. At inference (no rule) only the readout is differentiable, as on the torch backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from lzo_bench.core.conv import frames, pool_events, units, unpool_columns, unpool_dense
from lzo_bench.core.events import SpikeEvents, all_finite
from lzo_bench.core.forward import Forward
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.network import Hidden, Stack, readout_logits, with_bias_unit
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import extension as ops
from lzo_bench.ops import library

if TYPE_CHECKING:
    from lzo_bench.core.model import SNN

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
    stack: Stack
    current_mode: int
    lib: Any = None  # the op namespace: torch.ops.lzo, or torch.ops.lzo_sim (the CUDA kernels, simulated)
    inputs: list[SpikeEvents | None] = field(default_factory=list)  # each layer's input, bias unit included
    layers: list[LayerState | None] = field(default_factory=list)


def _layer_forward(run: _Run, x: SpikeEvents, w: torch.Tensor, layer: int) -> LayerState:
    hid = run.stack.hidden[layer]
    gate = library.gate_args(hid.spec, hid.key, w.device)
    if hid.conv:
        out = library.conv_lif_forward(run.lib, x, w, hid.conv, gate, hid.beta, hid.theta, layer=layer,
                                       current_mode=run.current_mode)
    else:
        out = library.lif_events_forward(run.lib, x, w, gate, hid.beta, hid.theta, layer=layer,
                                         current_mode=run.current_mode)
    spikes = SpikeEvents(out.spike_ptr, out.spike_col, out.spike_col.new_empty(0, dtype=torch.float32), x.steps,
                         x.batch, hid.n_out)
    return LayerState(spikes, out.counts, out.active_ptr, out.active_col, out.active_gate, out.dense_gate)


def _kernel_weight(hid: Hidden) -> torch.Tensor:
    """The weight as the ops take it: ``W`` or ``[W; b]`` (a bias is one more input unit); a conv
    layer's ``[C_out, C_in·K·K]`` with the bias as one more column."""
    if hid.conv:
        w = hid.weight.reshape(hid.weight.shape[0], -1)
        return w if hid.bias is None else torch.cat([w, hid.bias[:, None]], 1)
    return hid.weight if hid.bias is None else torch.cat([hid.weight, hid.bias[None]])


def _forward_all(run: _Run, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``weights``: per hidden layer ``W`` or ``[W; b]`` (a bias is one more input unit), then ``W_out``."""
    h = _hidden_all(run, weights[:-1])
    with library.own_lists(run.lib, _own(run)):
        return library.readout_forward(run.lib, h, weights[-1], run.stack.readout.beta)


def _own(run: _Run) -> bool:
    """Whether every list after the input is the extension's own: the first hidden layer's forward validates the
    input (``validate_list_kernel``), the later ops take lists our ops made (:func:`library.own_lists`)."""
    return len(run.stack.hidden) > 0


def _backend_name(run: _Run) -> str:
    if getattr(run.lib, "name", "") == "lzo_sim":
        return "cuda-sim"
    return "cuda" if run.x.device.type == "cuda" else "cpp"


def _no_second_derivative(run: _Run) -> None:
    """A backward with ``create_graph`` runs in grad mode; the ops' gradients are not differentiable."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"the {_backend_name(run)} backend's event ops have no second derivative; use "
                           "backend='torch' for double backward")


def _hidden_all(run: _Run, weights: tuple[torch.Tensor, ...]) -> SpikeEvents:
    """The hidden layers' forward; the events the readout takes."""
    h = run.x
    for layer, w in enumerate(weights):
        if run.stack.hidden[layer].bias is not None:
            h = with_bias_unit(h)
        run.inputs.append(h)
        with library.own_lists(run.lib, layer > 0):  # the first layer's forward validates the input list
            state = _layer_forward(run, h, w, layer)
        run.layers.append(state)
        hid = run.stack.hidden[layer]
        with library.own_lists(run.lib):
            h = pool_events(state.spikes, hid.conv, run.lib) if hid.conv else state.spikes
    return h


class _Readout(torch.autograd.Function):
    """The readout alone, at inference (no rule: the hidden layers are not differentiable, as on the torch
    backend, but ``W_out`` is)."""

    @staticmethod
    def forward(ctx, run: _Run, h: SpikeEvents, w_out: torch.Tensor):  # type: ignore[override]
        ctx.save_for_backward(h.ptr, h.col, w_out)
        ctx.run = replace(run, inputs=[], layers=[])
        with library.own_lists(run.lib, _own(run)):
            return library.readout_forward(run.lib, h, w_out, run.stack.readout.beta)

    @staticmethod
    def backward(ctx, grad_o: torch.Tensor):  # type: ignore[override]
        _no_second_derivative(ctx.run)
        s_ptr, s_col, w_out = ctx.saved_tensors
        empty = s_ptr.new_empty(0)
        with library.own_lists(ctx.run.lib, _own(ctx.run)):
            dw, _, _ = library.readout_backward(ctx.run.lib, grad_o.contiguous(), s_ptr, s_col, w_out,
                                                ctx.run.stack.readout.beta, empty, empty)
        return None, None, dw


def _sparse_input_grad(run: _Run, g: torch.Tensor, layer: tuple[torch.Tensor, ...], count_grad: torch.Tensor,
                       w: torch.Tensor) -> torch.Tensor:
    """``∂L/∂x [B·T, n_in]`` of the first layer for a sparse rule: ``e = (∂L/∂s + ∂L/∂count)·γ`` on its
    active list, ``∂L/∂u[t] = e[t] + β·∂L/∂u[t+1]`` densely, then ``∂L/∂u·Wᵀ`` (conv: the transposed
    convolution); the bias unit dropped."""
    _, _, _, a_ptr, a_col, a_gate, _ = layer
    hid = run.stack.hidden[0]
    steps, batch, n_out = run.x.steps, run.x.batch, hid.n_out
    rows = steps * batch
    n = int(a_ptr[-1])  # lists made on the GPU are allocated at their bound
    row = torch.repeat_interleave(torch.arange(rows, device=a_ptr.device), (a_ptr[1:] - a_ptr[:-1]).long())
    col = a_col[:n].long()
    gs = g[:n]
    if count_grad.numel():
        gs = gs + count_grad.reshape(batch, n_out)[row // steps, col]
    du = g.new_zeros(batch, steps, n_out)
    du.view(rows, n_out).index_put_((row, col), gs * a_gate[:n], accumulate=True)
    for t in range(steps - 2, -1, -1):
        du[:, t] += hid.beta * du[:, t + 1]
    du = du.view(rows, n_out)
    if hid.conv is None:
        return du @ w[:hid.n_in].t()
    c = hid.conv
    w4 = w[:, :c.c_in * c.kernel * c.kernel].reshape(c.c_out, c.c_in, c.kernel, c.kernel)
    dx = torch.nn.grad.conv2d_input((rows, c.c_in, c.height, c.width), w4, frames(du, c.c_out, c.out_height,
                                    c.out_width).contiguous(), stride=c.stride, padding=c.padding)
    return units(dx)


class _EventNetwork(torch.autograd.Function):
    """``(o, count_1, …, count_L) = network(weights…)``; see the module docstring."""

    @staticmethod
    def forward(ctx, run: _Run, x: torch.Tensor | None, *weights: torch.Tensor):  # type: ignore[override]
        """``x``: the dense input when it requires grad (else ``None``); the forward reads ``run.x``."""
        o = _forward_all(run, weights)
        ctx.x_like = (x.dtype, tuple(x.shape)) if x is not None else None
        saved: list[torch.Tensor] = [*weights]
        for xin, st in zip(run.inputs, run.layers):
            saved += [xin.ptr, xin.col, xin.val, st.active_ptr, st.active_col, st.active_gate, st.dense_gate]
        last = run.layers[-1].spikes
        saved += [last.ptr, last.col]
        ctx.save_for_backward(*saved)
        ctx.set_materialize_grads(False)  # an output the loss does not use gets None, not a zero tensor
        ctx.widths = [xin.width for xin in run.inputs]
        # tensors live in saved_tensors only: freed after backward
        ctx.run = replace(run, inputs=[None] * len(run.inputs), layers=[None] * len(run.layers))
        ctx.n_weights = len(weights)
        return (o, *(st.counts for st in run.layers))

    @staticmethod
    def backward(ctx, grad_o: torch.Tensor | None, *grad_counts: torch.Tensor | None):  # type: ignore[override]
        _no_second_derivative(ctx.run)
        # every list here was saved by the forward: made by our ops, or the input its first layer validated
        with library.own_lists(ctx.run.lib, _own(ctx.run)):
            return _EventNetwork._backward(ctx, grad_o, *grad_counts)

    @staticmethod
    def _backward(ctx, grad_o: torch.Tensor | None, *grad_counts: torch.Tensor | None):
        run: _Run = ctx.run
        want_dx = ctx.x_like is not None and ctx.needs_input_grad[1]
        dx: torch.Tensor | None = None
        saved = ctx.saved_tensors
        n_w = ctx.n_weights
        weights = saved[:n_w]
        per_layer = [saved[n_w + 7 * i: n_w + 7 * (i + 1)] for i in range(n_w - 1)]
        last_ptr, last_col = saved[-2:]
        steps, batch = run.x.steps, run.x.batch
        inputs = [SpikeEvents(p[0], p[1], p[2], steps, batch, width) for p, width in zip(per_layer, ctx.widths)]
        empty_f = weights[0].new_empty(0)
        empty_i = run.x.ptr.new_empty(0)
        empty_c = run.x.col.new_empty(0)
        last = per_layer[-1]
        sparse = run.stack.sparse
        grads: list[torch.Tensor | None] = [None] * n_w
        if grad_o is None:  # only the counts reach the loss: no readout gradient, as autograd gives
            n_last = weights[-1].shape[0]
            g = empty_f.new_zeros(last[4].numel() if sparse else steps * batch * n_last)
            g = g if sparse else g.view(steps * batch, n_last)
        else:
            grads[-1], d_a, g = library.readout_backward(
                run.lib, grad_o.contiguous(), last_ptr, last_col, weights[-1], run.stack.readout.beta,
                last[3] if sparse else empty_i, last[4] if sparse else empty_c)
            if not sparse:
                g = d_a @ weights[-1].t()
        for layer in reversed(range(len(per_layer))):
            _, _, _, a_ptr, a_col, a_gate, dense_gate = per_layer[layer]
            hid = run.stack.hidden[layer]
            below = run.stack.hidden[layer - 1] if layer > 0 else None
            cg = grad_counts[layer] if grad_counts[layer] is not None else empty_f
            xin = inputs[layer]
            if sparse:
                prev = per_layer[layer - 1] if layer > 0 else None
                prev_col, inside = empty_c, None
                if prev is not None:  # the layer below's entries, where its (pooled) spikes reach this layer
                    prev_col, inside = unpool_columns(prev[4], below.conv) if below.conv else (prev[4], None)
                lists = library.BackwardLists(g, a_ptr, a_col, a_gate, cg, xin)
                prev_ptr = prev[3] if prev else empty_i
                if layer == 0 and want_dx:
                    dx = _sparse_input_grad(run, g, per_layer[0], cg, weights[0])
                if hid.conv:
                    grads[layer], g = library.conv_sparse_backward(run.lib, lists, weights[layer], hid.conv, hid.beta,
                                                                   prev_ptr, prev_col)
                else:
                    grads[layer], g = library.lif_sparse_backward(run.lib, lists, weights[layer], hid.beta, prev_ptr,
                                                                  prev_col)
                if inside is not None:
                    g = g * inside
            else:
                input_grad = layer > 0 or want_dx
                if hid.conv:
                    grads[layer], g = library.conv_dense_backward(run.lib, g, dense_gate, cg, xin, weights[layer],
                                                                  hid.conv, hid.beta, input_grad=input_grad,
                                                                  current_mode=run.current_mode)
                else:
                    grads[layer], g = library.lif_dense_backward(run.lib, g, dense_gate, cg, xin, weights[layer],
                                                                 hid.beta, input_grad=input_grad,
                                                                 current_mode=run.current_mode)
                    if input_grad and hid.bias is not None:
                        g = g[:, :-1]  # the bias unit has no layer below
                if below is not None and below.conv:
                    g = unpool_dense(g, below.conv)
                g = g.contiguous() if layer > 0 else g
                if layer == 0 and want_dx:
                    dx = g
        if dx is not None:
            dtype, shape = ctx.x_like
            steps, batch, width = shape
            dx = dx.reshape(batch, steps, width).transpose(0, 1).to(dtype)
        return (None, dx, *grads)


def check_input(x: torch.Tensor | SpikeEvents) -> None:
    """Refuse what would run silently wrong or read out of bounds: a user's event list is validated
    (:meth:`SpikeEvents.validate`), a dense float input must be finite (one more pass over it, ~25–35 ms
    on an N-MNIST batch of T = 300, B = 256, 1156 units, one thread: the route for inputs that stay dense;
    :func:`as_events` checks a converted input on its events instead)."""
    if isinstance(x, SpikeEvents):
        x.validate()
    elif not all_finite(x):
        _refuse_non_finite(x)


def _refuse_non_finite(x: torch.Tensor) -> None:
    raise ValueError(f"the input holds NaN or inf ({int((~torch.isfinite(x)).sum())} of {x.numel()} values); "
                     "the neurons would go silent instead of failing: clean the data first")


def as_events(x: torch.Tensor | SpikeEvents, checked: bool = False) -> SpikeEvents:
    """``x`` as events (the C++ compaction for a dense tensor: float32, or a bool / uint8 spike tensor
    read as it is on the CPU, without a float copy). A user's event list is validated unless ``checked``;
    a dense input is always checked on its events: NaN and ±inf are non-zero, so they become events whose
    values are kept, and one pass over the ``nnz`` values finds them (not a second pass over ``T·B·N``)."""
    if isinstance(x, SpikeEvents):
        if not checked:
            x.validate()
        return x
    x = x.detach()
    ops.build()  # cached: loads the ops when no backend has yet
    if x.dtype not in (torch.float32, torch.bool, torch.uint8) or (x.is_cuda and x.dtype != torch.float32):
        x = x.float()
    ptr, col, val = library.to_events(torch.ops.lzo, x)
    if val.numel() and x.is_floating_point() and not all_finite(val):
        _refuse_non_finite(x)
    if x.dtype == torch.bool or (val.numel() and bool((val == 1).all())):
        val = val.new_empty(0)
    return SpikeEvents(ptr, col, val, x.shape[0], x.shape[1], x.shape[2])


def event_network(model: "SNN | Stack", x: torch.Tensor | SpikeEvents, spec: GateSpec | None = None,
                  key: DrawKey | None = None, current: str = "auto", lib: Any = None, checked: bool = False) -> Forward:
    """The forward of ``model`` on ``x`` through the event ops (``lib``: their namespace, by default
    ``torch.ops.lzo``); differentiable in the weights (and biases). ``model`` is an :class:`SNN` with
    the rule ``spec`` and ``key`` for all its layers, or a :class:`~lzo_bench.core.network.Stack` that
    carries its own (``spec`` and ``key`` then unused); ``checked``: the caller has run :func:`check_input`
    on ``x``. A dense float ``x`` that requires grad gets its gradient (training forwards)."""
    stack = model if isinstance(model, Stack) else model.stack(spec, key)
    events = as_events(x, checked)
    n_in = stack.hidden[0].n_in
    if events.width != n_in:
        raise ValueError(f"x has {events.width} input units but the network takes {n_in}")
    run = _Run(events, stack, CURRENT_MODES[current], lib or torch.ops.lzo)
    weights = tuple(_kernel_weight(h) for h in stack.hidden)
    weights += (stack.readout.weight,)
    if not stack.training:
        with torch.no_grad():
            h = _hidden_all(run, weights[:-1])
        if torch.is_grad_enabled() and weights[-1].requires_grad:
            o = _Readout.apply(run, h, weights[-1])
        else:
            with library.own_lists(run.lib, _own(run)):
                o = library.readout_forward(run.lib, h, weights[-1], stack.readout.beta)
        counts = [st.counts for st in run.layers]
    else:
        dense = isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
        o, *counts = _EventNetwork.apply(run, x if dense else None, *weights)
    sparse = stack.sparse
    active = [st.active if sparse else (0 if not stack.training else st.counts.shape[0] * events.steps * st.counts.shape[1])
              for st in run.layers]
    return Forward(readout_logits(stack, o), counts, active, [st.spikes for st in run.layers])
