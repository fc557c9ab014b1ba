"""Run an NIR graph in PyTorch through ``nirtorch``, with neuron modules that follow the NIR spec.

NIR's ``LIF`` and ``LI`` are continuous-time; integrated with Euler at step ``dt`` (``a = dt/τ``)::

    LIF:  v ← (1 − a)·v + a·(v_leak + R·I) ;  s = H(v − v_threshold) ;  v ← v_reset where s
    LI:   v ← (1 − a)·v + a·(v_leak + R·I)

which for the graphs :func:`lzo_bench.export.nir_graph.nir_graph` writes (``a = 1 − β``, ``R = 1/(1 − β)``,
``v_leak = v_reset = 0``) is ``v ← β·v + I`` with a reset to zero. ``reset="subtract"`` swaps the
reset for lzo-bench's own (``v ← β·v + I − θ·s[t−1]``, no reset to ``v_reset``), so the same
graph, wiring and float operations reproduce the trained network: the difference between the two
runs is the reset alone. The readout is reduced over time as in training (``max`` or ``sum``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from lzo_bench.core.conv import frames, units
from lzo_bench.core.timescale import SNNTORCH_DT, dt_of

RESETS = ("zero", "subtract")


class LIFState(NamedTuple):
    v: torch.Tensor       # membrane potential [B, N]
    s: torch.Tensor       # last step's spikes [B, N]
    count: torch.Tensor   # spikes so far [B, N]


def _euler(tau: np.ndarray, r: np.ndarray, v_leak: np.ndarray, dt: float) -> tuple[torch.Tensor, ...]:
    """``(1 − a, a·R, a·v_leak)`` with ``a = dt/τ``, formed in float64, stored float32."""
    a = dt / np.asarray(tau, dtype=np.float64)
    as32 = lambda v: torch.from_numpy(np.asarray(v, dtype=np.float32))  # noqa: E731
    return as32(1.0 - a), as32(a * r), as32(a * v_leak)


class SpecLIF(nn.Module):
    """NIR ``LIF`` node, Euler at ``dt``; see the module docstring for ``reset``."""

    def __init__(self, node: Any, dt: float, reset: str = "zero"):
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        self.decay, self.gain, self.leak = _euler(node.tau, node.r, node.v_leak, dt)
        self.threshold = torch.from_numpy(np.asarray(node.v_threshold, dtype=np.float32))
        self.v_reset = torch.from_numpy(np.asarray(node.v_reset, dtype=np.float32))
        self.reset = reset

    def forward(self, x: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        if state is None:
            zero = torch.zeros_like(x)
            state = LIFState(zero, zero, zero)
        v = self.decay * state.v + (self.gain * x + self.leak)
        if self.reset == "subtract":
            v = v - self.threshold * state.s
        s = (v - self.threshold > 0).to(x.dtype)
        if self.reset == "zero":
            v = torch.where(s > 0, self.v_reset, v)
        return s, LIFState(v, s, state.count + s)


class SpecLI(nn.Module):
    """NIR ``LI`` node (leaky integrator, no spikes), Euler at ``dt``."""

    def __init__(self, node: Any, dt: float):
        super().__init__()
        self.decay, self.gain, self.leak = _euler(node.tau, node.r, node.v_leak, dt)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.decay * (torch.zeros_like(x) if state is None else state) + (self.gain * x + self.leak)
        return v, v


@dataclass
class NIRRun:
    """What a simulation returns: logits ``[B, C]`` and, per LIF node in graph order, the spike
    counts ``[B, N]``."""

    logits: torch.Tensor
    counts: dict[str, torch.Tensor]


def _flatten(node: Any) -> nn.Flatten:
    """NIR's ``Flatten`` counts dimensions without the batch (``start_dim = 0``: the whole sample);
    nirtorch 2.6 hands its dims to ``torch.nn.Flatten`` as they are, which would flatten the batch too."""
    shift = lambda d: d + 1 if d >= 0 else d  # noqa: E731
    return nn.Flatten(start_dim=shift(node.start_dim), end_dim=shift(node.end_dim))


def reduce_time(o: torch.Tensor, reduce: str) -> torch.Tensor:
    """Logits from a readout trace ``o [T, B, C]`` as in training: ``max_t o_t`` or ``Σ_t o_t``."""
    return o.amax(0) if reduce == "max" else o.sum(0)


def simulate(graph: Any, x: torch.Tensor, reset: str = "zero", reduce: str = "max", dt: float | None = None) -> NIRRun:
    """Run ``graph`` (a ``nir.NIRGraph``) on input spikes ``x [T, B, n_in]`` one step at a time through
    ``nirtorch.nir_to_torch``; the output node's trace is reduced over time by ``max`` or ``sum``."""
    import nir

    try:
        import nirtorch
    except ImportError:
        from lzo_bench.export.source import ExportError

        raise ExportError("the NIR check runs the file through nirtorch, which is not installed: "
                          "pip install 'lzo-bench[nir]' (or pass --no-check)") from None
    dt = dt_of(graph) if dt is None else dt
    module = nirtorch.nir_to_torch(graph, {nir.LIF: lambda n: SpecLIF(n, dt, reset), nir.LI: lambda n: SpecLI(n, dt),
                                           nir.Flatten: _flatten})
    lif_names = [name for name, node in graph.nodes.items() if isinstance(node, nir.LIF)]
    frame = np.asarray(graph.nodes["input"].input_type["input"]) if "input" in graph.nodes else np.array([])
    if frame.size == 3:  # a conv graph takes NCHW frames; x holds lzo-bench's channels-last units
        x = frames(x, *(int(v) for v in frame))
    state, outs = None, []
    with torch.no_grad():
        for x_t in x.unbind(0):
            o, state = module(x_t, state) if state is not None else module(x_t)
            outs.append(o)
    logits = reduce_time(torch.stack(outs), reduce)
    counts = {n: state[n].count if state is not None else torch.zeros(0) for n in lif_names}
    counts = {n: units(c) if c.dim() == 4 else c for n, c in counts.items()}
    return NIRRun(logits, counts)


def fold_r(graph: Any) -> Any:
    """The same graph with each ``LIF``'s resistance folded into the ``Linear`` that feeds it:
    ``a·R·(W x) = a·((R W) x)``, so ``R = 1`` and the weights are ``diag(R)·W``; NIR semantics are
    unchanged. For simulators that ignore ``R`` (Norse's ``from_nir`` warns and drops it)."""
    import copy

    import nir

    out = copy.deepcopy(graph)
    for src, dst in out.edges:
        node, feed = out.nodes[dst], out.nodes[src]
        if isinstance(node, nir.LIF) and isinstance(feed, nir.Linear):
            r = np.asarray(node.r, dtype=np.float64)
            out.nodes[src] = nir.Linear(weight=(r[:, None] * feed.weight).astype(np.float32))
            out.nodes[dst] = nir.LIF(tau=node.tau, r=np.ones_like(node.r), v_leak=node.v_leak,
                                     v_threshold=node.v_threshold, v_reset=node.v_reset)
    return out


def for_snntorch(graph: Any) -> Any:
    """The graph rewritten for ``snntorch.import_nir.import_from_nir``, which assumes ``dt₀ = 1e-4 s``
    and has no ``LI``.

    The importer turns each ``LIF`` into ``snn.Leaky(β = 1 − dt₀/τ, θ' = θ/w, reset to zero)`` with
    ``w = R·dt₀/τ`` (dividing θ by ``w`` is feeding it ``w·I``), and ``Leaky`` steps
    ``v ← β·v + I ; s = H(v − θ') ; v ← 0 where s``. With ``τ' = τ·dt₀/dt`` the same formulas give
    ``β = 1 − dt/τ`` and ``w = R·dt/τ``, the graph's own Euler step at ``dt`` (for lzo-bench graphs
    ``w = 1``, so ``θ' = θ``). Each ``LI`` is removed and its input wired to where it led: integrate
    the module's output by hand with :func:`li_readout` on the original graph.
    """
    import copy

    import nir

    out = copy.deepcopy(graph)
    scale = SNNTORCH_DT / dt_of(graph)
    for name, node in list(out.nodes.items()):
        if isinstance(node, nir.LIF):
            out.nodes[name] = nir.LIF(tau=np.asarray(node.tau, dtype=np.float64) * scale, r=node.r,
                                      v_leak=node.v_leak, v_threshold=node.v_threshold, v_reset=node.v_reset)
        elif isinstance(node, nir.LI):
            del out.nodes[name]
            feeds = [s for s, d in out.edges if d == name]
            leads = [d for s, d in out.edges if s == name]
            out.edges = [e for e in out.edges if name not in e] + [(s, d) for s in feeds for d in leads]
    return out


def li_readout(graph: Any, current: torch.Tensor, reduce: str = "max", dt: float | None = None) -> torch.Tensor:
    """Logits from the current ``a [T, B, C]`` that reaches the graph's (single) ``LI`` node, for
    simulators that leave the ``LI`` out: ``o ← (1 − a)·o + a·R·I`` (``o ← β_r·o + (1 − β_r)·a`` for
    lzo-bench graphs) at ``dt``, then reduced over time by ``max`` or ``sum``."""
    import nir

    (node,) = [n for n in graph.nodes.values() if isinstance(n, nir.LI)]
    li = SpecLI(node, dt_of(graph) if dt is None else dt)
    state, trace = None, []
    with torch.no_grad():
        for a_t in current.unbind(0):
            o, state = li(a_t, state)
            trace.append(o)
    return reduce_time(torch.stack(trace), reduce)
