"""lzo_bench.nn: the event-driven sparse stack as modules (per-layer β, θ, rule, bias) against the
pure-PyTorch reference, and the SNN as the same code."""

from __future__ import annotations

import pickle

import pytest
import torch

from lzo_bench import nn, spike
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.floatcmp import lif_potential_bound
from lzo_bench.core.lif import lif_potentials
from lzo_bench.core.model import SNN, NetworkSpec

RULES = {
    "surrogate": lambda seed: spike.Surrogate("normal", delta=0.3),
    "sparsegrad": lambda seed: spike.SparseGrad("laplace", delta=0.3),
    "localzo": lambda seed: spike.LocalZO(delta=0.3, dist="normal", m=3, seed=seed),
}


def _stack(rule: str, backend: str = "auto", gen_seed: int = 2) -> nn.Sequential:
    """3 hidden layers, β = 0.9 / 0 / 0.5, θ = 1 / 1 / 0.7, biases on layers 1 and 3 and the readout."""
    g = torch.Generator().manual_seed(gen_seed)
    make = RULES[rule]
    net = nn.Sequential(
        nn.LIF(20, 30, beta=0.9, rule=make(1), bias=True, generator=g),
        nn.LIF(30, 25, beta=0.0, rule=make(2), generator=g),
        nn.LIF(25, 15, beta=0.5, theta=0.7, rule=make(3), bias=True, generator=g),
        nn.LeakyReadout(15, 4, beta=0.9, bias=True, reduce="sum", generator=g),
        backend=backend,
    )
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0.0, 0.3, generator=g)
    return net


def _input(steps: int = 75, batch: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.rand(steps, batch, 20, generator=g) * (torch.rand(steps, batch, 20, generator=g) < 0.2)


def _near_threshold(net: nn.Sequential, x: torch.Tensor) -> int:
    """Entries whose potential lies within the rounding bound of θ (floatcmp.lif_potential_bound, a
    bias as one more input unit): where there are none, two float32 computations of the network give
    the same spikes on any CPU, so comparing spikes exactly is a sound claim."""
    h, near = x, 0
    for lif in net.layers[:-1]:
        w = lif.weight.detach()
        if lif.bias is not None:
            h = torch.cat([h, torch.ones(*h.shape[:2], 1)], 2)
            w = torch.cat([w, lif.bias.detach()[None]])
        v = lif_potentials(h @ w, lif.beta, lif.theta)
        s = (v > 0).float()
        near += int((v.double().abs() <= lif_potential_bound(h, w, lif.beta, lif.theta, s)).sum())
        h = s
    return near


def _run(net: nn.Sequential, x):
    for lif in net.layers[:-1]:
        lif.rule.reset()
    net.zero_grad()
    out = net.run(x)
    (out.logits.square().sum() + 0.1 * sum(c.sum() for c in out.counts)).backward()
    return out, [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("rule", RULES)
def test_gradients_equal_the_reference_for_three_layers_with_per_layer_beta_and_bias(rule):
    """The C++ event ops against the pure-PyTorch reference (lif_layer per layer, autograd), T = 75,
    graded input: spikes, logits, every weight and bias gradient; the count regulariser's gradient too."""
    x = _input()
    ours, reference = _stack(rule), _stack(rule, backend="torch")
    assert _near_threshold(ours, x) == 0
    a, ga = _run(ours, x)
    b, gb = _run(reference, x)
    assert next(iter(ours._backends.values())).name == "cpp"
    assert next(iter(reference._backends.values())).name == "torch"
    for s, t in zip(a.spikes, b.spikes):
        assert torch.equal(s, t) and s.sum() > 0
    assert a.active == b.active and all(n > 0 for n in a.active)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    names = [n for n, _ in ours.named_parameters()]
    assert {"layers.0.bias", "layers.2.bias", "layers.3.bias"} <= set(names)
    for name, p, q in zip(names, ga, gb):
        assert q.abs().max() > 0, name
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5 * float(q.abs().max()), msg=name)


def test_a_wrong_bias_is_caught_by_the_comparison():
    """The reference comparison above can fail: a readout bias the event path forgot changes the logits."""
    x = _input()
    ours, reference = _stack("localzo"), _stack("localzo", backend="torch")
    with torch.no_grad():
        reference.layers[-1].bias.add_(1e-3)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["sparsegrad", "localzo", "surrogate"])
def test_the_snn_is_the_same_code_as_sequential(method):
    """``Sequential.from_snn`` shares the SNN's parameters; both run one implementation, so logits
    and gradients agree to the bit (same operations in the same order)."""
    from lzo_bench.core.gates import GateSpec
    from lzo_bench.core.rng import DrawKey
    from lzo_bench.ops.backends import select_backend

    model = SNN(NetworkSpec(20, (30, 20), 5, beta=0.9, beta_out=0.8), torch.Generator().manual_seed(0))
    rule = {"sparsegrad": spike.SparseGrad(delta=0.3), "localzo": spike.LocalZO(delta=0.3, m=2, seed=7),
            "surrogate": spike.Surrogate(delta=0.3)}[method]
    net = nn.Sequential.from_snn(model, rule)
    x = _input(40, 5)
    out = model(x, GateSpec.build(method, "normal", delta=0.3, samples=rule.samples), DrawKey(7, 0),
                select_backend("cpp"))
    out.logits.sum().backward()
    want = [w.grad.clone() for w in model.weights]
    model.zero_grad()
    got = net(x)
    got.sum().backward()
    assert rule.counter == 1
    assert torch.equal(got, out.logits)
    assert all(torch.equal(w.grad, g) for w, g in zip(model.weights, want))


def test_inputs_dense_float_bool_uint8_and_events_give_the_same_logits():
    net = _stack("localzo").eval()
    x = (torch.rand(30, 4, 20, generator=torch.Generator().manual_seed(3)) < 0.3)
    want = net(x.float())
    for variant in (x, x.to(torch.uint8), SpikeEvents.from_keys(
            (x.transpose(0, 1).reshape(-1, 20).nonzero() * torch.tensor([20, 1])).sum(1), 30, 4, 20)):
        torch.testing.assert_close(net(variant), want, rtol=0, atol=0)


def test_counters_advance_once_per_training_forward_only():
    rule = spike.LocalZO(delta=0.3, seed=1)
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.LIF(20, 10, rule=rule, generator=g), nn.LIF(10, 10, rule=rule, generator=g),
                        nn.LeakyReadout(10, 3, generator=g))
    x = _input(20, 2)
    net(x)
    assert rule.counter == 1  # one rule shared by two layers: one key, two layer indices
    with torch.no_grad():
        net(x)
    net.eval()
    net(x)
    assert rule.counter == 1


def test_a_custom_surrogate_rule_runs_the_reference_and_trains():
    import math

    import numpy as np

    from lzo_bench.core import surrogates

    g = surrogates.custom("cauchy", lambda u: 1.0 / (math.pi * 0.3 * (1.0 + (u / 0.3) ** 2)),
                          lambda u: -2.0 * u / (math.pi * 0.3**3 * (1.0 + (u / 0.3) ** 2) ** 2))
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.LIF(20, 16, rule=spike.LocalZO(delta=0.3, dist=g), generator=gen),
                        nn.LeakyReadout(16, 3, generator=gen))
    net(_input(30, 3)).sum().backward()
    assert next(iter(net._backends.values())).name == "torch"
    assert net.layers[0].weight.grad.abs().sum() > 0
    assert np.isfinite(net.layers[0].weight.grad.numpy()).all()


def test_bad_stacks_are_refused_with_the_reason():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="followed by one nn.LeakyReadout"):
        nn.Sequential(nn.LIF(4, 3, generator=g), nn.LIF(3, 2, generator=g))
    with pytest.raises(ValueError, match="do not chain: 3 outputs feed 5 inputs"):
        nn.Sequential(nn.LIF(4, 3, generator=g), nn.LeakyReadout(5, 2, generator=g))
    with pytest.raises(ValueError, match="beta must lie in"):
        nn.LIF(4, 3, beta=1.5)
    mixed = nn.Sequential(nn.LIF(20, 8, rule=spike.Surrogate(), generator=g),
                          nn.LIF(8, 8, rule=spike.LocalZO(), generator=g), nn.LeakyReadout(8, 2, generator=g))
    with pytest.raises(ValueError, match="all sparse .* or all dense"):
        mixed(_input(10, 2))
    with pytest.raises(ValueError, match=r"shape \[T, B, n\]"):
        mixed(torch.zeros(3, 20))


def test_sequential_pickles_with_its_rules_and_weights():
    net = _stack("localzo")
    net(_input(20, 2))
    twin = pickle.loads(pickle.dumps(net))
    assert twin.layers[0].rule.counter == 1 and twin.layers[2].theta == 0.7
    x = _input(20, 2)
    torch.testing.assert_close(twin.eval()(x), net.eval()(x), rtol=0, atol=0)


def test_a_lone_lif_is_a_dense_layer_with_the_rule_as_spike_function():
    """Outside Sequential, an nn.LIF drops into any model: spikes equal the reference layer's, and its
    weight gradient equals autograd through the reference potentials with the rule's gate."""
    from lzo_bench.core.lif import lif_membrane

    gen = torch.Generator().manual_seed(0)
    layer = nn.LIF(20, 12, beta=0.8, rule=spike.Surrogate(delta=0.3), bias=True, generator=gen)
    x = _input(30, 3)
    s = layer(x)
    s.sum().backward()
    w = layer.weight.detach().clone().requires_grad_()
    v = lif_membrane(x @ w + layer.bias.detach(), 0.8, 1.0) - 1.0
    (v * spike.Surrogate(delta=0.3).gate(v.detach())).sum().backward()
    assert torch.equal(s, (v.detach() > 0).float())
    torch.testing.assert_close(layer.weight.grad, w.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("rule", RULES)
def test_on_cuda_the_stack_equals_the_reference(rule):
    """nn.Sequential on the CUDA event ops (biases, per-layer β) against the CPU reference."""
    x = _input()
    ours, reference = _stack(rule).cuda(), _stack(rule, backend="torch")
    a, ga = _run(ours, x.cuda())
    b, gb = _run(reference, x)
    assert next(iter(ours._backends.values())).name == "cuda"
    for s, t in zip(a.spikes, b.spikes):
        assert torch.equal(s.cpu(), t)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-5, atol=1e-5 * float(q.abs().max()))
