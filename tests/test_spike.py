"""lzo_bench.spike: the rules as spike functions for any model (snnTorch, SpikingJelly, plain PyTorch)."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lzo_bench import spike
from lzo_bench.core import surrogates
from lzo_bench.core.distributions import TableDistribution
from lzo_bench.core.gates import localzo_gate
from lzo_bench.core.rng import DrawKey, draw_uniform

DISTS = ("normal", "uniform", "laplace", "sigmoid", "fast-sigmoid")
DELTA = 0.05


def _grad(fn: spike.SpikeFunction, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    fn(x).sum().backward()
    return x.grad


def _expected(fn: spike.SpikeFunction, v: torch.Tensor) -> torch.Tensor:
    """``E[γ(v)]`` in float64: ``g`` of the distribution; for a Theorem-3 table, ``g − g(δ·z_max)``
    inside the support (what the truncated table reproduces, ``theorem3_distribution``)."""
    dist = fn.spec.dist
    if isinstance(dist, TableDistribution):
        tail = float(dist.surrogate(np.array([DELTA * dist.z_max]))[0])
        inside = v.abs() < DELTA * dist.z_max
        return torch.where(inside, dist.surrogate.torch(v.double()) - tail, torch.zeros_like(v.double()))
    return dist.expected_surrogate(v.double(), DELTA)


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("dist", DISTS)
def test_localzo_gradient_is_unbiased_for_the_expected_surrogate(dist, m):
    """The mean LocalZO gradient over 40 000 / m independent draws per potential (one tensor: every
    element its own Philox counter) lies within 5 standard errors of ``E[γ] = g`` (Theorem 3) on a
    grid across the band; the same means are refused against a gate 10 % off (a wrong constant ``c``)."""
    fn = spike.LocalZO(delta=DELTA, dist=dist, m=m, seed=11)
    v = torch.linspace(-3 * DELTA, 3 * DELTA, 13)
    reps = 40_000 // m
    g = _grad(fn, v[None, :].repeat(reps, 1)).double()
    mean, se = g.mean(0), g.std(0) / math.sqrt(reps)
    want = _expected(fn, v)
    assert ((mean - want).abs() <= 5 * se + 1e-9).all(), ((mean - want) / se).abs().max()
    assert ((mean - 0.9 * want).abs() > 5 * se).any()


def test_localzo_at_given_draws_is_the_gates_code_and_the_formula():
    """At key ``(seed, counter)`` the gradient is exactly lzo_bench.core.gates' LocalZO gate of the same
    elements (element ``i`` at counter word ``j = i``), and equals eqs. 7–8 evaluated in float64 from
    the Philox uniforms."""
    fn = spike.LocalZO(delta=0.1, dist="laplace", m=3, seed=5)
    fn.reset(counter=42)
    x = torch.randn(7, 4, 9, generator=torch.Generator().manual_seed(0)) * 0.2
    got = _grad(fn, x)
    assert fn.counter == 43
    spec = fn.spec
    ref = localzo_gate(x.reshape(1, 1, -1), spec, DrawKey(5, 42), 0).reshape(x.shape)
    assert torch.equal(got, ref)
    j = torch.arange(x.numel())
    zero = torch.zeros_like(j)
    z = [spec.dist.abs_icdf(draw_uniform(DrawKey(5, 42), 0, zero, zero, j, k)).double() for k in range(3)]
    v = x.reshape(-1).double().abs()
    formula = sum(torch.where(v < 0.1 * zk, zk / 0.2, 0.0) for zk in z) / 3
    torch.testing.assert_close(got.reshape(-1).double(), formula, rtol=1e-6, atol=1e-6)
    assert 0 < int((got != 0).sum()) < x.numel()


@pytest.mark.parametrize("rule", [spike.Surrogate, spike.SparseGrad])
def test_dense_rules_give_the_expected_surrogate(rule):
    fn = rule("normal", delta=0.2)
    x = torch.linspace(-1, 1, 41)
    g = _grad(fn, x)
    want = torch.exp(-x**2 / (2 * 0.2**2)) / (0.2 * math.sqrt(2 * math.pi))
    if rule is spike.SparseGrad:
        want = torch.where(x.abs() < fn.spec.bth, want, 0.0)
        assert fn.spec.bth == pytest.approx(0.2 * math.sqrt(2 / math.pi), rel=1e-6)  # δ·E|z|, m = 1
    torch.testing.assert_close(g, want)


def test_a_custom_surrogate_through_theorem3_is_unbiased():
    """A user's ``g`` (here the Cauchy ``1 / (π·a·(1 + (u/a)²))``) as LocalZO through Theorem 3."""
    a = DELTA
    g = surrogates.custom("cauchy", lambda u: 1.0 / (math.pi * a * (1.0 + (u / a) ** 2)),
                          lambda u: -2.0 * u / (math.pi * a**3 * (1.0 + (u / a) ** 2) ** 2))
    fn = spike.LocalZO(delta=DELTA, dist=g, m=2, seed=3)
    v = torch.linspace(-1.5 * a, 1.5 * a, 11)
    reps = 20_000
    grads = _grad(fn, v[None, :].repeat(reps, 1)).double()
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(reps)
    want = _expected(fn, v)
    assert ((mean - want).abs() <= 5 * se + 1e-3 / a).all()  # + the table's interpolation error
    assert ((mean - 0.9 * want).abs() > 5 * se).any()


def test_forward_is_heaviside_in_the_input_dtype_for_any_shape():
    fn = spike.LocalZO()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.tensor([[-0.5, 0.0], [1e-3, 2.0]], dtype=dtype)
        s = fn(x)
        assert s.dtype == dtype and s.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="delta must be > 0"):
        spike.LocalZO(delta=0)


def test_a_conv_feature_map_trains_through_localzo():
    """A 4-D conv output ``[B, C, H, W]``: the gradient reaches the conv weights only through elements
    inside the band ``|u − θ| < δ·max|z|``, equal to autograd with the gate applied by hand."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, generator=gen)
    w = (torch.randn(4, 1, 3, 3, generator=gen) * 0.5).requires_grad_()
    fn = spike.LocalZO(delta=0.1, seed=9)
    v = F.conv2d(x, w, padding=1) - 1.0
    fn(v).sum().backward()
    fn.reset()
    gate = fn.gate(v.detach())
    assert gate.shape == v.shape and 0 < int((gate != 0).sum()) < gate.numel()
    assert bool((gate[v.detach().abs() >= fn.spec.band()] == 0).all())
    w2 = w.detach().clone().requires_grad_()
    (F.conv2d(x, w2, padding=1) * gate).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_pickle_and_deepcopy_round_trip_and_continue_the_draws():
    fn = spike.LocalZO(delta=0.1, dist="sigmoid", m=2, seed=123)
    x = torch.randn(50) * 0.1
    _grad(fn, x)
    for twin in (pickle.loads(pickle.dumps(fn)), copy.deepcopy(fn)):
        assert (twin.seed, twin.counter, twin.samples) == (123, 1, 2)
        assert torch.equal(_grad(twin, x), _grad(copy.deepcopy(fn), x))
    assert not torch.equal(_grad(fn, x), _grad(fn, x))  # the counter moves: fresh draws per call
    assert pickle.loads(pickle.dumps(spike.SparseGrad("fast-sigmoid", bth=0.03))).spec.bth == 0.03


def test_the_counter_does_not_advance_in_snntorchs_detached_reset_call():
    """snnTorch calls ``spike_grad`` in ``fire()`` and again in ``mem_reset()`` (detached): only the
    T back-propagated calls draw."""
    snn = pytest.importorskip("snntorch")
    fn = spike.LocalZO(delta=0.3, seed=1)
    lif = snn.Leaky(beta=0.9, spike_grad=fn)
    x = torch.rand(12, 3, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    mem = lif.reset_mem()
    out = []
    for x_t in x:
        s, mem = lif(2 * x_t, mem)
        out.append(s)
    assert fn.counter == 0
    torch.stack(out).sum().backward()
    assert fn.counter == 12 and x.grad.abs().sum() > 0


def test_snntorch_leaky_with_localzo_spikes_as_the_snn():
    """The paper's 2 × 200 network in snnTorch (``Leaky(spike_grad=spike.LocalZO())``, subtractive
    reset delayed by one step) gives the spikes of lzo-bench's SNN from the same weights and input.
    The currents are summed in another order (a dense matmul against the event ops), so the runs
    may part only at a spike whose potential is within float rounding of θ: the earliest differing
    step, if any, must be such a step (after it, a flip propagates through reset and layer 2)."""
    snn = pytest.importorskip("snntorch")
    from lzo_bench.core.model import SNN, NetworkSpec
    from lzo_bench.ops.backends import select_backend

    model = SNN(NetworkSpec(64, (200, 200), 10, beta=0.9, beta_out=0.9), torch.Generator().manual_seed(0))
    x = (torch.rand(40, 16, 64, generator=torch.Generator().manual_seed(1)) < 0.15).float()
    ours = model(x, backend=select_backend("cpp"))
    w1, w2, _ = (w.detach() for w in model.weights)
    lifs = [snn.Leaky(beta=0.9, threshold=1.0, spike_grad=spike.LocalZO(), reset_mechanism="subtract",
                      reset_delay=True) for _ in range(2)]
    mems = [lif.reset_mem() for lif in lifs]
    spikes: list[list[torch.Tensor]] = [[], []]
    potentials: list[list[torch.Tensor]] = [[], []]
    for x_t in x:
        h = x_t
        for i, (lif, w) in enumerate(zip(lifs, (w1, w2))):
            h, mems[i] = lif(h @ w, mems[i])
            spikes[i].append(h)
            potentials[i].append(mems[i])
    got = [torch.stack(s) for s in spikes]
    u = [torch.stack(p) for p in potentials]
    assert all(g.sum() > 100 for g in got)
    flips = [(g != w).nonzero() for g, w in zip(got, ours.spikes)]
    first = min((int(f[:, 0].min()) for f in flips if len(f)), default=None)
    for layer, f in enumerate(flips):
        early = f[f[:, 0] == first] if first is not None else f[:0]
        for t, b, j in early.tolist():
            assert abs(float(u[layer][t, b, j]) - 1.0) < 1e-4, (layer, t, b, j)
        if first is not None:
            assert bool((f[:, 0] >= first).all())


def test_spikingjelly_lif_node_trains_through_localzo_in_its_torch_path():
    sj = pytest.importorskip("spikingjelly.activation_based.neuron")
    from spikingjelly.activation_based import functional

    fn = spike.LocalZO(delta=0.3, seed=4)
    node = sj.LIFNode(tau=2.0, surrogate_function=fn, detach_reset=True, step_mode="m", v_reset=None)
    x = (torch.rand(10, 4, 6, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    s = node(x)
    assert s.shape == x.shape and set(s.unique().tolist()) <= {0.0, 1.0}
    s.sum().backward()
    assert fn.counter == 10 and x.grad.abs().sum() > 0
    functional.reset_net(node)
    with pytest.raises(NotImplementedError, match="torch backend"):
        fn.cuda_codes("x", "y", "float")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by benchmarks/gpu_check.sh)")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("dist", ["normal", "sigmoid"])
def test_on_cuda_the_gradient_is_the_cpus(dist):
    """The draws are a function of (seed, counter, index) only: a CUDA tensor gets the CPU's gates
    (to the float rounding of the inverse CDF on another device)."""
    fn = spike.LocalZO(delta=0.1, dist=dist, m=2, seed=8)
    x = torch.randn(3, 5, 17, 17, generator=torch.Generator().manual_seed(0)) * 0.2
    cpu = _grad(fn, x)
    fn.reset()
    gpu = _grad(fn, x.cuda())
    assert gpu.device.type == "cuda" and torch.equal(cpu == 0, gpu.cpu() == 0)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


# ---- issue 34: no argument ignored or truncated, one-line refusals ----

def test_alpha_with_a_named_distribution_is_refused_not_ignored():
    """alpha=5 with ``normal`` ran as alpha = 1: α belongs to a custom surrogate g (Theorem 3)."""
    with pytest.raises(ValueError, match="alpha applies to a custom surrogate g only"):
        spike.LocalZO(alpha=5)
    with pytest.raises(ValueError, match="alpha applies to a custom surrogate g only"):
        spike.Surrogate("laplace", alpha=-1)
    assert spike.LocalZO(dist="fast-sigmoid").spec.dist.alpha == -1  # the named distribution's own α
    assert spike.LocalZO(dist="normal", alpha=1).spec.dist.alpha == 1  # the same α: nothing ignored


@pytest.mark.parametrize("make,error,match", [
    (lambda: spike.LocalZO(m=2.9), TypeError, "m must be an integer, got 2.9; it would be truncated to 2"),
    (lambda: spike.LocalZO(m=True), TypeError, "m must be an integer"),
    (lambda: spike.LocalZO(seed=1.5), TypeError, "seed must be an integer"),
    (lambda: spike.LocalZO(m=0), ValueError, "m must be ≥ 1"),
    (lambda: spike.LocalZO(m=65536), ValueError, r"m must lie in \[1, 65535\] \(the kernels' limit\)"),
    (lambda: spike.LocalZO(dist=None), TypeError, "dist must be a distribution name"),
    (lambda: spike.LocalZO(alpha=1.5), TypeError, "alpha must be an integer"),
])
def test_bad_spike_function_arguments_are_refused_in_one_line(make, error, match):
    with pytest.raises(error, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_integral_numpy_integers_are_taken():
    assert spike.LocalZO(m=np.int64(3)).m == 3 and spike.LocalZO(seed=np.int32(4)).seed == 4
    assert spike.LocalZO(m=2.0).m == 2  # an integral float is its integer
