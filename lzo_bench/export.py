"""Export a trained network: ONNX (sequence model with a ``Scan`` over time, or one step), and NIR.

The ONNX graphs are built from the weights with ``onnx.helper`` (inference only, Heaviside
forward). One time step, for hidden layer ``l`` and the readout (same float operations, in the
same order, as :mod:`lzo_bench.lif` and :func:`lzo_bench.model.leaky_readout`)::

    u_l ← β·u_l + h @ W_l − θ·s_l ;  s_l ← (u_l − θ > 0) ;  c_l ← c_l + s_l ;  h ← s_l
    o   ← β_r·o + (1 − β_r)·(h @ W_out) ;  m ← max(m, o)   (or m + o for sum-over-time)

The sequence model runs that step as the body of an ONNX ``Scan`` over the time axis of
``spikes [T, B, n_in]`` (``T`` and ``B`` symbolic), so the graph does not grow with ``T``; its
outputs are ``logits = m`` after the last step, the spike count ``count_l [B, N_l]`` and the spike
trains ``spikes_l [T, B, N_l]`` of each hidden layer. The step model is the same body as a graph
of its own: inputs ``x_t`` and the state, outputs the new state and the step's spikes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lzo_bench import __version__
from lzo_bench.fsio import atomic_write_bytes
from lzo_bench.model import NetworkSpec

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 21, 17
FLOAT = TensorProto.FLOAT


class ExportError(ValueError):
    """Bad export request (opset, output path); the message names the fix."""


@dataclass(frozen=True)
class ExportSource:
    """What an export needs from a checkpoint."""

    network: NetworkSpec
    weights: list[np.ndarray]  # [fan_in, fan_out] each; the last is the readout
    dt_ms: float
    steps: int
    encoding: str
    dataset: str

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "ExportSource":
        net = NetworkSpec.from_dict(ckpt["network"])
        n = len(net.hidden) + 1
        weights = [ckpt["state_dict"][f"weights.{i}"].numpy().astype(np.float32) for i in range(n)]
        data = ckpt["dataset"]
        steps = ckpt["train"].get("steps") or data["default_steps"]
        return cls(net, weights, float(data["dt_ms"]), int(steps), data["encoding"], data["name"])

    def metadata(self, kind: str) -> dict[str, str]:
        net = self.network
        return {
            "lzo_bench_version": __version__,
            "model": kind,
            "beta": repr(net.beta),
            "beta_readout": repr(net.beta_out),
            "theta": repr(net.theta),
            "reset": "subtractive: u <- u - theta*s[t-1] (not differentiated in training)",
            "readout": "leaky integrator o[t] = beta_r*o[t-1] + (1-beta_r)*(s_L[t] @ W_out)",
            "reduce_over_time": net.reduce,
            "dt_ms": repr(self.dt_ms),
            "time_steps_in_training": str(self.steps),
            "input_encoding": self.encoding,
            "dataset": self.dataset,
            "n_inputs": str(net.n_in),
            "hidden": ",".join(map(str, net.hidden)),
            "n_classes": str(net.n_out),
        }


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")


def _state_names(net: NetworkSpec) -> list[tuple[str, int]]:
    """``(name, width)`` of the state variables, in Scan order."""
    names = []
    for l, n in enumerate(net.hidden):
        names += [(f"u{l}", n), (f"s{l}", n), (f"count{l}", n)]
    return names + [("o", net.n_out), ("m", net.n_out)]


def _step_nodes(net: NetworkSpec, x: str, prefix_in: str, prefix_out: str) -> tuple[list, list[str]]:
    """Nodes of one time step from state ``{prefix_in}name`` to ``{prefix_out}name``; returns the
    nodes and the names of the step's spike tensors."""
    nodes, spikes = [], []
    h = x
    for l in range(len(net.hidden)):
        i, o = prefix_in, prefix_out
        nodes += [
            helper.make_node("MatMul", [h, f"W{l}"], [f"cur{l}"]),
            helper.make_node("Mul", ["beta", f"{i}u{l}"], [f"bu{l}"]),
            helper.make_node("Add", [f"bu{l}", f"cur{l}"], [f"bui{l}"]),
            helper.make_node("Mul", ["theta", f"{i}s{l}"], [f"reset{l}"]),
            helper.make_node("Sub", [f"bui{l}", f"reset{l}"], [f"{o}u{l}"]),
            helper.make_node("Sub", [f"{o}u{l}", "theta"], [f"v{l}"]),
            helper.make_node("Greater", [f"v{l}", "zero"], [f"fire{l}"]),
            helper.make_node("Cast", [f"fire{l}"], [f"{o}s{l}"], to=FLOAT),
            helper.make_node("Add", [f"{i}count{l}", f"{o}s{l}"], [f"{o}count{l}"]),
            helper.make_node("Identity", [f"{o}s{l}"], [f"step_spikes{l}"]),
        ]
        spikes.append(f"step_spikes{l}")
        h = f"{o}s{l}"
    i, o = prefix_in, prefix_out
    nodes += [
        helper.make_node("MatMul", [h, "W_out"], ["a"]),
        helper.make_node("Mul", ["beta_out", f"{i}o"], ["bo"]),
        helper.make_node("Mul", ["one_minus_beta_out", "a"], ["ga"]),
        helper.make_node("Add", ["bo", "ga"], [f"{o}o"]),
        helper.make_node("Max" if net.reduce == "max" else "Add", [f"{i}m", f"{o}o"], [f"{o}m"]),
    ]
    return nodes, spikes


def _initializers(src: ExportSource) -> list[TensorProto]:
    net = src.network
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)  # noqa: E731
    inits = [f32(f"W{l}", w) for l, w in enumerate(src.weights[:-1])] + [f32("W_out", src.weights[-1])]
    return inits + [
        f32("beta", net.beta), f32("theta", net.theta), f32("zero", 0.0),
        f32("beta_out", net.beta_out), f32("one_minus_beta_out", 1.0 - net.beta_out),
    ]


def _finish(graph: onnx.GraphProto, src: ExportSource, kind: str, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="lzo-bench", producer_version=__version__)
    helper.set_model_props(model, src.metadata(kind))
    onnx.checker.check_model(model, full_check=True)
    return model


def sequence_model(src: ExportSource, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """``spikes [T, B, n_in]`` → ``logits [B, C]``, ``count_l [B, N_l]``, ``spikes_l [T, B, N_l]``."""
    _check_opset(opset)
    net = src.network
    states = _state_names(net)
    body_nodes, step_spikes = _step_nodes(net, "x_t", "in_", "out_")
    body = helper.make_graph(
        body_nodes,
        "lif_step",
        [helper.make_tensor_value_info(f"in_{n}", FLOAT, ["B", w]) for n, w in states]
        + [helper.make_tensor_value_info("x_t", FLOAT, ["B", net.n_in])],
        [helper.make_tensor_value_info(f"out_{n}", FLOAT, ["B", w]) for n, w in states]
        + [helper.make_tensor_value_info(s, FLOAT, ["B", n]) for s, n in zip(step_spikes, net.hidden)],
    )
    minus_inf = numpy_helper.from_array(np.array([-np.inf], dtype=np.float32), "v")
    zero_val = numpy_helper.from_array(np.array([0.0], dtype=np.float32), "v")
    nodes = [
        helper.make_node("Shape", ["spikes"], ["in_shape"]),
        helper.make_node("Gather", ["in_shape", "one_i"], ["batch"], axis=0),
    ]
    for n, w in states:
        fill = minus_inf if (n == "m" and net.reduce == "max") else zero_val
        nodes += [
            helper.make_node("Concat", ["batch", f"width_{n}"], [f"shape_{n}"], axis=0),
            helper.make_node("ConstantOfShape", [f"shape_{n}"], [f"init_{n}"], value=fill),
        ]
    finals = [f"final_{n}" for n, _ in states]
    nodes.append(helper.make_node(
        "Scan", [f"init_{n}" for n, _ in states] + ["spikes"],
        finals + [f"spikes_{l}" for l in range(len(net.hidden))],
        body=body, num_scan_inputs=1,
    ))
    nodes.append(helper.make_node("Identity", ["final_m"], ["logits"]))
    nodes += [helper.make_node("Identity", [f"final_count{l}"], [f"count_{l}"]) for l in range(len(net.hidden))]
    ints = [numpy_helper.from_array(np.array([1], dtype=np.int64), "one_i")]
    ints += [numpy_helper.from_array(np.array([w], dtype=np.int64), f"width_{n}") for n, w in states]
    graph = helper.make_graph(
        nodes,
        "lzo_bench_snn",
        [helper.make_tensor_value_info("spikes", FLOAT, ["T", "B", net.n_in])],
        [helper.make_tensor_value_info("logits", FLOAT, ["B", net.n_out])]
        + [helper.make_tensor_value_info(f"count_{l}", FLOAT, ["B", n]) for l, n in enumerate(net.hidden)]
        + [helper.make_tensor_value_info(f"spikes_{l}", FLOAT, ["T", "B", n]) for l, n in enumerate(net.hidden)],
        initializer=_initializers(src) + ints,
    )
    return _finish(graph, src, "sequence (Scan over time)", opset)


def step_model(src: ExportSource, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One time step: ``x_t [B, n_in]`` and the state in → the new state and the step's spikes out.

    Start from zeros for every state, except ``m`` = −inf when the network reduces by max; after
    the last step, ``m`` holds the logits.
    """
    _check_opset(opset)
    net = src.network
    states = _state_names(net)
    nodes, step_spikes = _step_nodes(net, "x_t", "", "next_")
    nodes += [helper.make_node("Identity", [s], [f"spikes_{l}"]) for l, s in enumerate(step_spikes)]
    graph = helper.make_graph(
        nodes,
        "lzo_bench_snn_step",
        [helper.make_tensor_value_info("x_t", FLOAT, ["B", net.n_in])]
        + [helper.make_tensor_value_info(n, FLOAT, ["B", w]) for n, w in states],
        [helper.make_tensor_value_info(f"next_{n}", FLOAT, ["B", w]) for n, w in states]
        + [helper.make_tensor_value_info(f"spikes_{l}", FLOAT, ["B", n]) for l, n in enumerate(net.hidden)],
        initializer=_initializers(src),
    )
    return _finish(graph, src, "single step (stream one time bin per call)", opset)


def initial_step_state(src: ExportSource, batch: int) -> dict[str, np.ndarray]:
    """Zeros for every state of the step model, ``m = −inf`` for max-over-time."""
    state = {n: np.zeros((batch, w), dtype=np.float32) for n, w in _state_names(src.network)}
    if src.network.reduce == "max":
        state["m"][:] = -np.inf
    return state


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
    nodes: dict[str, Any] = {"input": nir.Input({"input": np.array([net.n_in])})}
    edges, prev = [], "input"
    for l, n in enumerate(net.hidden):
        tau = dt / (1.0 - net.beta)
        nodes[f"fc{l}"] = nir.Linear(weight=src.weights[l].T.astype(np.float32))
        nodes[f"lif{l}"] = nir.LIF(
            tau=np.full(n, tau), r=np.full(n, tau / dt), v_leak=np.zeros(n),
            v_threshold=np.full(n, net.theta), v_reset=np.zeros(n),
            metadata={"reset": NIR_RESET_NOTE},
        )
        edges += [(prev, f"fc{l}"), (f"fc{l}", f"lif{l}")]
        prev = f"lif{l}"
    tau_r = dt / (1.0 - net.beta_out)
    nodes["fc_out"] = nir.Linear(weight=src.weights[-1].T.astype(np.float32))
    nodes["li_out"] = nir.LI(tau=np.full(net.n_out, tau_r), r=np.ones(net.n_out), v_leak=np.zeros(net.n_out))
    nodes["output"] = nir.Output({"output": np.array([net.n_out])})
    edges += [(prev, "fc_out"), ("fc_out", "li_out"), ("li_out", "output")]
    meta = src.metadata("nir") | {"reset_note": NIR_RESET_NOTE, "dt_s": repr(dt)}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def write_onnx(model: onnx.ModelProto, path: Path) -> Path:
    return atomic_write_bytes(path, model.SerializeToString())


def write_nir(graph, path: Path) -> Path:
    import nir

    warnings.warn(NIR_RESET_NOTE, stacklevel=2)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        nir.write(tmp, graph)
        with open(tmp, "rb") as f:
            data = f.read()
    finally:
        tmp.unlink(missing_ok=True)
    return atomic_write_bytes(path, data)


def check_nir(path: Path, src: ExportSource) -> dict[str, Any]:
    """Read ``path`` back with ``nir.read`` and compare node types, LIF parameters and weights with
    ``src``; ``passed`` is False with the ``problems`` listed."""
    import nir

    g = nir.read(path)
    net = src.network
    dt = src.dt_ms * 1e-3
    problems = []
    for l, n in enumerate(net.hidden):
        lif = g.nodes[f"lif{l}"]
        if not isinstance(lif, nir.LIF):
            problems.append(f"lif{l} is {type(lif).__name__}")
            continue
        if not np.allclose(lif.tau, dt / (1 - net.beta)) or not np.allclose(lif.r, 1 / (1 - net.beta)) \
                or not np.allclose(lif.v_threshold, net.theta):
            problems.append(f"lif{l} parameters differ")
        if not np.array_equal(g.nodes[f"fc{l}"].weight, src.weights[l].T):
            problems.append(f"fc{l} weights differ")
    if not np.array_equal(g.nodes["fc_out"].weight, src.weights[-1].T):
        problems.append("fc_out weights differ")
    return {"nodes": sorted(g.nodes), "problems": problems, "passed": not problems, "parity": [], "latency": []}


def node_count(model: onnx.ModelProto) -> int:
    """Nodes of the graph including subgraphs (the Scan body)."""
    def count(g: onnx.GraphProto) -> int:
        return sum(1 + sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH) for n in g.node)

    return count(model.graph)

