"""The ONNX graph builder: the sequence model (a ``Scan`` over time), the one-step model, float16 weights.

The ONNX graphs are built from the weights with ``onnx.helper`` (inference only, Heaviside
forward). One time step, for hidden layer ``l`` and the readout (same float operations, in the
same order, as :mod:`lzo_bench.core.lif` and :func:`lzo_bench.core.model.leaky_readout`)::

    u_l ← β·u_l + h @ W_l − θ·s_l ;  s_l ← (u_l − θ > 0) ;  c_l ← c_l + s_l ;  h ← s_l
    o   ← β_r·o + (1 − β_r)·(h @ W_out) ;  m ← max(m, o)   (or m + o for sum-over-time)

A conv layer (:mod:`lzo_bench.core.conv`) takes its current from an ONNX ``Conv`` on the channels-last units
viewed as frames (``Reshape [B, H, W, C]``, ``Transpose`` to NCHW, ``Conv``, back), and its sum pooling
is a depthwise ``Conv`` with a kernel of ones; the spikes stay channels-last ``[B, N_l]`` rows.

The sequence model runs that step as the body of an ONNX ``Scan`` over the time axis of
``spikes [T, B, n_in]`` (``T`` and ``B`` symbolic), so the graph does not grow with ``T``; its
outputs are ``logits = m`` after the last step, the spike count ``count_l [B, N_l]`` and the spike
trains ``spikes_l [T, B, N_l]`` of each hidden layer. The step model is the same body as a graph
of its own: inputs ``x_t`` and the state, outputs the new state and the step's spikes.

Every file carries a model card (``doc_string`` of the model, graph and input, and
``metadata_props``; the part NIR shares is :meth:`lzo_bench.export.source.ExportSource.metadata`): the
time-major input layout, the training that produced the weights, and for the step model its initial
state. Its IR version is the lowest onnx's version table allows for the opset, so the oldest
onnxruntime this package declares loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lzo_bench import __version__
from lzo_bench.core.model import NetworkSpec
from lzo_bench.export.source import ExportError, ExportSource
from lzo_bench.runtime.fsio import atomic_write_bytes

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 21, 17
#: the oldest onnxruntime pyproject.toml declares, and the newest opset / IR version it implements
#: (https://onnxruntime.ai/docs/reference/compatibility.html: 1.18 = ONNX 1.16, opset 21, IR 10)
ORT_MIN_VERSION, ORT_MIN_MAX_OPSET, ORT_MIN_MAX_IR = "1.18", 21, 10
FLOAT = TensorProto.FLOAT
WEIGHT_DTYPES = {"float32": np.float32, "float16": np.float16}


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")


def _state_names(net: NetworkSpec) -> list[tuple[str, int]]:
    """``(name, width)`` of the state variables, in Scan order."""
    names = []
    for l, n in enumerate(net.layer_sizes):
        names += [(f"u{l}", n), (f"s{l}", n), (f"count{l}", n)]
    return names + [("o", net.n_out), ("m", net.n_out)]


def _step_nodes(net: NetworkSpec, x: str, prefix_in: str, prefix_out: str) -> tuple[list, list[str]]:
    """Nodes of one time step from state ``{prefix_in}name`` to ``{prefix_out}name``; returns the
    nodes and the names of the step's spike tensors."""
    nodes, spikes = [], []
    h = x
    convs = net.conv_shapes()
    for l in range(len(net.layer_sizes)):
        i, o = prefix_in, prefix_out
        if l < len(convs):
            nodes += _conv_nodes(convs[l], h, f"W{l}", f"cur{l}", f"c{l}")
        else:
            nodes.append(helper.make_node("MatMul", [h, f"W{l}"], [f"cur{l}"]))
        nodes += [
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
        if l < len(convs) and convs[l].pool > 1:
            nodes += _pool_nodes(convs[l], h, f"pooled{l}", f"p{l}")
            h = f"pooled{l}"
    i, o = prefix_in, prefix_out
    nodes += [
        helper.make_node("MatMul", [h, "W_out"], ["a"]),
        helper.make_node("Mul", ["beta_out", f"{i}o"], ["bo"]),
        helper.make_node("Mul", ["one_minus_beta_out", "a"], ["ga"]),
        helper.make_node("Add", ["bo", "ga"], [f"{o}o"]),
        helper.make_node("Max" if net.reduce == "max" else "Add", [f"{i}m", f"{o}o"], [f"{o}m"]),
    ]
    return nodes, spikes


def _frame_conv_nodes(h: str, w: str, out: str, tag: str, **conv: Any) -> list:
    """``out [B, units']`` = ``Conv(h, w, **conv)`` on ``h [B, units]``: the channels-last rows viewed as NCHW
    frames (``Reshape`` to ``{tag}_in_shape``, ``Transpose``), the ``Conv``, and back (``{tag}_out_shape``)."""
    return [
        helper.make_node("Reshape", [h, f"{tag}_in_shape"], [f"{tag}_nhwc"]),
        helper.make_node("Transpose", [f"{tag}_nhwc"], [f"{tag}_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", [f"{tag}_nchw", w], [f"{tag}_out"], **conv),
        helper.make_node("Transpose", [f"{tag}_out"], [f"{tag}_out_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{tag}_out_nhwc", f"{tag}_out_shape"], [out]),
    ]


def _conv_nodes(conv, h: str, w: str, out: str, tag: str) -> list:
    """``out [B, units_out]`` = the conv of ``h [B, units_in]`` (channels-last rows) with ``w``."""
    return _frame_conv_nodes(h, w, out, tag, kernel_shape=[conv.kernel, conv.kernel],
                             strides=[conv.stride, conv.stride], pads=[conv.padding] * 4)


def _pool_nodes(conv, s: str, out: str, tag: str) -> list:
    """``out [B, units_next]`` = the sum pooling of spikes ``s [B, units_out]``: a depthwise ``Conv`` with
    a ``pool × pool`` kernel of ones and stride ``pool`` (sums of small integers: exact)."""
    k = conv.pool
    return _frame_conv_nodes(s, f"{tag}_ones", out, tag, kernel_shape=[k, k], strides=[k, k], group=conv.c_out)


def _conv_constants(net: NetworkSpec) -> list[TensorProto]:
    """The shapes the conv and pooling nodes reshape to, and the pooling kernels of ones."""
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.int64), name)  # noqa: E731
    out = []
    for l, c in enumerate(net.conv_shapes()):
        out += [i64(f"c{l}_in_shape", [-1, c.height, c.width, c.c_in]),
                i64(f"c{l}_out_shape", [-1, c.units_out])]
        if c.pool > 1:
            _, hp, wp = c.next_shape
            out += [i64(f"p{l}_in_shape", [-1, c.out_height, c.out_width, c.c_out]),
                    i64(f"p{l}_out_shape", [-1, c.units_next]),
                    numpy_helper.from_array(np.ones((c.c_out, 1, c.pool, c.pool), dtype=np.float32), f"p{l}_ones")]
    return out


STEP_EQUATIONS = (
    "One time step t; hidden layer l reads h = x_t for l = 0, else layer l-1's new spikes: "
    "u_l <- beta*u_l + h @ W_l - theta*s_l (subtractive reset by the previous step's spike); "
    "s_l <- (u_l - theta > 0); count_l <- count_l + s_l. "
    "Readout: o <- beta_r*o + (1 - beta_r)*(s_L @ W_out); m <- max(m, o) (or m + o for sum-over-time). "
    "A conv layer's h @ W_l is Conv(h as NCHW frames, W_l) back in channels-last rows; its sum pooling, a "
    "depthwise Conv of ones, feeds the next layer."
)


def ir_version_for(opset: int) -> int:
    """The lowest IR version onnx's version table (``helper.VERSION_TABLE``) allows for ``opset``
    of the default domain; it must not exceed what onnxruntime ``ORT_MIN_VERSION`` reads."""
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if ir > ORT_MIN_MAX_IR or opset > ORT_MIN_MAX_OPSET:
        raise ExportError(f"--opset {opset} needs IR {ir}, newer than onnxruntime {ORT_MIN_VERSION} reads "
                          f"(opset <= {ORT_MIN_MAX_OPSET}, IR <= {ORT_MIN_MAX_IR})")
    return ir


def _initializers(src: ExportSource, dtype: str) -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    """The constants, and for float16 weights the ``Cast`` nodes that widen them to float32 (the
    graph computes in float32 either way; only the stored weights are narrowed)."""
    if dtype not in WEIGHT_DTYPES:
        raise ExportError(f"--dtype {dtype} is not supported; choose {' or '.join(WEIGHT_DTYPES)}")
    net = src.network
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)  # noqa: E731
    names = [f"W{l}" for l in range(len(src.weights) - 1)] + ["W_out"]
    casts = []
    if dtype == "float32":
        inits = [f32(n, w) for n, w in zip(names, src.weights)]
    else:
        inits = [numpy_helper.from_array(w.astype(WEIGHT_DTYPES[dtype]), f"{n}_{dtype}") for n, w in zip(names, src.weights)]
        casts = [helper.make_node("Cast", [f"{n}_{dtype}"], [n], to=FLOAT) for n in names]
    return inits + _conv_constants(net) + [
        f32("beta", net.beta), f32("theta", net.theta), f32("zero", 0.0),
        f32("beta_out", net.beta_out), f32("one_minus_beta_out", 1.0 - net.beta_out),
    ], casts


def _finish(graph: onnx.GraphProto, src: ExportSource, kind: str, opset: int, dtype: str,
            io_card: dict[str, str]) -> onnx.ModelProto:
    """Stamp the opset, the IR version for it and the model card; check the model."""
    card = src.metadata(kind) | io_card | {
        "weights_dtype": dtype,
        "compute_dtype": "float32" + (" (float16 weights are cast to float32 inside the graph)" if dtype != "float32" else ""),
        "min_onnxruntime": ORT_MIN_VERSION,
    }
    graph.doc_string = STEP_EQUATIONS
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="lzo-bench", producer_version=__version__,
                              doc_string=f"lzo-bench spiking network, {kind}.\n" + "\n".join(f"{k}: {v}" for k, v in card.items()))
    model.ir_version = ir_version_for(opset)
    helper.set_model_props(model, card)
    onnx.checker.check_model(model, full_check=True)
    return model


def _input_card(net: NetworkSpec) -> str:
    return (f"spikes [T, B, n_in] = [time, batch, {net.n_in}], float32, values in {{0, 1}}, TIME-MAJOR. "
            "A batch-major [B, T, n_in] array has a valid shape but is read as B time steps of T samples: "
            "wrong logits and no error. Transpose it first: x.transpose(1, 0, 2).")


def sequence_model(src: ExportSource, opset: int = DEFAULT_OPSET, dtype: str = "float32") -> onnx.ModelProto:
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
        + [helper.make_tensor_value_info(s, FLOAT, ["B", n]) for s, n in zip(step_spikes, net.layer_sizes)],
    )
    minus_inf = numpy_helper.from_array(np.array([-np.inf], dtype=np.float32), "v")
    zero_val = numpy_helper.from_array(np.array([0.0], dtype=np.float32), "v")
    inits, nodes = _initializers(src, dtype)
    nodes += [
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
        finals + [f"spikes_{l}" for l in range(len(net.layer_sizes))],
        body=body, num_scan_inputs=1,
    ))
    nodes.append(helper.make_node("Identity", ["final_m"], ["logits"]))
    nodes += [helper.make_node("Identity", [f"final_count{l}"], [f"count_{l}"]) for l in range(len(net.layer_sizes))]
    ints = [numpy_helper.from_array(np.array([1], dtype=np.int64), "one_i")]
    ints += [numpy_helper.from_array(np.array([w], dtype=np.int64), f"width_{n}") for n, w in states]
    graph = helper.make_graph(
        nodes,
        "lzo_bench_snn",
        [helper.make_tensor_value_info("spikes", FLOAT, ["T", "B", net.n_in], doc_string=_input_card(net))],
        [helper.make_tensor_value_info("logits", FLOAT, ["B", net.n_out])]
        + [helper.make_tensor_value_info(f"count_{l}", FLOAT, ["B", n]) for l, n in enumerate(net.layer_sizes)]
        + [helper.make_tensor_value_info(f"spikes_{l}", FLOAT, ["T", "B", n]) for l, n in enumerate(net.layer_sizes)],
        initializer=inits + ints,
    )
    return _finish(graph, src, "sequence (Scan over time)", opset, dtype, {
        "input": _input_card(net), "input_layout": "[T, B, n_in]", "input_dtype": "float32", "input_values": "{0, 1}",
        "outputs": "logits [B, C] (reduced over time); count_l [B, N_l] spike counts and spikes_l [T, B, N_l] "
                   "spike trains of hidden layer l",
    })


def step_model(src: ExportSource, opset: int = DEFAULT_OPSET, dtype: str = "float32") -> onnx.ModelProto:
    """One time step: ``x_t [B, n_in]`` and the state in → the new state and the step's spikes out.

    Start from zeros for every state, except ``m`` = −inf when the network reduces by max; after
    the last step, ``m`` holds the logits.
    """
    _check_opset(opset)
    net = src.network
    states = _state_names(net)
    inits, nodes = _initializers(src, dtype)
    body, step_spikes = _step_nodes(net, "x_t", "", "next_")
    nodes += body + [helper.make_node("Identity", [s], [f"spikes_{l}"]) for l, s in enumerate(step_spikes)]
    x_card = f"x_t [B, n_in] = [batch, {net.n_in}], float32, values in {{0, 1}}: one time bin of the time-major input per call"
    start = initial_state_card(net)
    graph = helper.make_graph(
        nodes,
        "lzo_bench_snn_step",
        [helper.make_tensor_value_info("x_t", FLOAT, ["B", net.n_in], doc_string=x_card)]
        + [helper.make_tensor_value_info(n, FLOAT, ["B", w], doc_string=f"state; start: {start[n]}") for n, w in states],
        [helper.make_tensor_value_info(f"next_{n}", FLOAT, ["B", w]) for n, w in states]
        + [helper.make_tensor_value_info(f"spikes_{l}", FLOAT, ["B", n]) for l, n in enumerate(net.layer_sizes)],
        initializer=inits,
    )
    return _finish(graph, src, "single step (stream one time bin per call)", opset, dtype, {
        "input": x_card, "input_layout": "[B, n_in] per step of a [T, B, n_in] sequence", "input_dtype": "float32",
        "input_values": "{0, 1}",
        "initial_state": "; ".join(f"{n} {v}" for n, v in start.items()),
        "outputs": "next_<state> (feed back as <state>), spikes_l [B, N_l] of the step; after the last step m holds the logits",
    })


def initial_state_card(net: NetworkSpec) -> dict[str, str]:
    """``name → "[B, width] = start value"`` of the step model's state, in input order."""
    return {n: f"[B, {w}] = " + ("-inf" if n == "m" and net.reduce == "max" else "0") for n, w in _state_names(net)}


def initial_step_state(src: ExportSource, batch: int) -> dict[str, np.ndarray]:
    """Zeros for every state of the step model, ``m = −inf`` for max-over-time."""
    state = {n: np.zeros((batch, w), dtype=np.float32) for n, w in _state_names(src.network)}
    if src.network.reduce == "max":
        state["m"][:] = -np.inf
    return state


def write_onnx(model: onnx.ModelProto, path: Path) -> Path:
    return atomic_write_bytes(path, model.SerializeToString())


def node_count(model: onnx.ModelProto) -> int:
    """Nodes of the graph including subgraphs (the Scan body)."""
    def count(g: onnx.GraphProto) -> int:
        return sum(1 + sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH) for n in g.node)

    return count(model.graph)
