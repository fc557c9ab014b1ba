"""The discrete LIF's decay β against a continuous time constant τ, and the step a NIR graph records.

Forward Euler at step ``dt`` of ``τ dv/dt = −v + R·I`` is ``v ← (1 − dt/τ)·v + (dt/τ)·R·I``, so
``β = 1 − dt/τ`` and ``τ = dt/(1 − β)`` (docs/ARCHITECTURE.md §8). The NIR writer
(:mod:`lzo_bench.export.nir_graph`) and reader (:func:`lzo_bench.nn.from_nir`) both use these.

The two directions are inverse in exact arithmetic; in float64 ``beta_of(tau_of(β))`` is within
:data:`ROUND_TRIP_ULP` ulps of ``β`` (each of ``1 − β``, the two divisions and ``1 − a`` rounds once,
by at most half an ulp of a number ≤ 1 in magnitude), so after rounding to float32 — the precision the
layers compute in — the decay is the same except where ``β`` lies that close to a float32 rounding
boundary.
"""

from __future__ import annotations

import math
from typing import Any

#: ulps of 1.0 (float64) by which beta_of(tau_of(beta, dt), dt) may differ from beta
ROUND_TRIP_ULP = 4

#: the step, in seconds, that snnTorch 1.0's NIR importer and exporter assume for every LIF
SNNTORCH_DT = 1e-4


def tau_of(beta: float, dt: float) -> float:
    """``τ = dt/(1 − β)``; β must be in ``[0, 1)``."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"a time constant needs beta in [0, 1), got {beta}")
    return dt / (1.0 - beta)


def beta_of(tau: float, dt: float) -> float:
    """``β = 1 − dt/τ``; ``τ ≥ dt`` (else the Euler step overshoots: β < 0)."""
    if not (math.isfinite(tau) and tau > 0) or tau < dt:
        raise ValueError(f"tau = {tau!r} s must be finite and at least the step dt = {dt!r} s (beta = 1 - dt/tau ≥ 0)")
    return 1.0 - dt / tau


def round_trip_bound() -> float:
    """The largest ``|beta_of(tau_of(β)) − β|`` in float64 (module docstring)."""
    return ROUND_TRIP_ULP * 2.0**-53


def dt_of(graph: Any) -> float:
    """The step a NIR graph was written for: lzo-bench records ``dt_s`` in the graph metadata."""
    try:
        return float(graph.metadata["dt_s"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the NIR graph has no dt_s in its metadata; pass dt explicitly") from None
