"""Theorem 3 (surrogate → sampling distribution), its inverse-CDF table, and invalid surrogates."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from lzo_bench.core.distributions import DISTRIBUTIONS
from lzo_bench.core.gates import GateSpec, Method, localzo_gate, resolve_distribution
from lzo_bench.core.rng import DrawKey, draw_uniform
from lzo_bench.core.surrogates import InvalidSurrogate, Surrogate, custom, fast_sigmoid, sigmoid
from lzo_bench.core.theory import expected_max_abs, sigmoid_a, surrogate_constant, theorem3_distribution

DELTA = 0.05


def triangle(w: float) -> Surrogate:
    """A user surrogate: g(u) = max(0, 1 − |u|/w)/w, ∫g = 1; λ(z) ∝ z on [0, w/δ] with α = −1."""
    return custom("triangle", lambda u: np.maximum(0.0, 1.0 - np.abs(u) / w) / w)


def mc_surrogate(spec: GateSpec, u: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = localzo_gate(u.expand(1, n, -1).contiguous(), spec, DrawKey(5, 0), 0)[0].double()
    return g.mean(0), g.std(0) / math.sqrt(n)


@pytest.mark.parametrize("surrogate,alpha", [
    (sigmoid(sigmoid_a() / DELTA), 1),
    (sigmoid(60.0), 1),
    (fast_sigmoid(100.0), -1),
    (triangle(0.1), -1),
])
def test_round_trip_g_to_lambda_to_monte_carlo(surrogate, alpha):
    """c·M·E[G²] = g(u) − g(δ·z_max) for |u| < δ·z_max (theorem3_distribution's docstring).

    Tolerance: 5 standard errors of the mean at each u, plus 1e-3 of the peak for the 2⁻²³
    quantisation and table interpolation; the truncation constant is subtracted exactly.
    """
    dist = theorem3_distribution(surrogate, DELTA, alpha)
    spec = GateSpec(Method.LOCALZO, dist, DELTA, 1, 1.0)
    u = torch.linspace(-0.15, 0.15, 31)
    mean, se = mc_surrogate(spec, u, 60_000)
    g = torch.from_numpy(surrogate(u.double().numpy()))
    target = g - float(surrogate(np.array([DELTA * dist.z_max]))[0])
    assert ((mean - target).abs() <= 5 * se + 1e-3 * float(g.max())).all()
    # and the truncation constant itself is small: the table reproduces g to < 0.1 % of its peak
    assert float(surrogate(np.array([DELTA * dist.z_max]))[0]) < 1e-3 * float(g.max())


def test_constants_match_the_paper():
    # sigmoid: c = δ²k²/a² (eq. 18); fast-sigmoid with α = −1: c = 2/k (§4.6.2); triangle: c = ∫g = 1
    a = sigmoid_a()
    assert surrogate_constant(sigmoid(30.0), DELTA, 1) == pytest.approx(DELTA**2 * 30.0**2 / a**2, rel=1e-7)
    assert surrogate_constant(fast_sigmoid(100.0), DELTA, -1) == pytest.approx(2 / 100.0, rel=1e-7)
    assert surrogate_constant(triangle(0.1), DELTA, -1) == pytest.approx(1.0, rel=1e-5)
    assert 1 / a**2 == pytest.approx(0.4262, abs=1e-4)


def test_sigmoid_expected_abs_z_is_a_over_two():
    assert sigmoid_a() / 2 == pytest.approx(0.766, abs=5e-4)
    table = resolve_distribution("sigmoid", DELTA)
    assert expected_max_abs(table, 1) == pytest.approx(sigmoid_a() / 2, abs=1e-5)


@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_theorem3_of_an_expected_surrogate_gives_back_its_distribution(name):
    """Eqs. 10 and 12 fed to Theorem 3 must return the normal / Laplace density (c = 1)."""
    dist = DISTRIBUTIONS[name]
    g = custom(name, lambda u: dist.expected_surrogate(torch.from_numpy(np.asarray(u)), DELTA).numpy())
    table = theorem3_distribution(g, DELTA, 1)
    assert table.c == pytest.approx(1.0, rel=1e-4)
    z = np.linspace(0.05, 4.0, 50)
    np.testing.assert_allclose(table.abs_pdf(z), dist.abs_pdf(z), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("name,k,alpha", [("sigmoid", 30.63, 1), ("fast-sigmoid", 100.0, -1)])
def test_table_samples_follow_target_cdf(name, k, alpha):
    """Kolmogorov–Smirnov distance of 100 000 production draws against the truncated λ's CDF,
    computed independently by quadrature. 1.95/√n is the 0.1 % critical value; +1e-3 allows for
    the 2¹⁴-quantile table."""
    dist = resolve_distribution(name, DELTA, k)
    s = dist.surrogate
    n = 100_000
    idx = torch.arange(n, dtype=torch.int64)
    zero = torch.zeros_like(idx)
    z = np.sort(dist.abs_icdf(draw_uniform(DrawKey(2, 9), 1, zero, zero, idx, 0)).double().numpy())
    p = lambda x: -(x ** (-alpha)) * float(s.derivative(np.array([x * DELTA]))[0])  # noqa: E731
    total = integrate.quad(p, 0, dist.z_max, limit=400)[0]
    probe = np.quantile(z, np.linspace(0.001, 0.999, 300))
    cdf = np.array([integrate.quad(p, 0, x, limit=400)[0] / total for x in probe])
    ecdf = np.searchsorted(z, probe, side="right") / n
    assert np.max(np.abs(ecdf - cdf)) < 1.95 / math.sqrt(n) + 1e-3


@pytest.mark.parametrize("g,alpha,match", [
    (custom("negative", lambda u: np.exp(-u * u) - 0.5), 1, "is negative at"),
    (custom("shifted", lambda u: np.exp(-(u - 0.01) ** 2 / 0.001)), 1, "is not even"),
    (custom("bimodal", lambda u: np.exp(-((np.abs(u) - 0.1) ** 2) / 0.001)), 1, "increases on u > 0"),
    (custom("heavy", lambda u: 1.0 / (1.0 + np.abs(u))), -1, "not integrable"),
    (fast_sigmoid(100.0), 1, r"diverges at z → 0 .* α = 1; try α = −1"),
    (sigmoid(30.0), 0, "α must be a non-zero integer"),
])
def test_invalid_surrogates_are_refused_with_the_reason(g, alpha, match):
    with pytest.raises(InvalidSurrogate, match=match):
        theorem3_distribution(g, DELTA, alpha)


def test_table_distribution_refuses_another_delta():
    table = resolve_distribution("sigmoid", DELTA)
    with pytest.raises(ValueError, match="built for δ = 0.05"):
        table.expected_surrogate(torch.zeros(3), 0.1)


def test_k_only_for_surrogate_distributions():
    with pytest.raises(ValueError, match="k applies to sigmoid and fast-sigmoid only"):
        resolve_distribution("normal", DELTA, 3.0)
    assert resolve_distribution("sigmoid", DELTA).c == pytest.approx(1.0, rel=1e-6)
