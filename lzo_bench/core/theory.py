"""The paper's theory, computed rather than tabulated (§4, appendix A).

Expected back-propagation threshold of LocalZO with ``m`` samples: a neuron is inactive when
``|v| > δ·t`` with ``t = max_k |z_k|``. With ``F_t = F_{|z|}^m`` (eq. 15),

    B̃_th = δ·E[t] = δ ∫_0^∞ t·λ̂(t) dt = δ ∫_0^∞ (1 − F_{|z|}(x)^m) dx      (eqs. 16–17)

(the last form by integrating by parts).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
from scipy import integrate

from lzo_bench.core.distributions import Distribution, TableDistribution
from lzo_bench.core.surrogates import InvalidSurrogate, Surrogate, sigmoid, validate


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


# ---------------------------------------------------------------------------------------------
# Expected surrogate of any distribution (eq. 9) and Theorem 3 (surrogate → distribution)
# ---------------------------------------------------------------------------------------------

#: Defaults of the inverse-CDF construction (§4.6.3): support [−10, 10] as in the paper's §5.2,
#: 2¹⁸ Riemann cells for the CDF, 2¹⁴ + 1 table entries on the regular grid of [0, 1].
Z_MAX = 10.0
CDF_CELLS = 1 << 18
TABLE_SIZE = (1 << 14) + 1


def expected_surrogate_numeric(dist: Distribution, u: np.ndarray, delta: float, power: int = 1) -> np.ndarray:
    """``c·E_z[G²(u; z, δ)] = (c/δ)∫_{|u|/δ}^∞ z^α λ(z) dz`` (eq. 9), by quadrature.

    With ``p = abs_pdf`` the density of ``|z|`` (``= 2λ``), this is ``(c/2δ)∫ z^α p(z) dz``: the
    mean of the sampled gate ``(c/2δ)·|z|^α·1[|u| < δ|z|]``. ``power = 2`` gives that gate's second
    moment ``(c/2δ)²∫ z^{2α} p(z) dz``, for its variance.
    """
    out = []
    warnings.simplefilter("ignore", integrate.IntegrationWarning)
    for ui in np.atleast_1d(np.asarray(u, dtype=np.float64)):
        lo = abs(ui) / delta
        if lo >= dist.support:
            out.append(0.0)
            continue
        val, _ = integrate.quad(lambda z: z**(power * dist.alpha) * dist.abs_pdf(z), lo, dist.support, limit=400)
        out.append((dist.scale / (2.0 * delta)) ** power * val)
    return np.array(out)


def _integral_0_inf(f: Callable[[float], float]) -> tuple[float, str | None]:
    """``∫_0^∞ f`` over decades ``[10^i, 10^{i+1}]``, ``i = −9…8``; names the end where it diverges.

    A convergent integrand leaves a negligible share (< 1e-6) in the innermost and outermost
    decades; a divergent one (like ``1/z`` at either end) does not.
    """
    edges = [0.0] + [10.0**i for i in range(-9, 10)]
    warnings.simplefilter("ignore", integrate.IntegrationWarning)
    parts = [integrate.quad(f, a, b, limit=200)[0] for a, b in zip(edges[:-1], edges[1:])]
    total = float(sum(parts))
    if not math.isfinite(total):
        return total, "somewhere"
    scale = max(abs(total), 1e-300)
    if abs(parts[1]) > 1e-6 * scale:
        return total, "z → 0"
    if abs(parts[-1]) > 1e-6 * scale:
        return total, "z → ∞"
    return total, None


def surrogate_constant(s: Surrogate, delta: float, alpha: int) -> float:
    """``c = −2δ² ∫_0^∞ z^{−α} g′(zδ) dz`` (Theorem 3); :class:`InvalidSurrogate` if not finite and > 0."""
    if alpha == 0 or alpha != int(alpha):
        raise InvalidSurrogate(f"α must be a non-zero integer (eq. 8), got {alpha}")
    area, where = _integral_0_inf(lambda x: float(s(np.array([x]))[0]))
    if where:
        raise InvalidSurrogate(f"{s.describe()} is not integrable: ∫g diverges as u → ∞ (Definition 4.1 needs ∫g < ∞)")
    integral, where = _integral_0_inf(lambda z: -(z ** (-alpha)) * float(s.derivative(np.array([z * delta]))[0]))
    c = 2.0 * delta * delta * integral
    if where:
        other = "; try α = −1" if alpha == 1 else ("; try α = 1" if alpha == -1 else "")
        raise InvalidSurrogate(
            f"c = −2δ²∫ z^(−α) g′(zδ) dz diverges at {where} for {s.describe()} with α = {alpha}{other} (Theorem 3)"
        )
    if not c > 0:
        raise InvalidSurrogate(f"c = {c:.4g} for {s.describe()} with α = {alpha}; Theorem 3 needs 0 < c < ∞")
    return c


def theorem3_distribution(
    s: Surrogate,
    delta: float,
    alpha: int = 1,
    z_max: float = Z_MAX,
    cells: int = CDF_CELLS,
    table_size: int = TABLE_SIZE,
    name: str | None = None,
) -> TableDistribution:
    """The distribution λ whose LocalZO estimate reproduces ``g`` (Theorem 3), as a sampling table.

    ``λ(z) = −δ²/(c z^α)·g′(zδ)``. Restricted to ``|z| ≤ z_max`` it keeps mass ``M``; the table
    samples the renormalised truncated density, so its gate is scaled by ``c·M``, which makes
    ``c·M·E[G²(u)] = g(u) − g(δ·z_max)`` for ``|u| < δ·z_max`` and 0 beyond — ``g`` up to the
    truncation constant ``g(δ·z_max)``. Sampling error from the table: linear interpolation
    between ``table_size`` quantiles (largest where the CDF is steepest) plus the ``z_max/cells``
    Riemann grid; :func:`lzo_bench.core.theory` ``check`` measures the total.
    """
    if not (delta > 0 and math.isfinite(delta)):
        raise ValueError(f"delta must be > 0, got {delta}")
    validate(s, delta * z_max)
    c = surrogate_constant(s, delta, alpha)
    dz = z_max / cells
    mid = (np.arange(cells) + 0.5) * dz
    p = -(mid ** (-alpha)) * s.derivative(mid * delta)  # ∝ λ on (0, z_max]
    if np.any(p < 0):
        raise InvalidSurrogate(f"{s.describe()} gives λ < 0: g increases on u > 0")
    mass_cells = p * dz
    mass = 2.0 * delta * delta * float(mass_cells.sum()) / c
    cdf = np.concatenate([[0.0], np.cumsum(mass_cells)])
    cdf /= cdf[-1]
    z_grid = np.linspace(0.0, z_max, cells + 1)
    targets = np.linspace(0.0, 1.0, table_size)
    j = np.clip(np.searchsorted(cdf, targets, side="left"), 1, cells)
    lo, hi = cdf[j - 1], cdf[j]
    table = z_grid[j - 1] + (targets - lo) / np.maximum(hi - lo, 1e-300) * dz
    table[0] = 0.0
    return TableDistribution(
        name=name or s.name,
        alpha=alpha,
        scale=c * mass,
        table=torch.tensor(table, dtype=torch.float32),
        z_grid=z_grid,
        cdf=cdf,
        z_max=z_max,
        delta=delta,
        surrogate=s,
        c=c,
        mass=mass,
    )


def sigmoid_a() -> float:
    """``a`` of §4.6.1: for the sigmoid surrogate ``c = δ²k²/a²``, so ``a = 1/√c`` at ``k = δ = 1``."""
    return 1.0 / math.sqrt(surrogate_constant(sigmoid(1.0), 1.0, 1))
