"""The three gates: Monte-Carlo mean of LocalZO, SparseGrad's band, reproducibility."""

import math

import pytest
import torch

from lzo_bench.core.distributions import DISTRIBUTIONS
from lzo_bench.core.gates import GateSpec, Method, gate_values, localzo_gate
from lzo_bench.core.rng import DrawKey
from lzo_bench.core.theory import expected_threshold


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("m", [1, 3])
def test_localzo_mean_matches_expected_surrogate(name, m):
    """E over draws of the LocalZO gate = closed-form surrogate (eqs. 10–12).

    Tolerance: 5 standard errors of the mean of the n draws at each v (+1e-3 for the
    2⁻²³ quantisation of the uniforms), so a false failure has probability < 1e-5 per point.
    """
    spec = GateSpec.build(Method.LOCALZO, name, delta=0.1, samples=m)
    grid = torch.linspace(-0.35, 0.35, 29)
    n = 40_000
    v = grid.expand(1, n, -1).contiguous()  # [T=1, B=n, N=29]: one fresh draw per row
    g = localzo_gate(v, spec, DrawKey(3, 0), layer=0)[0]
    mean, se = g.mean(0), g.std(0) / math.sqrt(n)
    target = spec.dist.expected_surrogate(grid, spec.delta)
    assert ((mean - target).abs() <= 5 * se + 1e-3).all(), (mean, target)


def test_localzo_gate_is_zero_outside_its_random_band():
    spec = GateSpec.build(Method.LOCALZO, "normal", delta=0.05)
    v = torch.randn(6, 50, 40, generator=torch.Generator().manual_seed(0)) * 0.3
    g = localzo_gate(v, spec, DrawKey(0, 0), 0)
    assert (g[v.abs() >= spec.band()] == 0).all()
    # single-sample gate takes values |z|/(2δ) with |v| < δ|z|, i.e. g > |v|/(2δ²)
    nz = g != 0
    assert (g[nz] > v.abs()[nz] / (2 * spec.delta**2)).all()
    assert 0 < nz.float().mean() < 0.5


def test_sparsegrad_is_surrogate_inside_band_and_exactly_zero_outside():
    spec = GateSpec.build(Method.SPARSEGRAD, "laplace", delta=0.05)
    assert spec.bth == pytest.approx(0.05 / math.sqrt(2), rel=1e-9)
    v = torch.linspace(-0.2, 0.2, 4001).view(1, 1, -1)
    g = gate_values(v, spec, DrawKey(0, 0), 0)
    inside = v.abs() < spec.bth
    assert (g[~inside] == 0).all()
    torch.testing.assert_close(g[inside], spec.dist.expected_surrogate(v[inside], 0.05))


def test_surrogate_is_dense_expected_surrogate():
    spec = GateSpec.build(Method.SURROGATE, "uniform", delta=0.5)
    v = torch.linspace(-1, 1, 101).view(1, 1, -1)
    torch.testing.assert_close(gate_values(v, spec, DrawKey(0, 0), 0), spec.dist.expected_surrogate(v, 0.5))


def test_same_key_same_gate_other_key_other_gate():
    spec = GateSpec.build(Method.LOCALZO, "uniform", delta=0.2, samples=2)
    v = torch.randn(5, 8, 30, generator=torch.Generator().manual_seed(1)) * 0.2
    a = localzo_gate(v, spec, DrawKey(7, 4), 1)
    assert torch.equal(a, localzo_gate(v, spec, DrawKey(7, 4), 1))
    assert not torch.equal(a, localzo_gate(v, spec, DrawKey(8, 4), 1))
    assert not torch.equal(a, localzo_gate(v, spec, DrawKey(7, 5), 1))
    assert not torch.equal(a, localzo_gate(v, spec, DrawKey(7, 4), 0))


def test_default_bth_is_expected_threshold():
    for m in (1, 5):
        spec = GateSpec.build("sparsegrad", "normal", delta=0.05, samples=m)
        assert spec.bth == expected_threshold(DISTRIBUTIONS["normal"], m, 0.05)


@pytest.mark.parametrize("kwargs,match", [
    ({"delta": 0.0}, "delta"), ({"delta": -1.0}, "delta"), ({"samples": 0}, "samples"),
    ({"bth": 0.0}, "bth"), ({"dist": "cauchy"}, "normal, uniform, laplace"),
])
def test_bad_gate_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateSpec.build("localzo", **kwargs)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="surrogate"):
        GateSpec.build("magic")
