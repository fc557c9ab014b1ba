"""Surrogate functions ``g`` (paper Definition 4.1) and their validation.

A surrogate is even, ≥ 0, non-decreasing on ``(−∞, 0)`` and integrable. Built-ins:

* ``sigmoid(k)``:      ``g(u) = k·e^{−ku} / (1 + e^{−ku})²``  (Zenke & Ganguli; paper §4.6.1)
* ``fast_sigmoid(k)``: ``g(u) = 1 / (1 + k|u|)²``           (paper §4.6.2)
* ``expected(dist, δ)``: the expected LocalZO surrogate of a built-in distribution (eqs. 10–12)

and any user callable through :func:`custom`. Every function works on float64 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Fn = Callable[[np.ndarray], np.ndarray]


class InvalidSurrogate(ValueError):
    """``g`` fails a condition of Definition 4.1 or Theorem 3; the message says which."""


@dataclass(frozen=True)
class Surrogate:
    """``g`` and, when known in closed form, its derivative ``dg`` (else central differences)."""

    name: str
    g: Fn
    dg: Fn | None = None
    params: tuple[tuple[str, float], ...] = ()
    g_torch: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.g(np.asarray(u, dtype=np.float64)), dtype=np.float64)

    def derivative(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        if self.dg is not None:
            return np.asarray(self.dg(u), dtype=np.float64)
        h = 1e-6 * np.maximum(1.0, np.abs(u))
        return (self(u + h) - self(u - h)) / (2 * h)

    def torch(self, v: torch.Tensor) -> torch.Tensor:
        """``g(v)`` on a tensor, on its device when a torch form is known, else through numpy."""
        if self.g_torch is not None:
            return self.g_torch(v)
        out = self(v.detach().cpu().double().numpy())
        return torch.from_numpy(out).to(device=v.device, dtype=v.dtype)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.name}({args})" if args else self.name


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sigmoid(k: float) -> Surrogate:
    """``g(u) = k·σ'(ku) = k·σ(ku)(1 − σ(ku))``; ``g'(u) = k²·σ(1 − σ)(1 − 2σ)`` at ``ku``; ∫g = 1."""
    if not k > 0:
        raise InvalidSurrogate(f"sigmoid temperature k must be > 0, got {k}")

    def g(u: np.ndarray) -> np.ndarray:
        s = _sigmoid(-k * np.abs(u))
        return k * s * (1.0 - s)

    def dg(u: np.ndarray) -> np.ndarray:
        s = _sigmoid(k * u)
        return k * k * s * (1.0 - s) * (1.0 - 2.0 * s)

    def g_torch(v: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(-k * v.abs())
        return k * s * (1.0 - s)

    return Surrogate("sigmoid", g, dg, (("k", k),), g_torch)


def fast_sigmoid(k: float) -> Surrogate:
    """``g(u) = 1/(1 + k|u|)²``; ``g'(u) = −2k·sign(u)/(1 + k|u|)³``; ∫g = 2/k."""
    if not k > 0:
        raise InvalidSurrogate(f"fast-sigmoid slope k must be > 0, got {k}")
    return Surrogate(
        "fast-sigmoid",
        lambda u: 1.0 / (1.0 + k * np.abs(u)) ** 2,
        lambda u: -2.0 * k * np.sign(u) / (1.0 + k * np.abs(u)) ** 3,
        (("k", k),),
        lambda v: (1.0 + k * v.abs()).pow(-2),
    )


def custom(name: str, g: Fn, dg: Fn | None = None) -> Surrogate:
    """A user surrogate; validate it with :func:`validate` (Theorem 3 does so itself)."""
    return Surrogate(name, g, dg)


def validate(s: Surrogate, scale: float) -> None:
    """Check Definition 4.1 for ``±u``: ≥ 0, even, non-increasing on u > 0.

    ``u`` runs over a fine regular grid of ``(0, scale]`` and a geometric one out to ``10⁶·scale``.
    Integrability (``c < ∞``) is checked where ``c`` is computed (:mod:`lzo_bench.core.theory`).
    """
    u = np.concatenate([np.linspace(0.0, scale, 20_001)[1:], scale * np.geomspace(1.001, 1e6, 2_000)])
    gp, gm = s(u), s(-u)
    if not (np.all(np.isfinite(gp)) and np.all(np.isfinite(gm))):
        bad = u[~np.isfinite(gp) | ~np.isfinite(gm)][0]
        raise InvalidSurrogate(f"{s.describe()} is not finite at u = ±{bad:.4g}")
    peak = max(float(np.max(np.abs(gp))), float(np.abs(s(np.array([0.0]))[0])), 1e-300)
    neg = np.nonzero((gp < 0) | (gm < 0))[0]
    if neg.size:
        i = neg[0]
        raise InvalidSurrogate(
            f"{s.describe()} is negative at u = ±{u[i]:.4g} (g = {min(gp[i], gm[i]):.4g}); "
            "a surrogate must be ≥ 0 (Definition 4.1)"
        )
    odd = np.nonzero(np.abs(gp - gm) > 1e-9 * peak)[0]
    if odd.size:
        i = odd[0]
        raise InvalidSurrogate(
            f"{s.describe()} is not even: g({u[i]:.4g}) = {gp[i]:.6g} but g({-u[i]:.4g}) = {gm[i]:.6g} "
            "(Definition 4.1)"
        )
    rising = np.nonzero(np.diff(gp) > 1e-9 * peak)[0]
    if rising.size:
        i = rising[0]
        raise InvalidSurrogate(
            f"{s.describe()} increases on u > 0 near u = {u[i]:.4g}: it must be non-decreasing on "
            "(−∞, 0) and so non-increasing on (0, ∞), else λ(z) ∝ −g′(zδ) is negative (Definition 4.1)"
        )

