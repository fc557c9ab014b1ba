"""The NIR graph writer and its read-back: :func:`nir_graph` builds ``Input → (Linear → LIF)×L → Linear →
LI → Output`` (conv layers as ``Conv2d → LIF``, sum pooling as ``SumPool2d``, then ``Flatten``) from the
export source, :func:`write_nir` writes it whole or not at all, and :func:`read_back` reads a file back
and compares it with the source.

Convention: forward Euler at the data's ``dt``, ``β = 1 − dt/τ`` (the equations are :func:`nir_graph`'s);
weights stored ``[out, in]``, conv frames NCHW as NIR has them. NIR's LIF resets to ``v_reset = 0``
where lzo-bench resets by subtraction (:data:`NIR_RESET_NOTE`); what that costs is measured by
:func:`lzo_bench.export.parity.nir_reset_cost`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lzo_bench.core.conv import nchw_order
from lzo_bench.core.model import NetworkSpec
from lzo_bench.core.timescale import tau_of
from lzo_bench.export.source import ExportError, ExportSource
from lzo_bench.runtime.fsio import atomic_write_bytes

NIR_RESET_NOTE = (
    "lzo-bench LIF neurons reset by subtraction (u <- u - theta after a spike); NIR's LIF resets "
    "to v_reset, so this graph resets to 0 instead: simulators will differ after a spike"
)


def nir_graph(src: ExportSource):
    """NIR graph: ``Input → (Linear → LIF)×L → Linear → LI → Output``.

    Discretisation with step ``dt`` (Euler, ``τ dv/dt = v_leak − v + R·I``): ``β = 1 − dt/τ`` gives
    ``τ = dt/(1 − β)`` and ``R = τ/dt``, ``v_leak = 0``; the readout ``o ← β_r·o + (1 − β_r)·a``
    is an ``LI`` with ``τ_r = dt/(1 − β_r)``, ``R = 1``. Weights are stored ``[out, in]``.
    """
    try:
        import nir
    except ImportError:
        raise ExportError("NIR export needs the nir package: pip install 'lzo-bench[nir]'") from None
    net = src.network
    dt = src.dt_ms * 1e-3
    convs = net.conv_shapes()
    tau = tau_of(net.beta, dt)

    def lif(shape: tuple[int, ...]):
        return nir.LIF(tau=np.full(shape, tau), r=np.full(shape, tau / dt), v_leak=np.zeros(shape),
                       v_threshold=np.full(shape, net.theta), v_reset=np.zeros(shape), metadata={"reset": NIR_RESET_NOTE})

    nodes: dict[str, Any] = {"input": nir.Input({"input": np.array(net.frame if convs else [net.n_in])})}
    edges, prev = [], "input"
    for l, c in enumerate(convs):  # NCHW, as NIR's Conv2d: the units are channels-last only inside lzo-bench
        nodes[f"conv{l}"] = nir.Conv2d(input_shape=(c.height, c.width), weight=src.weights[l].astype(np.float32),
                                       stride=c.stride, padding=c.padding, dilation=1, groups=1,
                                       bias=np.zeros(c.c_out, dtype=np.float32))
        nodes[f"lif{l}"] = lif((c.c_out, c.out_height, c.out_width))
        edges += [(prev, f"conv{l}"), (f"conv{l}", f"lif{l}")]
        prev = f"lif{l}"
        if c.pool > 1:
            k = np.array([c.pool, c.pool])
            nodes[f"pool{l}"] = nir.SumPool2d(kernel_size=k, stride=k, padding=np.array([0, 0]))
            edges.append((prev, f"pool{l}"))
            prev = f"pool{l}"
    if convs:
        nodes["flatten"] = nir.Flatten({"input": np.array(convs[-1].next_shape)}, start_dim=0)  # NIR types have no batch
        edges.append((prev, "flatten"))
        prev = "flatten"
    for l, n in enumerate(net.hidden, len(convs)):
        nodes[f"fc{l}"] = nir.Linear(weight=_nchw_rows(net, l, src.weights[l]).T.astype(np.float32))
        nodes[f"lif{l}"] = lif((n,))
        edges += [(prev, f"fc{l}"), (f"fc{l}", f"lif{l}")]
        prev = f"lif{l}"
    tau_r = tau_of(net.beta_out, dt)
    nodes["fc_out"] = nir.Linear(weight=_nchw_rows(net, len(src.weights) - 1, src.weights[-1]).T.astype(np.float32))
    nodes["li_out"] = nir.LI(tau=np.full(net.n_out, tau_r), r=np.ones(net.n_out), v_leak=np.zeros(net.n_out))
    nodes["output"] = nir.Output({"output": np.array([net.n_out])})
    edges += [(prev, "fc_out"), ("fc_out", "li_out"), ("li_out", "output")]
    meta = src.metadata("nir") | {
        "reset": "to zero: v <- v_reset = 0 after a spike (NIR LIF); training reset by subtraction, see reset_note",
        "reset_note": NIR_RESET_NOTE,
        "dt_s": repr(dt),
        "discretisation": "forward Euler at dt_s: beta = 1 - dt/tau, so tau = dt/(1 - beta) and r = tau/dt; "
                          "a simulator integrating exactly (beta = exp(-dt/tau)) leaks faster",
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _nchw_rows(net: NetworkSpec, layer: int, w: np.ndarray) -> np.ndarray:
    """``W [fan_in, fan_out]`` of the dense layer ``layer``; right after the conv part its rows permuted from
    our channels-last units to the NCHW flatten NIR's ``Flatten`` gives (:func:`lzo_bench.core.conv.nchw_order`)."""
    convs = net.conv_shapes()
    if not convs or layer != len(convs):
        return w
    return w[nchw_order(*convs[-1].next_shape).numpy()]


def write_nir(graph, path: Path) -> Path:
    import nir

    warnings.warn(NIR_RESET_NOTE, stacklevel=2)
    buffer = io.BytesIO()  # h5py writes to memory: on a full disk it crashed after its tracebacks (issue 19, D4)
    nir.write(buffer, graph)
    return atomic_write_bytes(path, buffer.getvalue())


def read_back(path: Path, src: ExportSource) -> dict[str, Any]:
    """Read ``path`` back with ``nir.read`` and compare node types, LIF parameters and weights with
    ``src``; ``passed`` is False with the ``problems`` listed."""
    import nir

    g = nir.read(path)
    net = src.network
    dt = src.dt_ms * 1e-3
    problems = []
    n_conv = len(net.conv)
    for l in range(len(net.layer_sizes)):
        lif = g.nodes[f"lif{l}"]
        if not isinstance(lif, nir.LIF):
            problems.append(f"lif{l} is {type(lif).__name__}")
            continue
        if not np.allclose(lif.tau, tau_of(net.beta, dt)) or not np.allclose(lif.r, 1 / (1 - net.beta)) \
                or not np.allclose(lif.v_threshold, net.theta):
            problems.append(f"lif{l} parameters differ")
        if l < n_conv:
            if not isinstance(g.nodes[f"conv{l}"], nir.Conv2d) or not np.array_equal(g.nodes[f"conv{l}"].weight,
                                                                                     src.weights[l]):
                problems.append(f"conv{l} weights differ")
        elif not np.array_equal(g.nodes[f"fc{l}"].weight, _nchw_rows(net, l, src.weights[l]).T):
            problems.append(f"fc{l} weights differ")
    if not np.array_equal(g.nodes["fc_out"].weight, _nchw_rows(net, len(src.weights) - 1, src.weights[-1]).T):
        problems.append("fc_out weights differ")
    return {"nodes": sorted(g.nodes), "problems": problems, "passed": not problems}
