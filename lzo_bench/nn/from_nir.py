"""A NIR graph as a :class:`lzo_bench.nn.Sequential`: :func:`from_nir`.

The graph must be a chain ``Input → … → Output`` of the nodes these layers run::

    [Conv2d → LIF [→ SumPool2d | AvgPool2d]]…  [Flatten]  (Affine | Linear) → (LIF | IF | CubaLIF)  …  (Affine | Linear) [→ LI]

Each neuron node is integrated with forward Euler at the graph's step ``dt`` (:mod:`lzo_bench.core.timescale`;
``a = dt/τ``)::

    LIF  τ dv/dt = v_leak − v + R·I   →  v ← (1 − a)·v + a·R·I :   β = 1 − dt/τ, weights and bias × a·R
    IF       dv/dt = R·I              →  v ← v + dt·R·I          :   β = 1,        weights and bias × dt·R
    CubaLIF with τ_syn = dt (the synapse passes its input on in the same step): the LIF, × w_in as well
    LI   τ dv/dt = v_leak − v + R·I   →  o ← β_r·o + (1 − β_r)·(R·I) :   β_r = 1 − dt/τ, weights × R
    a final Affine/Linear (no LI)      →  the readout with β_r = 0: its current, reduced over time

so the gain each neuron gives its input goes into the weights before it (per neuron for a dense layer, per
channel for a conv layer), θ is ``v_threshold`` (one per layer) and β is inverse to the exporter's
``τ = dt/(1 − β)``. ``AvgPool2d(k)`` after a conv layer's spikes is ``SumPool2d(k)`` with the next weighted
layer's weights × 1/k² (the next layer is linear in its input). A ``Flatten`` before a dense layer: NIR
flattens NCHW, these layers channels-last, so that layer's input rows are permuted
(:func:`lzo_bench.core.conv.nchw_order`). Everything is computed in float64 and rounded to float32 once;
a gain of exactly 1 leaves the weights bit for bit.

``dt``: the argument, else the graph's ``dt_s`` metadata (as ``lzo-bench export`` writes it), else refused;
graphs from snnTorch's ``export_to_nir`` are written for ``dt = 1e-4`` (:data:`SNNTORCH_DT`). NIR's neurons reset to
``v_reset``; these reset by subtracting θ (:data:`RESET_NOTE`, warned once per call). Anything else — a
branch or a cycle, ``Delay``, ``Threshold``, ``Scale``, a real synaptic time constant, ``v_leak ≠ 0``,
``v_reset ≠ 0``, a τ or θ that differs across a layer — is refused in one line naming the node.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lzo_bench import spike
from lzo_bench.core.conv import nchw_order, square_size
from lzo_bench.core.timescale import SNNTORCH_DT, beta_of, dt_of
from lzo_bench.nn.layers import LIF, ConvLIF, Flatten, LeakyReadout, Sequential, SumPool2d

__all__ = ["from_nir", "UnsupportedGraph", "RESET_NOTE", "SNNTORCH_DT"]

RESET_NOTE = ("from_nir: NIR's neurons reset to v_reset = 0 after a spike, lzo_bench.nn's subtract theta: "
              "after a neuron's first spike the converted network differs from a reset-to-zero simulator")

#: why a node type has no layer here
_NO_LAYER = {
    "Delay": "a transmission delay; these layers hand spikes on in the same step",
    "Threshold": "a bare threshold without a membrane; put it into a LIF node",
    "Scale": "a per-unit gain between layers; fold it into the next layer's weights",
    "Conv1d": "a 1-D convolution; these layers convolve 2-D frames",
    "I": "an integrator without a threshold; only the readout (LI) may be non-spiking",
    "CubaLI": "a synaptic current (tau_syn) in front of a leaky integrator; the readout has one state",
    "NIRGraph": "a nested graph; flatten it into one graph first",
}


class UnsupportedGraph(ValueError):
    """A NIR graph, or a node of it, that lzo_bench.nn's layers cannot run; one line, naming the node."""


def _name(key: str, node: Any) -> str:
    return f"{type(node).__name__} {key!r}"


def _chain(graph: Any) -> list[tuple[str, Any]]:
    """The nodes from ``Input`` to ``Output`` in order; branches, cycles and stray nodes refused."""
    import nir

    nodes, ins, outs = graph.nodes, {k: [] for k in graph.nodes}, {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        if a not in nodes or b not in nodes:
            raise UnsupportedGraph(f"edge ({a!r}, {b!r}) names a node the graph does not have")
        outs[a].append(b)
        ins[b].append(a)
    for key, node in nodes.items():
        for way, there in (("inputs", ins[key]), ("outputs", outs[key])):
            if len(there) > 1:
                raise UnsupportedGraph(f"{_name(key, node)} has {len(there)} {way} ({', '.join(map(repr, there))}): "
                                       "from_nir takes a chain Input → … → Output, without branches or recurrence")
    starts = [k for k, n in nodes.items() if isinstance(n, nir.Input)]
    if len(starts) != 1:
        raise UnsupportedGraph(f"the graph has {len(starts)} Input nodes; from_nir takes exactly one")
    order, key = [starts[0]], starts[0]
    while outs[key]:
        key = outs[key][0]
        if key in order:
            raise UnsupportedGraph(f"{_name(key, nodes[key])} closes a cycle (recurrence): lzo_bench.nn's layers are "
                                   "feed-forward")
        order.append(key)
    if not isinstance(nodes[order[-1]], nir.Output):
        raise UnsupportedGraph(f"the chain from the Input ends at {_name(order[-1], nodes[order[-1]])}, not at an Output")
    stray = [k for k in nodes if k not in order]
    if stray:
        raise UnsupportedGraph(f"{_name(stray[0], nodes[stray[0]])} is not on the path from Input to Output (a "
                               "branch or a cycle): from_nir takes a chain")
    return [(k, nodes[k]) for k in order]


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _one(key: str, node: Any, field: str) -> float:
    """The single value of a per-neuron parameter that must be the same for the whole layer."""
    a = _array(getattr(node, field)).reshape(-1)
    if a.size == 0 or not np.all(a == a[0]):
        raise UnsupportedGraph(f"{_name(key, node)}: {field} differs across its neurons; lzo_bench.nn has one per layer")
    return float(a[0])


def _zero(key: str, node: Any, field: str, why: str) -> None:
    value = getattr(node, field, None)
    if value is not None and np.any(_array(value) != 0):
        raise UnsupportedGraph(f"{_name(key, node)}: {field} ≠ 0 is not supported ({why})")


def _side(key: str, node: Any, field: str, value: Any) -> int:
    """One integer for both axes."""
    if isinstance(value, str):
        raise UnsupportedGraph(f"{_name(key, node)}: {field}={value!r}; give it as numbers")
    side = square_size(np.atleast_1d(np.asarray(value)))
    if side is None:
        raise UnsupportedGraph(f"{_name(key, node)}: {field} {tuple(np.asarray(value).reshape(-1).tolist())} differs "
                               "between the axes; these layers take one size for both")
    try:
        return spike.integer(field, side, 0)  # refused rather than truncated: a stride of 1.5 is not 1
    except (TypeError, ValueError) as e:
        raise UnsupportedGraph(f"{_name(key, node)}: {e}") from None


class _Builder:
    """The walk along the chain: a weighted node waits for its neuron (``pending``), whose gain goes into it."""

    def __init__(self, rule: spike.SpikeFunction, dt: float | None, reduce: str):
        self.rule, self.dt, self.reduce = rule, dt, reduce
        self.layers: list[torch.nn.Module] = []
        self.shape: tuple[int, ...] | None = None   # (C, H, W) or (n,) of what the next node receives
        self.input_shape: tuple[int, int, int] | None = None
        self.pending: dict[str, Any] | None = None
        self.avg: tuple[str, float] | None = None   # an AvgPool2d's key and 1/k², for the next weighted node
        self.flat_from: tuple[int, int, int] | None = None
        self.done = False

    def step(self, key: str, node: Any) -> float:
        if self.dt is None:
            raise UnsupportedGraph(f"{_name(key, node)} needs the graph's step dt: the graph has no dt_s in its "
                                   f"metadata; pass dt= (graphs from snnTorch's export_to_nir: dt={SNNTORCH_DT})")
        return self.dt

    def weighted(self, key: str, node: Any, weight: np.ndarray, bias: np.ndarray | None, conv: dict | None) -> None:
        if self.pending is not None:
            p = self.pending
            raise UnsupportedGraph(f"{_name(p['key'], p['node'])} feeds {_name(key, node)}: each weighted layer must "
                                   "feed a neuron (LIF, IF, CubaLIF or LI)")
        if self.avg is not None:
            weight = weight * self.avg[1]
            self.avg = None
        self.pending = {"key": key, "node": node, "weight": weight, "bias": bias, "conv": conv}

    def dense(self, key: str, node: Any) -> None:
        w = _array(node.weight)  # [out, in], NCHW columns after a Flatten
        if w.ndim != 2:
            raise UnsupportedGraph(f"{_name(key, node)}: weight must be [out, in], got shape {w.shape}")
        bias = _array(node.bias).reshape(-1) if getattr(node, "bias", None) is not None else None
        if self.flat_from is not None:
            c, h, wd = self.flat_from
            if w.shape[1] != c * h * wd:
                raise UnsupportedGraph(f"{_name(key, node)} takes {w.shape[1]} inputs; the Flatten before it gives "
                                       f"{c}×{h}×{wd} = {c * h * wd}")
            rows = np.empty_like(w.T)
            rows[nchw_order(c, h, wd).numpy()] = w.T
            w, self.flat_from = rows.T, None
        elif self.shape is not None and len(self.shape) != 1:
            raise UnsupportedGraph(f"{_name(key, node)} receives frames {self.shape}: put a Flatten before it")
        self.weighted(key, node, w.T, bias, None)  # ours: [in, out]
        self.shape = (w.shape[0],)

    def conv(self, key: str, node: Any) -> None:
        w = _array(node.weight)
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise UnsupportedGraph(f"{_name(key, node)}: weight must be [C_out, C_in, K, K] with a square kernel, "
                                   f"got shape {w.shape}")
        if _side(key, node, "dilation", node.dilation) != 1 or int(node.groups) != 1:
            raise UnsupportedGraph(f"{_name(key, node)}: dilation and groups must be 1 (ConvLIF has neither)")
        stride, padding = _side(key, node, "stride", node.stride), _side(key, node, "padding", node.padding)
        if self.shape is None or len(self.shape) != 3:
            hw = getattr(node, "input_shape", None)
            if hw is None or len(np.atleast_1d(hw)) != 2:
                raise UnsupportedGraph(f"{_name(key, node)}: the frame size is unknown (no 3-D Input type, no input_shape)")
            self.shape = (w.shape[1], *(int(v) for v in hw))
        if self.input_shape is None:
            self.input_shape = self.shape  # type: ignore[assignment]
        c, h, wd = self.shape
        if c != w.shape[1]:
            raise UnsupportedGraph(f"{_name(key, node)} takes {w.shape[1]} channels, gets {c}")
        bias = _array(node.bias).reshape(-1) if node.bias is not None else None
        self.weighted(key, node, w, bias, {"stride": stride, "padding": padding})
        k = w.shape[2]
        self.shape = (w.shape[0], (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1)

    def take(self, key: str, node: Any) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
        if self.pending is None:
            raise UnsupportedGraph(f"{_name(key, node)} takes its input straight from the previous spikes: "
                                   "lzo_bench.nn's neurons sit behind a weighted layer (Affine, Linear or Conv2d)")
        p, self.pending = self.pending, None
        return p["weight"], p["bias"], p["conv"]

    def neuron(self, key: str, node: Any, kind: str) -> None:
        import nir

        dt = self.step(key, node)
        _zero(key, node, "v_reset", "NIR resets to v_reset, lzo_bench.nn subtracts theta; a reset to 0 is taken "
                                    "as the nearest")
        _zero(key, node, "v_leak", "a resting potential: these neurons leak to 0")
        if kind == "IF":
            beta, gain = 1.0, _array(node.r) * dt
        else:
            tau = _one(key, node, "tau_mem" if kind == "CubaLIF" else "tau")
            try:
                beta = beta_of(tau, dt)
            except ValueError as e:
                raise UnsupportedGraph(f"{_name(key, node)}: {e}") from None
            gain = _array(node.r) * (dt / _array(node.tau_mem if kind == "CubaLIF" else node.tau))
            if isinstance(node, nir.CubaLIF):
                if not np.all(_array(node.tau_syn) == dt):
                    raise UnsupportedGraph(f"{_name(key, node)}: a synaptic time constant tau_syn ≠ dt is a second "
                                           "state (the synaptic current) that lzo_bench.nn's LIF does not have")
                gain = gain * _array(node.w_in)
        theta = _one(key, node, "v_threshold")
        if not theta > 0:
            raise UnsupportedGraph(f"{_name(key, node)}: v_threshold must be > 0, got {theta}")
        w, b, conv = self.take(key, node)
        w, b = self.fold(key, node, w, b, gain, conv is not None)
        if conv is None:
            layer = LIF(w.shape[0], w.shape[1], beta, theta, self.rule, bias=b is not None)
        else:
            layer = ConvLIF(w.shape[1], w.shape[0], w.shape[2], conv["stride"], conv["padding"], beta, theta,
                            self.rule, bias=b is not None)
        self.set(layer, w, b)

    def fold(self, key: str, node: Any, w: np.ndarray, b: np.ndarray | None, gain: np.ndarray,
             conv: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """``w`` (ours: ``[in, out]``, or ``[C_out, C_in, K, K]``) and ``b`` with each output's gain applied."""
        n_out = w.shape[0] if conv else w.shape[1]
        g = np.broadcast_to(gain, self.shape if conv else (n_out,)) if gain.size > 1 else np.full(n_out, float(gain.item()))
        if conv and gain.size > 1:
            per = g.reshape(n_out, -1)
            if not np.all(per == per[:, :1]):
                raise UnsupportedGraph(f"{_name(key, node)}: its input gain (r·dt/tau) differs within a channel; a conv "
                                       "layer's weights can take one gain per channel")
            g = per[:, 0]
        if np.all(g == 1.0):
            return w, b
        w = w * g.reshape(-1, 1, 1, 1) if conv else w * g
        return w, None if b is None else b * g

    def set(self, layer: torch.nn.Module, w: np.ndarray, b: np.ndarray | None) -> None:
        layer.weight = torch.nn.Parameter(torch.from_numpy(w.astype(np.float32)))
        if b is not None:
            if np.all(b == 0):
                layer.bias = None
            else:
                layer.bias = torch.nn.Parameter(torch.from_numpy(b.astype(np.float32)))
        self.layers.append(layer)

    def readout(self, key: str, node: Any) -> None:
        dt = self.step(key, node)
        _zero(key, node, "v_leak", "a resting potential: the readout leaks to 0")
        try:
            beta = beta_of(_one(key, node, "tau"), dt)
        except ValueError as e:
            raise UnsupportedGraph(f"{_name(key, node)}: {e}") from None
        if beta >= 1.0:
            raise UnsupportedGraph(f"{_name(key, node)}: tau is infinite; the readout must leak")
        w, b, conv = self.take(key, node)
        if conv is not None:
            raise UnsupportedGraph(f"{_name(key, node)} reads a conv layer's current: the readout is dense; "
                                   "put Flatten → Linear before it")
        w, b = self.fold(key, node, w, b, _array(node.r), False)
        self.set(LeakyReadout(w.shape[0], w.shape[1], beta, self.reduce, bias=b is not None), w, b)
        self.done = True

    def last_linear(self) -> None:
        """A final Affine/Linear feeding the Output: the readout with β_r = 0, its current reduced over time."""
        p = self.pending
        w, b, _ = self.take(p["key"], p["node"])  # type: ignore[index]
        self.set(LeakyReadout(w.shape[0], w.shape[1], 0.0, self.reduce, bias=b is not None), w, b)
        self.done = True

    def pool(self, key: str, node: Any, average: bool) -> None:
        if self.pending is not None:
            p = self.pending
            raise UnsupportedGraph(f"{_name(key, node)} pools the current of {_name(p['key'], p['node'])} before its "
                                   "neuron: lzo_bench.nn pools spikes (after the LIF); a pooled current needs an op "
                                   "it does not have")
        if not self.layers or not isinstance(self.layers[-1], ConvLIF):
            raise UnsupportedGraph(f"{_name(key, node)} must follow a conv layer's LIF (pooling its spikes, once)")
        k = _side(key, node, "kernel_size", node.kernel_size)
        if _side(key, node, "stride", node.stride) != k or _side(key, node, "padding", node.padding) != 0:
            raise UnsupportedGraph(f"{_name(key, node)}: stride must equal the kernel and padding be 0 (SumPool2d's "
                                   "windows tile the frame)")
        self.layers.append(SumPool2d(k))
        c, h, w = self.shape  # type: ignore[misc]
        self.shape = (c, h // k, w // k)
        if average:
            self.avg = (key, 1.0 / (k * k))

    def flatten(self, key: str, node: Any) -> None:
        if self.shape is None or len(self.shape) != 3 or not self.layers or self.pending is not None:
            raise UnsupportedGraph(f"{_name(key, node)} must come after the conv layers' spikes (or their pooling)")
        self.layers.append(Flatten())
        self.flat_from, self.shape = self.shape, (int(np.prod(self.shape)),)  # type: ignore[assignment]


def from_nir(graph: Any, rule: spike.SpikeFunction | None = None, backend: str = "auto", dt: float | None = None,
             reduce: str | None = None) -> Sequential:
    """``graph`` (a ``nir.NIRGraph`` or the path of a ``.nir`` file) as a :class:`Sequential` of these layers,
    each with ``rule`` (one shared spike function; default ``spike.LocalZO()``), run on ``backend``.
    ``dt`` in seconds (default: the graph's ``dt_s``); ``reduce`` of the readout over time, ``max`` or
    ``sum`` (default: the graph's ``reduce_over_time`` metadata, else ``max``). See the module docstring
    for the mapping; a node it cannot run raises :class:`UnsupportedGraph` naming it."""
    import nir

    if isinstance(graph, (str, Path)):
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"graph must be a nir.NIRGraph or the path of a .nir file, got {type(graph).__name__}")
    meta = graph.metadata or {}
    if dt is None and "dt_s" in meta:
        dt = dt_of(graph)
    reduce = reduce or (meta.get("reduce_over_time") if meta.get("reduce_over_time") in ("max", "sum") else "max")
    b = _Builder(spike.LocalZO() if rule is None else rule, dt, reduce)
    chain = _chain(graph)
    for key, node in chain:
        if b.done and not isinstance(node, nir.Output):
            raise UnsupportedGraph(f"{_name(key, node)} comes after the readout (LI); the LI must feed the Output")
        if b.avg is not None and not isinstance(node, (nir.Affine, nir.Linear, nir.Conv2d, nir.Flatten)):
            raise UnsupportedGraph(f"AvgPool2d {b.avg[0]!r} feeds {_name(key, node)}: its 1/k² goes into the next "
                                   "weighted layer (Affine, Linear or Conv2d, after an optional Flatten)")
        if isinstance(node, nir.Input):
            shape = np.atleast_1d(next(iter(node.input_type.values()))).astype(np.int64).tolist()
            b.shape = tuple(shape) if len(shape) in (1, 3) else None
            if len(shape) == 3:
                b.input_shape = tuple(shape)  # type: ignore[assignment]
        elif isinstance(node, (nir.Affine, nir.Linear)):
            b.dense(key, node)
        elif isinstance(node, nir.Conv2d):
            b.conv(key, node)
        elif isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)):
            b.neuron(key, node, type(node).__name__)
        elif isinstance(node, nir.LI):
            b.readout(key, node)
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            b.pool(key, node, isinstance(node, nir.AvgPool2d))
        elif isinstance(node, nir.Flatten):
            b.flatten(key, node)
        elif isinstance(node, nir.Output):
            if not b.done and b.pending is not None and b.pending["conv"] is None:
                b.last_linear()
            if not b.done:
                last = next((f"{_name(k, n)}" for k, n in reversed(chain[:-1])), "the Input")
                raise UnsupportedGraph(f"the graph's output is {last}, not a leaky readout: lzo_bench.nn.Sequential "
                                       "ends in a non-spiking readout; end the graph in Affine/Linear → LI, or in the Affine/Linear")
        else:
            why = _NO_LAYER.get(type(node).__name__, "a node type lzo_bench.nn has no layer for")
            raise UnsupportedGraph(f"{_name(key, node)} cannot run here: {why}")
    if any(isinstance(n, (nir.LIF, nir.IF, nir.CubaLIF)) for _, n in chain):
        warnings.warn(RESET_NOTE, stacklevel=2)
    conv = any(isinstance(m, ConvLIF) for m in b.layers)
    return Sequential(*b.layers, input_shape=b.input_shape if conv else None, backend=backend)
