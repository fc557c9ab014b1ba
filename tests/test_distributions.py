"""Inverse CDFs and closed-form expected surrogates against independent references."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from lzo_bench.core.distributions import DISTRIBUTIONS, U_MAX, erfinv_f32, get_distribution

SCIPY = {
    "normal": stats.norm(),
    "uniform": stats.uniform(-math.sqrt(3), 2 * math.sqrt(3)),
    "laplace": stats.laplace(scale=1 / math.sqrt(2)),
}


def test_erfinv_matches_torch_float64():
    x = torch.linspace(-0.9999999, 0.9999999, 200_001)
    ref = torch.erfinv(x.double())
    rel = ((erfinv_f32(x).double() - ref).abs() / ref.abs().clamp_min(1e-30))
    assert rel.max() < 1e-6


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_abs_icdf_inverts_scipy_cdf(name):
    dist = DISTRIBUTIONS[name]
    u = torch.linspace(1e-4, 1 - 1e-4, 999, dtype=torch.float32)
    z = dist.abs_icdf(u).double().numpy()
    # |z| has CDF 2F(z) - 1 for an even distribution
    back = 2 * SCIPY[name].cdf(z) - 1
    np.testing.assert_allclose(back, u.double().numpy(), atol=2e-6)
    np.testing.assert_allclose(dist.abs_cdf(z), back, atol=1e-12)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_unit_variance(name):
    assert SCIPY[name].var() == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("delta", [0.05, 0.5, 1.0])
def test_expected_surrogate_equals_eq9_integral(name, delta):
    """E[G²(v)] = (1/δ)∫_{|v|/δ}^∞ z λ(z) dz (eq. 9), by quadrature on scipy's density."""
    dist = DISTRIBUTIONS[name]
    pdf = SCIPY[name].pdf
    top = math.sqrt(3) if name == "uniform" else math.inf
    for v in np.linspace(-3 * delta, 3 * delta, 13):
        lo = abs(v) / delta
        ref = 0.0 if lo >= top else integrate.quad(lambda z: z * pdf(z), lo, top)[0] / delta
        got = float(dist.expected_surrogate(torch.tensor(v, dtype=torch.float64), delta))
        assert got == pytest.approx(ref, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_expected_surrogate_integrates_to_one(name):
    dist = DISTRIBUTIONS[name]
    delta = 0.3
    total = integrate.quad(
        lambda v: float(dist.expected_surrogate(torch.tensor(v, dtype=torch.float64), delta)), -10, 10,
        points=[0.0], limit=200,
    )[0]
    assert total == pytest.approx(1.0, abs=1e-6)


def test_max_abs_is_the_largest_draw():
    for dist in DISTRIBUTIONS.values():
        u = torch.tensor([0.5, U_MAX], dtype=torch.float32)
        assert float(dist.abs_icdf(u).max()) == dist.max_abs


def test_unknown_distribution_lists_choices():
    with pytest.raises(ValueError, match="normal, uniform, laplace"):
        get_distribution("cauchy")
