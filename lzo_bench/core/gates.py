"""The three backward rules ("gates") for the Heaviside spike ``s = H(v)``, ``v = u − θ``.

The forward is always ``H(v)``; the backward multiplies the incoming gradient by ``γ(v)``:

* ``surrogate``:  ``γ = g(v)``, the expected LocalZO surrogate of the distribution (eqs. 10–12);
* ``sparsegrad``: ``γ = g(v)·1(|v| < B_th)`` (eq. 4), ``B_th`` by default the expected LocalZO
  threshold ``δ·E[max_k |z_k|]`` (§4.5);
* ``localzo``:    ``γ = (c/m) Σ_k 1(|v| < δ|z_k|)·|z_k|^α / (2δ)`` (eqs. 7–8), with a fresh
  ``z_k ~ λ`` per neuron, time step, batch row and sample from the counter-based generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import torch

from lzo_bench.core.distributions import DISTRIBUTIONS, Distribution, get_distribution
from lzo_bench.core.rng import DrawKey, draw_uniform
from lzo_bench.core.surrogates import fast_sigmoid, sigmoid
from lzo_bench.core.theory import expected_threshold, sigmoid_a, theorem3_distribution

#: Distributions built from a surrogate by Theorem 3: name → (surrogate factory, α, default k(δ)).
SURROGATE_DISTRIBUTIONS = {
    "sigmoid": (sigmoid, 1, lambda delta: sigmoid_a() / delta),      # k = a/δ makes c = 1 (§5.2)
    "fast-sigmoid": (fast_sigmoid, -1, lambda delta: 100.0),          # k = 100 as SparseGrad (§5.2)
}
DIST_NAMES = (*DISTRIBUTIONS, *SURROGATE_DISTRIBUTIONS)


@lru_cache(maxsize=32)
def resolve_distribution(name: str, delta: float, k: float | None = None) -> Distribution:
    """The distribution called ``name``; sigmoid/fast-sigmoid are built by Theorem 3 for ``δ`` and ``k``."""
    if name in SURROGATE_DISTRIBUTIONS:
        factory, alpha, default_k = SURROGATE_DISTRIBUTIONS[name]
        return theorem3_distribution(factory(default_k(delta) if k is None else k), delta, alpha, name=name)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose one of: {', '.join(DIST_NAMES)}")
    if k is not None:
        raise ValueError(f"k applies to {' and '.join(SURROGATE_DISTRIBUTIONS)} only, not to {name}")
    return get_distribution(name)


class Method(str, Enum):
    SURROGATE = "surrogate"
    SPARSEGRAD = "sparsegrad"
    LOCALZO = "localzo"

    @property
    def index(self) -> int:
        """The code the C++/CUDA kernels use (``lzo_math.h``: SURROGATE 0, SPARSEGRAD 1, LOCALZO 2)."""
        return list(Method).index(self)


@dataclass(frozen=True)
class GateSpec:
    """Everything the backward rule needs, validated once."""

    method: Method
    dist: Distribution
    delta: float
    samples: int
    bth: float

    @classmethod
    def build(
        cls,
        method: Method | str,
        dist: str | Distribution = "normal",
        delta: float = 0.05,
        samples: int = 1,
        bth: float | None = None,
        k: float | None = None,
    ) -> "GateSpec":
        try:
            method = Method(method)
        except ValueError:
            raise ValueError(
                f"unknown method {method!r}; choose one of: {', '.join(m.value for m in Method)}"
            ) from None
        if not (delta > 0 and math.isfinite(delta)):
            raise ValueError(f"delta must be > 0, got {delta}")
        dist = resolve_distribution(dist, float(delta), k) if isinstance(dist, str) else dist
        if samples < 1:
            raise ValueError(f"samples must be ≥ 1, got {samples}")
        if bth is None:
            bth = expected_threshold(dist, samples, delta)
        elif not (bth > 0 and math.isfinite(bth)):
            raise ValueError(f"bth must be > 0, got {bth}")
        return cls(method, dist, float(delta), int(samples), float(bth))

    @property
    def is_sparse(self) -> bool:
        return self.method is not Method.SURROGATE

    def band(self) -> float:
        """Half-width outside which the gate is exactly zero (``inf`` for the dense rule)."""
        if self.method is Method.SPARSEGRAD:
            return self.bth
        if self.method is Method.LOCALZO:
            return self.delta * self.dist.max_abs
        return math.inf


def surrogate_gate(v: torch.Tensor, spec: GateSpec) -> torch.Tensor:
    """``γ = g(v) = c·E[G²(v)]`` — the surrogate LocalZO reproduces in expectation, dense."""
    return spec.dist.expected_surrogate(v, spec.delta)


def sparsegrad_gate(v: torch.Tensor, spec: GateSpec) -> torch.Tensor:
    """``γ = g(v)·1(|v| < B_th)`` — exactly zero outside the band."""
    inside = v.abs() < spec.bth
    return torch.where(inside, surrogate_gate(v, spec), torch.zeros_like(v))


def localzo_values(
    v: torch.Tensor,
    spec: GateSpec,
    key: DrawKey,
    layer: int,
    t: torch.Tensor,
    b: torch.Tensor,
    j: torch.Tensor,
) -> torch.Tensor:
    """LocalZO gate at the listed positions ``(t, b, j)`` whose potentials are ``v`` (1-D).

    ``γ = (c/m) Σ_k 1(|v| < δ|z_k|)·|z_k|^α / (2δ)`` with ``|z_k|`` drawn by inverse CDF from
    the Philox uniform keyed by ``(seed, update, layer, b, t, j, k)``.
    """
    dist, delta = spec.dist, spec.delta
    av = v.abs().to(torch.float32)
    acc = torch.zeros_like(av)
    for k in range(spec.samples):
        z = dist.abs_icdf(draw_uniform(key, layer, t, b, j, k))
        term = z.pow(dist.alpha) / (2.0 * delta)
        acc = acc + torch.where(av < delta * z, term, torch.zeros_like(term))
    return (acc * (dist.scale / spec.samples)).to(v.dtype)


def localzo_gate(v: torch.Tensor, spec: GateSpec, key: DrawKey, layer: int) -> torch.Tensor:
    """Dense ``[T, B, N]`` LocalZO gate; draws are made only where ``|v| < δ·max|z|``."""
    out = torch.zeros_like(v)
    cand = (v.abs() < spec.band()).nonzero(as_tuple=True)
    if cand[0].numel():
        t, b, j = cand
        out[cand] = localzo_values(v[cand], spec, key, layer, t, b, j)
    return out


def gate_values(v: torch.Tensor, spec: GateSpec, key: DrawKey, layer: int) -> torch.Tensor:
    """The gate ``γ(v)`` of ``spec.method`` for potentials ``v`` of shape ``[T, B, N]``."""
    if spec.method is Method.SURROGATE:
        return surrogate_gate(v, spec)
    if spec.method is Method.SPARSEGRAD:
        return sparsegrad_gate(v, spec)
    return localzo_gate(v, spec, key, layer)
