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
    lif = lambda shape: nir.LIF(tau=np.full(shape, 0.01), r=np.full(shape, 10.0), v_leak=np.zeros(shape),
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
FC = lambda k, o=3, i=3: (k, nir.Linear(weight=np.ones((o, i), np.float32)))
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


# ---- snnTorch and SpikingJelly models -------------------------------------------------------------------

snn = pytest.importorskip("snntorch")


def _recorder(model: torch.nn.Module, kinds: tuple[type, ...]):
    """Per neuron module of ``kinds``: its spikes and its potential before the reset, each step."""
    rec: dict[str, dict[str, list[torch.Tensor]]] = {}

    def hook(name):
        def h(module, inputs, out):
            spk = out[0] if isinstance(out, tuple) else out
            r = rec.setdefault(name, {"s": [], "u": []})
            r["s"].append(spk.detach().clone())
            if hasattr(module, "mem"):
                r["u"].append(module.mem.detach().clone())
        return h

    for name, m in model.named_children():
        if isinstance(m, kinds):
            m.register_forward_hook(hook(name))
    return rec


def _snntorch_fc(readout: str = "linear", theta: float = 1.0, bias: bool = True) -> torch.nn.Sequential:
    torch.manual_seed(5)
    layers = [torch.nn.Linear(6, 8, bias=bias), snn.Leaky(beta=0.9, threshold=theta, init_hidden=True),
              torch.nn.Dropout(0.3), torch.nn.Linear(8, 5, bias=bias),
              snn.Leaky(beta=0.8, threshold=theta, init_hidden=True), torch.nn.Linear(5, 3, bias=bias)]
    if readout == "leaky":
        layers.append(snn.Leaky(beta=0.7, init_hidden=True, reset_mechanism="none"))
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(2.5)
    return model.eval()


def _run_snntorch(model, x):
    """snnTorch's own loop: one call per step; the hidden Leaky layers' spikes and membranes, and the
    output per step (a final Leaky's membrane for a reset_mechanism='none' readout)."""
    from snntorch.utils import reset

    rec = _recorder(model, (snn.Leaky,))
    reset(model)
    out = []
    with torch.no_grad():
        for x_t in x.unbind(0):
            y = model(x_t)
            last = model[-1]
            out.append(last.mem.clone() if isinstance(last, snn.Leaky) else y)
    return rec, torch.stack(out)


def _spikes_agree(ours: list[torch.Tensor], rec: dict, x: torch.Tensor, net: nn.Sequential, theta: float):
    """floatcmp's rule: spikes equal except where a reference potential lies within the rounding bound of θ."""
    from lzo_bench.core.floatcmp import lif_potential_bound, spikes_agree

    hidden = [m for m in net.layers if isinstance(m, nn.LIF)]
    refs = [torch.stack(r["s"]) for r in list(rec.values())[:len(hidden)]]
    us = [torch.stack(r["u"]) for r in list(rec.values())[:len(hidden)]]
    # snnTorch's mem after a step is u[t] (the reset at t+1 subtracts θ·s[t]): the potential compared to θ
    bounds, h = [], x
    for layer, s in zip(hidden, refs):
        bounds.append(lif_potential_bound(h, layer.weight, layer.beta, theta, s, bias=layer.bias))
        h = s
    return spikes_agree(ours, refs, us, theta, bounds)


@pytest.mark.parametrize("reduce", ["max", "sum"])
def test_from_snntorch_runs_the_same_network(reduce):
    model = _snntorch_fc(theta=0.9)
    net = nn.from_snntorch(model, reduce=reduce)
    assert [type(m).__name__ for m in net.layers] == ["LIF", "LIF", "LeakyReadout"]
    assert torch.equal(net.layers[0].weight, model[0].weight.T) and torch.equal(net.layers[1].bias, model[3].bias)
    assert (net.layers[0].beta, net.layers[1].beta, net.layers[2].beta) == (np.float32(0.9), np.float32(0.8), 0.0)
    x = _spikes(20, 4, 6, 0.5)
    rec, out = _run_snntorch(model, x)
    with torch.no_grad():
        ours = net.run(x)
    agree = _spikes_agree(ours.spikes, rec, x, net, 0.9)
    assert agree.legitimate, str(agree)
    assert min(float(s.sum()) for s in ours.spikes) > 0
    ref = out.amax(0) if reduce == "max" else out.sum(0)
    assert agree.equal  # here: no potential lies within rounding of θ
    s = torch.cat([ours.spikes[-1], torch.ones(*ours.spikes[-1].shape[:2], 1)], 2)  # the bias as one more input
    w = torch.cat([net.layers[-1].weight, net.layers[-1].bias[None]], 0)
    assert compare_logits(ours.logits, ref, readout_bound(s, w, 0.0, reduce)).within


def test_a_reset_none_leaky_is_the_leaky_readout():
    model = _snntorch_fc("leaky")
    net = nn.from_snntorch(model, backend="torch")
    out_layer = net.layers[-1]
    assert out_layer.beta == np.float32(0.7) and out_layer.reduce == "max"
    w = (model[5].weight.detach().double().T / (1 - float(np.float32(0.7)))).float()
    assert torch.equal(out_layer.weight, w)
    x = _spikes(20, 4, 6, 0.5)
    _, mem = _run_snntorch(model, x)
    with torch.no_grad():
        ours = net.run(x)
    assert torch.allclose(ours.logits, mem.amax(0), rtol=1e-5, atol=1e-5)


def _far_from_theta(us: list[torch.Tensor], fan_ins: list[int], theta: float = 1.0) -> None:
    """Exact spike-count equality between two float computations (a library's conv layers against ours) is
    sound on any CPU only if no reference potential lies within rounding of θ: every |u − θ| must exceed
    2·γ_n·max|u| (the bound on the two computations' difference) (n = fan-in + 3T roundings; lzo_bench.core.floatcmp), layer by layer."""
    from lzo_bench.core.floatcmp import gamma

    for u, n in zip(us, fan_ins, strict=True):
        bound = 2 * gamma(n + 3 * u.shape[0]) * float(u.abs().max() + theta)
        assert float((u - theta).abs().min()) > bound, "a potential lies within rounding of θ: pick another seed"


def test_from_snntorch_conv_with_avg_pooling():
    torch.manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), snn.Leaky(beta=0.85, init_hidden=True), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 3, 5), snn.Leaky(beta=0.9, init_hidden=True),
        torch.nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[4].weight.mul_(3.0)
    net = nn.from_snntorch(model, input_shape=(1, 6, 6), backend="torch")
    assert [type(m).__name__ for m in net.layers] == ["ConvLIF", "SumPool2d", "Flatten", "LIF", "LeakyReadout"]
    assert torch.equal(net.layers[0].weight, model[0].weight)
    frames = (torch.rand(12, 2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    rec, out = _run_snntorch(model, frames)
    with torch.no_grad():
        ours = net.run(frames)
    from lzo_bench.core.conv import units

    counts = [units(torch.stack(rec["1"]["s"]).sum(0)), torch.stack(rec["5"]["s"]).sum(0)]
    _far_from_theta([torch.stack(rec["1"]["u"]), torch.stack(rec["5"]["u"])], [9, 27])
    assert all(torch.equal(a, b) for a, b in zip(ours.counts, counts)) and float(ours.counts[1].sum()) > 0
    assert torch.allclose(ours.logits, out.amax(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_converted_model_trains_with_each_rule_and_goes_back(rule):
    model = _snntorch_fc()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    net = nn.from_snntorch(model, rule=RULES[rule]())
    before = [p.detach().clone() for p in net.parameters()]
    loss = torch.nn.functional.cross_entropy(net(_spikes(10, 8, 6, 0.6)), torch.arange(8) % 3)
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    changed = [not torch.equal(a, b) for a, b in zip(before, net.parameters())]
    assert all(changed[:2]), changed
    nn.to_snntorch(net, model)
    again = nn.from_snntorch(model)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))
    assert not torch.equal(model[0].weight, original["0.weight"])


def test_to_snntorch_of_from_snntorch_restores_the_weights():
    for model in (_snntorch_fc(), _snntorch_fc(bias=False)):
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        net = nn.from_snntorch(model)
        for p in model.parameters():
            p.data.zero_()
        nn.to_snntorch(net, model)
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    model = _snntorch_fc("leaky")  # W/(1 − β) and back: within one float32 rounding
    saved = model[5].weight.clone()
    nn.to_snntorch(nn.from_snntorch(model), model)
    assert torch.allclose(model[5].weight, saved, rtol=2.0**-23, atol=0)


LEAKY = lambda **kw: snn.Leaky(beta=0.9, init_hidden=True, **kw)


@pytest.mark.parametrize("layers,message", [
    (lambda: [torch.nn.Linear(4, 3), LEAKY(reset_mechanism="zero"), torch.nn.Linear(3, 2)],
     "Leaky '1': reset_mechanism='zero': lzo_bench.nn's LIF resets by subtraction only"),
    (lambda: [torch.nn.Linear(4, 3), LEAKY(reset_delay=False), torch.nn.Linear(3, 2)], "Leaky '1': reset_delay=False"),
    (lambda: [torch.nn.Linear(4, 3), LEAKY(), torch.nn.Linear(3, 2), LEAKY()],
     "the model's output is the spikes of Leaky '3'.*end the model in its Linear.*reset_mechanism='none'"),
    (lambda: [torch.nn.Conv2d(1, 2, 3), LEAKY(), torch.nn.MaxPool2d(2)],
     "MaxPool2d '2': not supported yet .*use AvgPool2d"),
    (lambda: [torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), LEAKY()],
     "BatchNorm2d '1': fold BatchNorm into the preceding Conv2d"),
    (lambda: [torch.nn.Conv2d(1, 2, 3), torch.nn.AvgPool2d(2), LEAKY()],
     "AvgPool2d '1' pools the current of Conv2d '0' before its neuron.*no pooled-current op"),
    (lambda: [torch.nn.Linear(4, 3), snn.Synaptic(alpha=0.5, beta=0.9, init_hidden=True), torch.nn.Linear(3, 2)],
     "Synaptic '1': a synaptic current"),
    (lambda: [torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)], "ReLU '1': not a layer from_snntorch"),
])
def test_from_snntorch_refuses_in_one_line(layers, message):
    with pytest.raises(nn.from_libraries.UnsupportedModel, match=message) as e:
        model = torch.nn.Sequential(*layers())
        nn.from_snntorch(model, input_shape=(1, 6, 6) if isinstance(model[0], torch.nn.Conv2d) else None)
    assert "\n" not in str(e.value)


def _spikingjelly():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron

    return functional, layer, neuron


def _sj_fc(readout: str = "nonspiking"):
    functional, layer, neuron = _spikingjelly()
    torch.manual_seed(7)
    parts = [layer.Linear(6, 8), neuron.IFNode(v_reset=None, store_v_seq=True), layer.Dropout(0.2),
             layer.Linear(8, 5), neuron.IFNode(v_reset=None, store_v_seq=True), layer.Linear(5, 3)]
    if readout == "nonspiking":
        parts.append(neuron.NonSpikingLIFNode(tau=3.0, decode="max-mem"))
    model = torch.nn.Sequential(*parts)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(1.5)
    functional.set_step_mode(model, "m")  # SpikingJelly's own loop over T: x [T, B, n] in one call
    return model.eval()


def _run_sj(model, x):
    functional, _, neuron = _spikingjelly()
    rec = _recorder(model, (neuron.IFNode,))
    functional.reset_net(model)
    with torch.no_grad():
        out = model(x)
    for name, r in rec.items():  # v_seq is after the reset: the potential compared to θ is v + θ·s
        node = dict(model.named_children())[name]
        r["s"] = list(r["s"][0].unbind(0))
        r["u"] = list((node.v_seq + node.v_threshold * torch.stack(r["s"])).unbind(0))
    return rec, out


def test_from_spikingjelly_runs_the_same_network():
    model = _sj_fc()
    net = nn.from_spikingjelly(model)
    assert [type(m).__name__ for m in net.layers] == ["LIF", "LIF", "LeakyReadout"]
    assert [m.beta for m in net.layers] == [1.0, 1.0, pytest.approx(2 / 3)] and net.layers[-1].reduce == "max"
    assert torch.equal(net.layers[2].weight, model[5].weight.T)
    x = _spikes(16, 4, 6, 0.5)
    rec, out = _run_sj(model, x)
    with torch.no_grad():
        ours = net.run(x)
    agree = _spikes_agree(ours.spikes, rec, x, net, 1.0)
    assert agree.legitimate, str(agree)
    assert agree.equal and min(float(s.sum()) for s in ours.spikes) > 0
    s = torch.cat([ours.spikes[-1], torch.ones(*ours.spikes[-1].shape[:2], 1)], 2)
    w = torch.cat([net.layers[-1].weight, net.layers[-1].bias[None]], 0)
    assert compare_logits(ours.logits, out, 4 * readout_bound(s, w, net.layers[-1].beta, "max")).within


def test_from_spikingjelly_conv_and_back():
    functional, layer, neuron = _spikingjelly()
    torch.manual_seed(8)
    model = torch.nn.Sequential(
        layer.Conv2d(1, 3, 3, padding=1), neuron.IFNode(v_reset=None, store_v_seq=True), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(27, 5), neuron.IFNode(v_reset=None, store_v_seq=True), layer.Linear(5, 3))
    functional.set_step_mode(model, "m")
    net = nn.from_spikingjelly(model, input_shape=(1, 6, 6), reduce="sum", backend="torch")
    frames = (torch.rand(10, 2, 1, 6, 6, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    rec = _recorder(model, (neuron.IFNode,))
    functional.reset_net(model)
    with torch.no_grad():
        out = model(frames)
        ours = net.run(frames)
    from lzo_bench.core.conv import units

    counts = [units(rec["1"]["s"][0].sum(0)), rec["5"]["s"][0].sum(0)]
    nodes = dict(model.named_children())  # v_seq is after the reset: the potential compared to θ is v + θ·s
    _far_from_theta([nodes[k].v_seq + rec[k]["s"][0] for k in ("1", "5")], [9, 27])
    assert all(torch.equal(a, b) for a, b in zip(ours.counts, counts)) and float(ours.counts[1].sum()) > 0
    assert torch.allclose(ours.logits, out.sum(0), rtol=1e-5, atol=1e-5)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.data.zero_()
    nn.to_spikingjelly(net, model)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())  # 1/4 is a power of two: exact


@pytest.mark.parametrize("make,message", [
    (lambda n: n.LIFNode(v_reset=None), "LIFNode '1': its soft reset is decayed with the membrane"),
    (lambda n: n.IFNode(), "IFNode '1': v_reset=0.0 resets to a value.*IFNode\\(v_reset=None\\)"),
    (lambda n: torch.nn.MaxPool1d(1), "MaxPool1d '1': not supported yet"),
])
def test_from_spikingjelly_refuses_in_one_line(make, message):
    _, layer, neuron = _spikingjelly()
    with pytest.raises(nn.from_libraries.UnsupportedModel, match=message) as e:
        nn.from_spikingjelly(torch.nn.Sequential(layer.Linear(4, 3), make(neuron), layer.Linear(3, 2)))
    assert "\n" not in str(e.value)


def test_a_graph_in_snntorchs_convention_converts_at_its_dt():
    """snnTorch's export_to_nir writes τ = dt₀/(1 − β), r = τ/dt₀ at dt₀ = 1e-4 s and ends in the last Affine
    (its exporter fails on nir 1.0.8's type inference here, so the graph is written by its formulas)."""
    from lzo_bench.core.timescale import SNNTORCH_DT

    beta = np.float32(0.9)
    tau = SNNTORCH_DT / (1 - beta.astype(np.float64))
    w1, w2 = np.ones((4, 3), np.float32) * 0.7, np.ones((2, 4), np.float32)
    g = nir.NIRGraph(nodes={"input": nir.Input({"input": np.array([3])}), "fc": nir.Linear(weight=w1),
                            "lif": nir.LIF(tau=np.full(4, tau), r=np.full(4, tau / SNNTORCH_DT), v_leak=np.zeros(4),
                                           v_threshold=np.ones(4), v_reset=np.zeros(4)),
                            "out_fc": nir.Affine(weight=w2, bias=np.full(2, 0.5, np.float32)),
                            "output": nir.Output({"output": np.array([2])})},
                     edges=[("input", "fc"), ("fc", "lif"), ("lif", "out_fc"), ("out_fc", "output")])
    with pytest.raises(UnsupportedGraph, match="pass dt="):
        nn.from_nir(g)
    net = _from_nir(g, dt=SNNTORCH_DT, reduce="sum")
    assert np.float32(net.layers[0].beta) == beta and torch.equal(net.layers[0].weight, torch.from_numpy(w1.T))
    out = net.layers[1]
    assert out.beta == 0.0 and torch.equal(out.weight, torch.from_numpy(w2.T)) and torch.equal(out.bias, torch.full((2,), 0.5))


def test_a_fractional_conv_stride_in_a_graph_is_refused_not_truncated():
    """NIR stores strides as arrays: 1.5 used to be cast to 1 and run as another network."""
    nodes = {"input": nir.Input({"input": np.array([1, 8, 8])}),
             "conv": nir.Conv2d(input_shape=(8, 8), weight=np.ones((2, 1, 3, 3), np.float32),
                                stride=np.array([1.5, 1.5]), padding=0, dilation=1, groups=1,
                                bias=np.zeros(2, np.float32)),
             "output": nir.Output({"output": np.array([2, 4, 4])})}
    order = list(nodes)
    with pytest.raises(ValueError, match=r"Conv2d 'conv'.*stride must be an integer, got 1\.5") as e:
        nn.from_nir(nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:]))), dt=1e-3, backend="torch")
    assert "\n" not in str(e.value)
