"""Spike functions for any model: ``s = H(x)`` forward, a backward rule's gate ``γ(x)`` backward.

Drop-ins for snnTorch's ``spike_grad=`` and SpikingJelly's ``surrogate_function=`` (both call it on
``x = u − θ``), and usable in any PyTorch code, for a tensor of any shape (dense layers, conv feature
maps) on the CPU or CUDA::

    forward   s = H(x) = 1(x > 0), in the dtype of x
    backward  ∂L/∂x = ∂L/∂s · γ(x)

with ``γ`` of :mod:`lzo_bench.core.gates` (the same code as ``lzo-bench train``):

* :class:`Surrogate`  ``γ = g(x)``, the expected LocalZO surrogate of the distribution (eqs. 10–12);
* :class:`SparseGrad` ``γ = g(x)·1(|x| < B_th)`` (eq. 4), ``B_th = δ·E[max_k |z_k|]`` by default (§4.5);
* :class:`LocalZO`    ``γ = (c/m) Σ_k 1(|x| < δ|z_k|)·|z_k|^α / (2δ)`` (eqs. 7–8), unbiased for ``g``.

``dist`` is a distribution name (``normal``, ``uniform``, ``laplace``, ``sigmoid``, ``fast-sigmoid``), a
:class:`~lzo_bench.core.distributions.Distribution`, or a user surrogate ``g`` (:func:`lzo_bench.core.surrogates.custom`), turned into its sampling distribution by
Theorem 3 at this ``δ``. ``alpha`` (the exponent ``α`` of eq. 8) belongs to a user surrogate ``g`` only
(default 1); a named distribution or a :class:`Distribution` carries its own ``α``, and an ``alpha`` that
differs from it is refused rather than ignored. Integer arguments (``m``, ``seed``) must be integers:
``m=2.9`` is refused, not truncated; ``m`` is at most 65 535, the kernels' limit.

**LocalZO's draws** come from the project's Philox4x32 (:mod:`lzo_bench.core.rng`), keyed by
``(seed, counter)`` with the element's flat index ``i`` as counter word (``j = i mod 2³²``,
``t = ⌊i / 2³²⌋``, batch row 0, layer 0, sample ``k``): ``z`` is drawn in the **backward**, and
``counter`` advances by one per backward call. A call whose result never reaches a backward (snnTorch's
detached reset, inference) draws nothing and leaves the counter alone, so a run with the same seed and
the same graph is reproducible. ``reset(counter=0)`` (or ``fn.counter = n``) restarts the sequence.

Modules pickle and deep-copy (the distribution is rebuilt from its constructor arguments); a custom
``g`` pickles when its functions do (module-level functions, not lambdas).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch

from lzo_bench.core.distributions import Distribution
from lzo_bench.core.gates import DIST_NAMES, GateSpec, Method, localzo_values, sparsegrad_gate, surrogate_gate
from lzo_bench.core.rng import MASK32, DrawKey
from lzo_bench.core.surrogates import Surrogate as SurrogateFn
from lzo_bench.core.theory import theorem3_distribution

#: the most samples ``m`` per element the kernels take (``kernels/lif_common.h``: ``samples < 65536``)
MAX_SAMPLES = 65535


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int``: an int, a numpy integer or an integral float; a bool, a fractional number
    or anything else is refused (``TypeError``) rather than truncated, and one below ``minimum``
    (``ValueError``)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got the bool {value!r}")
    if isinstance(value, (float, np.floating)):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise TypeError(f"{name} must be an integer, got {value!r}; it would be truncated to {int(value) if math.isfinite(value) else value}")
        value = int(value)
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return value


class SpikeFunction(torch.nn.Module):
    """``H(x)`` forward and the gate of one rule backward; see the module docstring."""

    method: Method = Method.SURROGATE

    def __init__(self, dist: str | SurrogateFn | Distribution = "normal", delta: float = 0.05, samples: int = 1,
                 bth: float | None = None, k: float | None = None, seed: int = 0, alpha: int | None = None):
        super().__init__()
        if not isinstance(dist, (str, SurrogateFn, Distribution)):
            raise TypeError(f"dist must be a distribution name ({', '.join(DIST_NAMES)}), a Distribution or a "
                            f"custom surrogate g (lzo_bench.core.surrogates.custom), got {type(dist).__name__} {dist!r}")
        name = "m" if self.method is Method.LOCALZO else "samples"
        samples = integer(name, samples, 1)
        if samples > MAX_SAMPLES:
            raise ValueError(f"{name} must lie in [1, {MAX_SAMPLES}] (the kernels' limit), got {samples}")
        if alpha is not None:
            alpha = integer("alpha", alpha)
        self.dist, self.delta, self.samples, self.bth, self.k, self.alpha = dist, delta, samples, bth, k, alpha
        self.seed = integer("seed", seed)
        self.counter = 0
        self._spec: GateSpec | None = None
        self.spec  # validates the arguments now, with the gates' messages

    @property
    def spec(self) -> GateSpec:
        """The rule as :mod:`lzo_bench.core.gates` takes it (built once; not pickled)."""
        if self._spec is None:
            dist: Any = self.dist
            if isinstance(dist, SurrogateFn):
                if not (self.delta > 0 and math.isfinite(self.delta)):
                    raise ValueError(f"delta must be > 0, got {self.delta}")
                dist = theorem3_distribution(dist, float(self.delta), 1 if self.alpha is None else self.alpha)
            spec = GateSpec.build(self.method, dist, self.delta, self.samples, self.bth, self.k)
            if self.alpha is not None and self.alpha != spec.dist.alpha:
                raise ValueError(f"alpha applies to a custom surrogate g only (Theorem 3 builds its distribution); "
                                 f"the distribution {spec.dist.name!r} has alpha = {spec.dist.alpha}: leave alpha out, "
                                 f"got alpha={self.alpha}")
            self._spec = spec
        return self._spec

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_spec"] = None
        return state

    def reset(self, counter: int = 0) -> None:
        """Restart LocalZO's draws at ``counter`` (the next backward call uses key ``(seed, counter)``)."""
        self.counter = integer("counter", counter, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes a floating-point tensor (u − θ), got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        return _Spike.apply(x, self)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``γ(x)``, same shape and dtype as ``x``; LocalZO draws with key ``(seed, counter)`` and
        advances the counter. Computed in float64 for a float64 ``x``, else in float32."""
        v = x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().to(torch.float32)
        if self.method is Method.SURROGATE:
            g = surrogate_gate(v, self.spec)
        elif self.method is Method.SPARSEGRAD:
            g = sparsegrad_gate(v, self.spec)
        else:
            g = self._localzo(v)
        return g.to(x.dtype)

    def _localzo(self, v: torch.Tensor) -> torch.Tensor:
        key = DrawKey(self.seed, self.counter)
        self.counter += 1
        flat = v.reshape(-1)
        out = torch.zeros_like(flat)
        idx = (flat.abs() < self.spec.band()).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = localzo_values(flat[idx], self.spec, key, 0, idx >> 32, torch.zeros_like(idx), idx & MASK32)
        return out.view_as(v)

    def extra_repr(self) -> str:
        dist = self.dist.describe() if isinstance(self.dist, SurrogateFn) else getattr(self.dist, "name", self.dist)
        text = f"dist={dist!r}, delta={self.delta:g}"
        if self.method is Method.LOCALZO:
            text += f", m={self.samples}, seed={self.seed}, counter={self.counter}"
        if self.method is Method.SPARSEGRAD:
            text += f", bth={self.spec.bth:.4g}"
        return text

    def cuda_codes(self, *args: Any, **kwargs: Any) -> str:
        """SpikingJelly's CuPy backend inlines a surrogate's CUDA code; this rule has none."""
        raise NotImplementedError(
            f"lzo_bench.spike.{type(self).__name__} runs in SpikingJelly's torch backend only; build the "
            "neuron with backend='torch'")


class _Spike(torch.autograd.Function):
    """``H(x)`` forward; ``grad · γ(x)`` backward, ``γ`` computed there (so LocalZO draws only for
    calls that are back-propagated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: SpikeFunction) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.fn = fn
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ctx.fn.gate(x), None


class Surrogate(SpikeFunction):
    """Dense surrogate gradient: ``γ = g(x)``, the expected LocalZO surrogate of ``dist``."""

    method = Method.SURROGATE

    def __init__(self, dist: str | SurrogateFn | Distribution = "normal", delta: float = 0.05, k: float | None = None,
                 alpha: int | None = None):
        super().__init__(dist, delta, 1, None, k, 0, alpha)


class SparseGrad(SpikeFunction):
    """SparseGrad: ``γ = g(x)·1(|x| < B_th)``; ``bth=None`` is ``δ·E[max_k |z_k|]`` of ``dist``."""

    method = Method.SPARSEGRAD

    def __init__(self, dist: str | SurrogateFn | Distribution = "normal", delta: float = 0.05, bth: float | None = None,
                 k: float | None = None, alpha: int | None = None):
        super().__init__(dist, delta, 1, bth, k, 0, alpha)


class LocalZO(SpikeFunction):
    """LocalZO: ``γ = (c/m) Σ_k 1(|x| < δ|z_k|)·|z_k|^α / (2δ)`` with ``m`` fresh ``z`` per element and
    backward call, ``E[γ] = g(x)`` (Theorem 3)."""

    method = Method.LOCALZO

    def __init__(self, delta: float = 0.05, dist: str | SurrogateFn | Distribution = "normal", m: int = 1, seed: int = 0,
                 k: float | None = None, alpha: int | None = None):
        super().__init__(dist, delta, m, None, k, seed, alpha)

    @property
    def m(self) -> int:
        return self.samples
