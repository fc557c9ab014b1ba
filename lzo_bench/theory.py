"""The paper's theory, computed rather than tabulated (§4.5, appendix A).

Expected back-propagation threshold of LocalZO with ``m`` samples: a neuron is inactive when
``|v| > δ·t`` with ``t = max_k |z_k|``. With ``F_t = F_{|z|}^m`` (eq. 15),

    B̃_th = δ·E[t] = δ ∫_0^∞ t·λ̂(t) dt = δ ∫_0^∞ (1 − F_{|z|}(x)^m) dx      (eqs. 16–17)

(the last form by integrating by parts).
"""

from __future__ import annotations

import math

from scipy import integrate

from lzo_bench.distributions import Distribution


def expected_max_abs(dist: Distribution, samples: int) -> float:
    """``E[max_{k≤m} |z_k|] = ∫_0^∞ (1 − F_{|z|}(x)^m) dx`` by adaptive quadrature."""
    if samples < 1:
        raise ValueError(f"samples m must be ≥ 1, got {samples}")
    upper = dist.support
    value, _err = integrate.quad(
        lambda x: 1.0 - float(dist.abs_cdf(x)) ** samples,
        0.0,
        upper,
        limit=200,
        epsabs=1e-12,
        epsrel=1e-10,
    )
    return value


def expected_threshold(dist: Distribution, samples: int, delta: float) -> float:
    """``B̃_th = δ·E[max_k |z_k|]`` (paper §4.5, Table 1 gives ``B̃_th/δ``)."""
    if not delta > 0 or not math.isfinite(delta):
        raise ValueError(f"delta must be a positive number, got {delta}")
    return delta * expected_max_abs(dist, samples)
