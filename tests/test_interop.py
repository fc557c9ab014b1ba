"""Issue 30: networks from elsewhere into lzo_bench.nn's sparse layers — NIR graphs (from_nir, and the round
trip through lzo-bench's own NIR writer), snnTorch and SpikingJelly models (from_snntorch, from_spikingjelly,
and their trained weights copied back with to_snntorch, to_spikingjelly)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lzo_bench import nn, spike
from lzo_bench.core.conv import ConvLayer
from lzo_bench.core.floatcmp import compare_logits, readout_bound
from lzo_bench.core.model import SNN, NetworkSpec
from lzo_bench.core.timescale import beta_of, round_trip_bound, tau_of
from lzo_bench.nn.from_nir import UnsupportedGraph

nir = pytest.importorskip("nir")

RULES = {
    "surrogate": lambda: spike.Surrogate("normal", delta=0.3),
    "sparsegrad": lambda: spike.SparseGrad("laplace", delta=0.3),
    "localzo": lambda: spike.LocalZO(delta=0.3, dist="normal", m=2, seed=1),
}


def _spikes(steps: int, batch: int, n: int, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    return (torch.rand(steps, batch, n, generator=torch.Generator().manual_seed(seed)) < p).float()


def _exported(spec: NetworkSpec, seed: int = 0):
    """An SNN with random weights and lzo-bench's own NIR graph of it (dt = 1 ms)."""
    from lzo_bench.export.nir_graph import nir_graph
    from lzo_bench.export.source import ExportSource

    model = SNN(spec, generator=torch.Generator().manual_seed(seed))
    src = ExportSource(spec, [w.detach().numpy().astype(np.float32) for w in model.weights], 1.0, 10, "test",
                       "digits", {})
    return model, nir_graph(src)


def _from_nir(graph, **kw) -> nn.Sequential:
    with pytest.warns(UserWarning, match="reset to v_reset = 0"):
        return nn.from_nir(graph, **kw)


def test_tau_beta_round_trip_is_within_the_derived_bound_and_exact_in_float32():
    """β → τ = dt/(1 − β) → 1 − dt/τ is not bit-exact in float64 (core.timescale derives ≤ 4 ulps); the
    layers compute in float32, where every β tried comes back exactly."""
    betas = np.random.default_rng(0).random(20000).tolist() + [0.0, 0.5, 0.8, 0.9, 0.905, 0.95, 0.99]
    worst = 0.0
    for beta in betas:
        for dt in (1e-3, 1e-4, 2e-3):
            back = beta_of(tau_of(beta, dt), dt)
            worst = max(worst, abs(back - beta))
            assert np.float32(back) == np.float32(beta)
    assert worst <= round_trip_bound()


@pytest.mark.parametrize("reduce", ["max", "sum"])
def test_from_nir_of_our_export_has_our_weights_and_spikes(reduce):
    spec = NetworkSpec(n_in=6, hidden=(5, 4), n_out=3, beta=0.9, beta_out=0.8, reduce=reduce)
    model, graph = _exported(spec)
    ours = _from_nir(graph, backend="torch")
    ref = nn.Sequential.from_snn(model, spike.LocalZO(), backend="torch")
    for a, b in zip(ours.layers, ref.layers, strict=True):
        assert type(a) is type(b) and torch.equal(a.weight, b.weight)
        assert abs(a.beta - b.beta) <= round_trip_bound() and np.float32(a.beta) == np.float32(b.beta)
    assert ours.layers[-1].reduce == reduce and all(m.theta == 1.0 for m in ours.layers[:-1])
    x = _spikes(12, 4, 6)
    with torch.no_grad():
        a, b = ours.run(x), ref.run(x)
    assert all(torch.equal(p, q) for p, q in zip(a.counts, b.counts)) and sum(float(c.sum()) for c in a.counts) > 0
    assert compare_logits(a.logits, b.logits, readout_bound(b.spikes[-1], ref.layers[-1].weight, 0.8, reduce)).within


def test_from_nir_of_our_conv_export_has_our_weights_and_spikes():
    spec = NetworkSpec(n_in=2 * 8 * 8, hidden=(5,), n_out=3, beta=0.8, beta_out=0.9,
                       conv=(ConvLayer(3, 3, 1, 1, pool=2),), frame=(2, 8, 8))
    model, graph = _exported(spec, seed=1)
    ours = _from_nir(graph, backend="torch")
    assert [type(m).__name__ for m in ours.layers] == ["ConvLIF", "SumPool2d", "Flatten", "LIF", "LeakyReadout"]
    assert torch.equal(ours.layers[0].weight, model.weights[0]) and torch.equal(ours.layers[3].weight, model.weights[1])
    assert torch.equal(ours.layers[4].weight, model.weights[2]) and ours.input_shape == (2, 8, 8)
    x = _spikes(8, 3, 2 * 8 * 8, 0.4)
    with torch.no_grad():
        a = ours.run(x)
        b = model(x)  # the SNN's own reference path
    assert all(torch.equal(p, q) for p, q in zip(a.counts, b.counts)) and float(a.counts[0].sum()) > 0
    assert torch.allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


def _hand_graph(second: str = "LIF", r_scale: float = 1.7, dt: float = 1e-3):
    """Input → Affine → LIF (per-neuron r, gain ≠ 1) → Linear → LIF or IF → Linear → LI → Output, no metadata."""
    rng = np.random.default_rng(3)
    w1, b1 = rng.normal(0, 0.6, (5, 6)).astype(np.float32), rng.normal(0, 0.2, 5).astype(np.float32)
    w2, w3 = rng.normal(0, 0.8, (4, 5)).astype(np.float32), rng.normal(0, 0.8, (3, 4)).astype(np.float32)
    tau = np.full(5, 0.01)
    nodes = {
        "input": nir.Input({"input": np.array([6])}),
        "fc1": nir.Affine(weight=w1, bias=b1),
        "lif1": nir.LIF(tau=tau, r=r_scale * np.linspace(5, 12, 5), v_leak=np.zeros(5), v_threshold=np.full(5, 0.8),
                        v_reset=np.zeros(5)),
        "fc2": nir.Linear(weight=w2),
        "n2": nir.IF(r=np.full(4, 2.5 / dt), v_threshold=np.full(4, 1.2), v_reset=np.zeros(4)) if second == "IF" else
        nir.LIF(tau=np.full(4, 0.005), r=np.full(4, 4.0), v_leak=np.zeros(4), v_threshold=np.full(4, 1.2),
                v_reset=np.zeros(4)),
        "fc3": nir.Linear(weight=w3),
        "li": nir.LI(tau=np.full(3, 0.02), r=np.full(3, 2.0), v_leak=np.zeros(3)),
        "output": nir.Output({"output": np.array([3])}),
    }
    order = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])))


def _nir_float64(graph, x: torch.Tensor, dt: float) -> tuple[list[np.ndarray], np.ndarray]:
    """The chain's LIF spike counts and its LI trace summed over time, in float64, by NIR's equations
    (Euler at dt, ``a = dt/τ``) with the subtractive reset: ``v ← (1 − a)·v + a·R·(W h + b) − θ·s[t−1]``."""
    h = x.double().numpy()
    counts, weight, bias = [], None, None
    for key, node in graph.nodes.items():
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight, bias = node.weight.astype(np.float64), getattr(node, "bias", None)
        elif isinstance(node, (nir.LIF, nir.LI)):
            cur = h @ weight.T + (0.0 if bias is None else bias.astype(np.float64))
            a = dt / node.tau
            v, s, out = np.zeros(cur.shape[1:]), np.zeros(cur.shape[1:]), []
            for c in cur:
                v = (1 - a) * v + a * node.r * c
                if isinstance(node, nir.LIF):
                    v = v - node.v_threshold * s
                    s = (v > node.v_threshold).astype(np.float64)
                out.append(s if isinstance(node, nir.LIF) else v)
            h = np.stack(out)
            if isinstance(node, nir.LIF):
                counts.append(h.sum(0))
    return counts, h.sum(0)


def test_from_nir_folds_the_gains_and_matches_nir_semantics_with_our_reset():
    """A graph not written by us (r ≠ τ/dt per neuron, τ and θ per layer, a bias, an LI with r = 2): our
    layers against NIR's equations in float64 with the subtractive reset (spike counts equal; the
    potentials stay ≥ 0.03 from θ here, far outside rounding), logits within the readout's rounding bound."""
    graph = _hand_graph()
    net = _from_nir(graph, backend="torch", dt=1e-3, reduce="sum")
    lif, lif2, out = net.layers
    assert lif.beta == pytest.approx(0.9) and lif2.beta == pytest.approx(0.8) and (lif.theta, lif2.theta) == (0.8, 1.2)
    assert out.beta == pytest.approx(0.95) and lif.bias is not None
    x = _spikes(15, 4, 6, 0.6)
    with torch.no_grad():
        ours = net.run(x)
    counts, logits = _nir_float64(graph, x, 1e-3)
    assert all(np.array_equal(c.numpy(), r) for c, r in zip(ours.counts, counts, strict=True))
    assert min(float(c.sum()) for c in ours.counts) > 0
    bound = readout_bound(ours.spikes[-1], out.weight, out.beta, "sum")
    assert compare_logits(ours.logits, torch.from_numpy(logits), bound * 4).within  # ×4: the gain rounds on both sides


def test_if_is_lif_with_beta_1_and_gain_r_dt():
    graph = _hand_graph("IF")
    net = _from_nir(graph, dt=1e-3, backend="torch")
    w2 = graph.nodes["fc2"].weight.astype(np.float64).T * (2.5 / 1e-3 * 1e-3)
    assert net.layers[1].beta == 1.0 and torch.equal(net.layers[1].weight, torch.from_numpy(w2.astype(np.float32)))
    gain = 1.7 * np.linspace(5, 12, 5) * (1e-3 / 0.01)  # per neuron, into the columns of W and into b
    assert torch.equal(net.layers[0].weight, torch.from_numpy((graph.nodes["fc1"].weight.astype(np.float64).T * gain)
                                                              .astype(np.float32)))
    assert torch.equal(net.layers[0].bias, torch.from_numpy((graph.nodes["fc1"].bias * gain).astype(np.float32)))
    assert net(_spikes(6, 2, 6)).shape == (2, 3)


def test_avgpool_becomes_sum_pooling_with_the_next_weights_scaled():
    rng = np.random.default_rng(4)
    conv_w = rng.normal(0, 0.7, (2, 1, 3, 3)).astype(np.float32)
    fc_w = rng.normal(0, 0.8, (4, 2 * 3 * 3)).astype(np.float32)
    lif = lambda shape: nir.LIF(tau=np.full(shape, 0.01), r=np.full(shape, 10.0), v_leak=np.zeros(shape),  # noqa: E731
                                v_threshold=np.ones(shape), v_reset=np.zeros(shape))
    nodes = {"input": nir.Input({"input": np.array([1, 8, 8])}),
             "conv": nir.Conv2d(input_shape=(8, 8), weight=conv_w, stride=1, padding=0, dilation=1, groups=1,
                                bias=np.zeros(2, np.float32)),
             "lif": lif((2, 6, 6)), "pool": nir.AvgPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])),
             "flat": nir.Flatten({"input": np.array([2, 3, 3])}, start_dim=0),
             "fc": nir.Linear(weight=fc_w), "lif2": lif((4,)),
             "fc_out": nir.Linear(weight=np.eye(3, 4, dtype=np.float32)),
             "li": nir.LI(tau=np.full(3, 0.01), r=np.ones(3), v_leak=np.zeros(3)), "output": nir.Output({"output": np.array([3])})}
    order = list(nodes)
    net = _from_nir(nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:]))), dt=1e-3, backend="torch")
    assert [type(m).__name__ for m in net.layers] == ["ConvLIF", "SumPool2d", "Flatten", "LIF", "LeakyReadout"]
    from lzo_bench.core.conv import nchw_order

    expect = np.empty((18, 4), np.float64)
    expect[nchw_order(2, 3, 3).numpy()] = fc_w.T.astype(np.float64) / 4.0
    assert torch.equal(net.layers[3].weight, torch.from_numpy(expect.astype(np.float32)))
    assert torch.equal(net.layers[0].weight, torch.from_numpy(conv_w))


def _chain(*named):
    nodes = dict(named)
    order = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata={"dt_s": "0.001"})


def _lif(n, **kw):
    p = dict(tau=np.full(n, 0.01), r=np.full(n, 10.0), v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n))
    return nir.LIF(**(p | kw))


IN, OUT = ("in", nir.Input({"input": np.array([3])})), ("out", nir.Output({"output": np.array([2])}))
FC = lambda k, o=3, i=3: (k, nir.Linear(weight=np.ones((o, i), np.float32)))  # noqa: E731
LI = ("li", nir.LI(tau=np.full(2, 0.01), r=np.ones(2), v_leak=np.zeros(2)))


@pytest.mark.parametrize("graph,message", [
    (lambda: _chain(IN, FC("fc"), ("lif", _lif(3, v_leak=np.ones(3))), FC("o", 2), LI, OUT),
     "LIF 'lif': v_leak ≠ 0 is not supported"),
    (lambda: _chain(IN, FC("fc"), ("lif", _lif(3, v_reset=np.full(3, -0.5))), FC("o", 2), LI, OUT),
     "LIF 'lif': v_reset ≠ 0 is not supported"),
    (lambda: _chain(IN, FC("fc"), ("lif", _lif(3, tau=np.array([0.01, 0.02, 0.01]))), FC("o", 2), LI, OUT),
     "LIF 'lif': tau differs across its neurons"),
    (lambda: _chain(IN, FC("fc"), ("d", nir.Delay(np.ones(3))), ("lif", _lif(3)), FC("o", 2), LI, OUT),
     "Delay 'd' cannot run here: a transmission delay"),
    (lambda: _chain(IN, FC("fc"), ("lif", _lif(3)), ("sc", nir.Scale(np.ones(3))), FC("o", 2), LI, OUT),
     "Scale 'sc' cannot run here"),
    (lambda: _chain(IN, FC("fc"), ("c", nir.CubaLIF(tau_syn=np.full(3, 0.005), tau_mem=np.full(3, 0.01), r=np.ones(3),
                                                    v_leak=np.zeros(3), v_threshold=np.ones(3), v_reset=np.zeros(3),
                                                    w_in=np.ones(3))), FC("o", 2), LI, OUT),
     "CubaLIF 'c': a synaptic time constant tau_syn ≠ dt"),
    (lambda: _chain(IN, FC("fc"), ("lif", _lif(3)), FC("o", 2), ("lif_out", _lif(2)), OUT),
     "the graph's output is LIF 'lif_out', not a leaky readout"),
    (lambda: _chain(IN, FC("fc"), ("th", nir.Threshold(np.ones(3))), FC("o", 2), LI, OUT), "Threshold 'th' cannot run"),
])
def test_a_node_we_cannot_run_is_refused_in_one_line_naming_it(graph, message):
    with pytest.raises(UnsupportedGraph, match=message) as e:
        nn.from_nir(graph())
    assert "\n" not in str(e.value)


def test_recurrence_and_a_missing_dt_are_refused():
    g = _chain(IN, FC("fc"), ("lif", _lif(3)), FC("o", 2), LI, OUT)
    g.edges.append(("lif", "fc"))
    with pytest.raises(UnsupportedGraph, match=r"Linear 'fc' has 2 inputs \('in', 'lif'\).*without branches or recurrence"):
        nn.from_nir(g)
    g = _chain(IN, FC("fc"), ("lif", _lif(3)), FC("o", 2), LI, OUT)
    g.metadata = {}
    with pytest.raises(UnsupportedGraph, match=r"no dt_s in its metadata; pass dt= \(graphs from snnTorch"):
        nn.from_nir(g)


def test_from_nir_reads_a_file_and_trains(tmp_path):
    from lzo_bench.export.nir_graph import write_nir

    _, graph = _exported(NetworkSpec(n_in=6, hidden=(5,), n_out=3, beta=0.9, beta_out=0.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_nir(graph, tmp_path / "m.nir")
    net = _from_nir(tmp_path / "m.nir", rule=RULES["localzo"]())
    before = [p.detach().clone() for p in net.parameters()]
    loss = net(_spikes(10, 4, 6, 0.6)).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=1.0).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
