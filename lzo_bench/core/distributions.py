"""Sampling distributions λ of the LocalZO direction ``z`` (paper §4.4) and their surrogates.

Every distribution is even, so LocalZO only ever needs ``|z|``. Each one gives:

* ``abs_icdf(u)`` — the inverse CDF of ``|z|``, turning a uniform ``u ∈ (0, 1)`` from the
  counter-based generator (:mod:`lzo_bench.core.rng`) into ``|z|`` (inverse-transform sampling);
* ``abs_cdf(x)`` — ``F_{|z|}(x) = 2(F_z(x) − F_z(0))`` (paper eq. 14), used for the expected
  back-propagation threshold (:mod:`lzo_bench.core.theory`);
* ``expected_surrogate(v, δ)`` — ``E_z[G²(v; z, δ)]`` in closed form (paper eqs. 10–12); this is
  the surrogate ``g`` that ``surrogate`` and ``sparsegrad`` use for a fair comparison (§5).

All three built-ins have unit variance, ``α = 1`` and scaling constant ``c = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

SQRT2 = math.sqrt(2.0)
SQRT3 = math.sqrt(3.0)

#: The largest uniform the generator emits: ``u = (k + 0.5)·2⁻²³`` for ``k < 2²³`` (see rng.py).
U_MAX = 1.0 - 2.0**-24


def erfinv_f32(x: torch.Tensor) -> torch.Tensor:
    """Inverse error function in float32 (M. Giles, "Approximating the erfinv function", 2010).

    ``w = −ln((1 − x)(1 + x))``; a degree-8 polynomial in ``w − 2.5`` for ``w < 5`` and in
    ``√w − 3`` otherwise, times ``x``. Relative error below 4e-7 on (−1, 1). The same
    polynomial is what the C++/CUDA kernels use, so every backend draws the same ``|z|``.
    """
    x = x.to(torch.float32)
    w = -torch.log((1.0 - x) * (1.0 + x))
    central = w < 5.0
    wc = w - 2.5
    p = torch.full_like(x, 2.81022636e-08)
    for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
              -0.00125372503, -0.00417768164, 0.246640727, 1.50140941):
        p = c + p * wc
    wt = torch.sqrt(w) - 3.0
    q = torch.full_like(x, -0.000200214257)
    for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
              -0.0076224613, 0.00943887047, 1.00167406, 2.83297682):
        q = c + q * wt
    return torch.where(central, p, q) * x


@dataclass(frozen=True)
class Distribution:
    """An even sampling distribution λ for LocalZO's ``z``.

    ``alpha`` is the exponent of eq. 8 (``G² = 1(|u| ≤ δ|z|)·|z|^α / (2δ)``) and ``scale`` the
    constant ``c`` of Theorem 3 (``c·E[G²] = g``); both are 1 for the built-ins.
    """

    name: str
    alpha: int = 1
    scale: float = 1.0

    def abs_icdf(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def abs_cdf(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def abs_pdf(self, x: np.ndarray) -> np.ndarray:
        """Density of ``|z|``, ``2λ(x)`` for ``x ≥ 0``."""
        raise NotImplementedError

    def expected_surrogate(self, v: torch.Tensor, delta: float) -> torch.Tensor:
        raise NotImplementedError

    @property
    def max_abs(self) -> float:
        """Largest ``|z|`` the sampler can return (``abs_icdf(U_MAX)``), in float32."""
        return float(self.abs_icdf(torch.tensor([U_MAX], dtype=torch.float32))[0])

    @property
    def support(self) -> float:
        """End of the support of ``|z|`` (``inf`` for unbounded distributions)."""
        return math.inf


@dataclass(frozen=True)
class Normal(Distribution):
    """``z ~ N(0, 1)``: ``|z| = √2·erfinv(u)``, ``F_{|z|}(x) = erf(x/√2)``.

    Expected surrogate (eq. 10): ``g(v) = exp(−v²/(2δ²)) / (δ√(2π))``.
    """

    name: str = "normal"

    def abs_icdf(self, u: torch.Tensor) -> torch.Tensor:
        return SQRT2 * erfinv_f32(u)

    def abs_cdf(self, x: np.ndarray) -> np.ndarray:
        return special.erf(np.asarray(x) / SQRT2)

    def abs_pdf(self, x: np.ndarray) -> np.ndarray:
        return math.sqrt(2.0 / math.pi) * np.exp(-0.5 * np.asarray(x) ** 2)

    def expected_surrogate(self, v: torch.Tensor, delta: float) -> torch.Tensor:
        return torch.exp(-(v * v) / (2.0 * delta * delta)) / (delta * math.sqrt(2.0 * math.pi))


@dataclass(frozen=True)
class Uniform(Distribution):
    """``z ~ U(−√3, √3)``: ``|z| = √3·u``, ``F_{|z|}(x) = x/√3`` on ``[0, √3]``.

    Expected surrogate (eq. 11): ``g(v) = (3 − v²/δ²) / (4√3·δ)`` for ``|v|/δ < √3``, else 0.
    """

    name: str = "uniform"

    def abs_icdf(self, u: torch.Tensor) -> torch.Tensor:
        return SQRT3 * u.to(torch.float32)

    def abs_cdf(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x) / SQRT3, 0.0, 1.0)

    def abs_pdf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return np.where((x >= 0) & (x <= SQRT3), 1.0 / SQRT3, 0.0)

    def expected_surrogate(self, v: torch.Tensor, delta: float) -> torch.Tensor:
        r2 = (v * v) / (delta * delta)
        return torch.where(r2 < 3.0, (3.0 - r2) / (4.0 * SQRT3 * delta), torch.zeros_like(v))

    @property
    def support(self) -> float:
        return SQRT3


@dataclass(frozen=True)
class Laplace(Distribution):
    """``z ~ Laplace(0, b = 1/√2)``: ``|z| = −ln(1 − u)/√2``, ``F_{|z|}(x) = 1 − exp(−√2·x)``.

    Expected surrogate (eq. 12): ``g(v) = (|v|/δ + 1/√2)·exp(−√2|v|/δ) / (2δ)``.
    """

    name: str = "laplace"

    def abs_icdf(self, u: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-u.to(torch.float32)) / SQRT2

    def abs_cdf(self, x: np.ndarray) -> np.ndarray:
        return 1.0 - np.exp(-SQRT2 * np.clip(np.asarray(x), 0.0, None))

    def abs_pdf(self, x: np.ndarray) -> np.ndarray:
        return SQRT2 * np.exp(-SQRT2 * np.asarray(x))

    def expected_surrogate(self, v: torch.Tensor, delta: float) -> torch.Tensor:
        r = v.abs() / delta
        return (r + 1.0 / SQRT2) * torch.exp(-SQRT2 * r) / (2.0 * delta)


@dataclass(frozen=True, eq=False)
class TableDistribution(Distribution):
    """A distribution given by an inverse-CDF table of ``|z|`` (paper §4.6.3).

    ``table[i] = F⁻¹(i/(n−1))`` on a regular grid of ``[0, 1]``; a uniform ``u`` is mapped by
    linear interpolation between neighbouring entries. ``z_grid``/``cdf`` hold the dense
    Riemann-sum CDF on ``[0, z_max]`` the table was inverted from. Built by
    :func:`lzo_bench.core.theory.theorem3_distribution` for a surrogate at a fixed ``δ``.
    """

    table: torch.Tensor = None  # type: ignore[assignment]
    z_grid: np.ndarray = None  # type: ignore[assignment]
    cdf: np.ndarray = None  # type: ignore[assignment]
    z_max: float = math.inf
    delta: float = math.nan
    surrogate: object = None
    c: float = math.nan
    mass: float = 1.0

    def abs_icdf(self, u: torch.Tensor) -> torch.Tensor:
        table = self.table.to(u.device)
        pos = u.to(torch.float32) * (table.numel() - 1)
        i = pos.floor().clamp_(0, table.numel() - 2)
        frac = pos - i
        i = i.long()
        lo = table[i]
        return lo + frac * (table[i + 1] - lo)

    def abs_cdf(self, x: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=np.float64), self.z_grid, self.cdf)

    def abs_pdf(self, x: np.ndarray) -> np.ndarray:
        dz = self.z_grid[1] - self.z_grid[0]
        mid = self.z_grid[:-1] + 0.5 * dz
        return np.interp(np.asarray(x, dtype=np.float64), mid, np.diff(self.cdf) / dz, right=0.0)

    def expected_surrogate(self, v: torch.Tensor, delta: float) -> torch.Tensor:
        """The surrogate ``g`` this table reproduces (Theorem 3: ``c·E[G²] = g``)."""
        if not math.isclose(delta, self.delta, rel_tol=1e-12):
            raise ValueError(
                f"{self.name} was built for δ = {self.delta:g}; its λ depends on δ, so it cannot "
                f"serve δ = {delta:g}"
            )
        return self.surrogate.torch(v)  # type: ignore[union-attr]

    @property
    def support(self) -> float:
        return self.z_max


DISTRIBUTIONS: dict[str, Distribution] = {d.name: d for d in (Normal(), Uniform(), Laplace())}


def get_distribution(name: str) -> Distribution:
    """The built-in distribution called ``name``; the error lists the choices."""
    try:
        return DISTRIBUTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown distribution {name!r}; choose one of: {', '.join(DISTRIBUTIONS)}"
        ) from None
