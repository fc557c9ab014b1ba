"""What ``lzo-bench theory table1`` and ``check`` compute: the paper's numbers, recomputed.

``table1`` recomputes Table 1 (``B̃_th/δ``) and the §4.6/§5.2 sigmoid and fast-sigmoid values
next to the printed ones, with the reason wherever they differ. ``check`` verifies by Monte
Carlo, through the production sampler (Philox → inverse CDF → gate), that ``c·E[G²]``
reproduces each target surrogate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import integrate, optimize

from lzo_bench.core.distributions import DISTRIBUTIONS, TableDistribution
from lzo_bench.core.gates import GateSpec, Method, localzo_gate, resolve_distribution, surrogate_gate
from lzo_bench.core.rng import DrawKey
from lzo_bench.core.surrogates import Surrogate
from lzo_bench.core.theory import Z_MAX, expected_max_abs, expected_surrogate_numeric, sigmoid_a

#: Table 1 and §4.6/§5.2 as printed in the paper.
PAPER_TABLE1 = {
    ("normal", 1): 0.798, ("normal", 5): 1.569,
    ("uniform", 1): 0.866, ("uniform", 5): 1.443,
    ("laplace", 1): 0.707, ("laplace", 5): 1.615,
}
PAPER_SIGMOID_HALF_A = 0.766        # E|z| = a/2, a = √(1/0.4262)
PAPER_SIGMOID_INV_A2 = 0.4262
PAPER_FAST_SIGMOID_BTH = 0.0461     # k = 100, δ = 0.05, support [−10, 10]
FAST_SIGMOID_K, FAST_SIGMOID_DELTA = 100.0, 0.05


@dataclass
class Table1Row:
    quantity: str
    computed: float
    paper: float
    agrees: bool
    note: str


def _agreement(computed: float, paper: float) -> tuple[bool, str]:
    if round(computed, 3) == paper:
        return True, ""
    if abs(computed - paper) < 1e-3:
        return True, f"paper truncates {computed:.5f} to {paper}"
    return False, ""


def _truncated_mean_abs(s: Surrogate, delta: float, alpha: int, z_max: float) -> tuple[float, float]:
    """``(E[|z| ; |z| ≤ Z] / P(|z| ≤ Z), E[|z| ; |z| ≤ Z] / P(all))`` for λ ∝ −z^{−α}g′(zδ)."""
    p = lambda z: -(z ** (-alpha)) * float(s.derivative(np.array([z * delta]))[0])  # noqa: E731
    inside = integrate.quad(p, 0, z_max, limit=400)[0]
    first = integrate.quad(lambda z: z * p(z), 0, z_max, limit=400)[0]
    total = inside + integrate.quad(p, z_max, np.inf, limit=400)[0]
    return first / inside, first / total


def table1() -> list[Table1Row]:
    rows = []
    for (name, m), paper in PAPER_TABLE1.items():
        value = expected_max_abs(DISTRIBUTIONS[name], m)
        ok, note = _agreement(value, paper)
        rows.append(Table1Row(f"B_th/δ {name} m={m}", value, paper, ok, note))

    a = sigmoid_a()
    ok, note = _agreement(1 / a**2, PAPER_SIGMOID_INV_A2)
    rows.append(Table1Row("sigmoid 1/a² (c = δ²k²/a²)", 1 / a**2, PAPER_SIGMOID_INV_A2, ok, note or
                          "paper rounds 1/a² to 4 decimals"))
    ok, note = _agreement(a / 2, PAPER_SIGMOID_HALF_A)
    rows.append(Table1Row("sigmoid E|z| = a/2 (B_th/δ, m=1)", a / 2, PAPER_SIGMOID_HALF_A, ok, note))
    table = resolve_distribution("sigmoid", 0.05)
    value = expected_max_abs(table, 1)
    ok, note = _agreement(value, PAPER_SIGMOID_HALF_A)
    rows.append(Table1Row("sigmoid E|z| from the sampling table", value, PAPER_SIGMOID_HALF_A, ok,
                          note or f"table support [−{Z_MAX:g}, {Z_MAX:g}], 2¹⁴+1 quantiles"))

    fast = resolve_distribution("fast-sigmoid", FAST_SIGMOID_DELTA, FAST_SIGMOID_K)
    assert isinstance(fast, TableDistribution)
    bth = FAST_SIGMOID_DELTA * expected_max_abs(fast, 1)
    ok, note = _agreement(bth, PAPER_FAST_SIGMOID_BTH)
    if not ok:
        s = fast.surrogate
        renorm, plain = _truncated_mean_abs(s, FAST_SIGMOID_DELTA, -1, Z_MAX)  # type: ignore[arg-type]
        z_paper = optimize.brentq(
            lambda z: FAST_SIGMOID_DELTA * _truncated_mean_abs(s, FAST_SIGMOID_DELTA, -1, z)[0]  # type: ignore[arg-type]
            - PAPER_FAST_SIGMOID_BTH, 1.0, Z_MAX,
        )
        note = (
            f"differs: on support [−{Z_MAX:g}, {Z_MAX:g}] with the truncated density renormalised (what "
            f"inverse-transform sampling draws) δ·E|z| = {FAST_SIGMOID_DELTA * renorm:.4f}; without "
            f"renormalising {FAST_SIGMOID_DELTA * plain:.4f}. The paper's {PAPER_FAST_SIGMOID_BTH} matches a "
            f"support of ±{z_paper:.2f} instead; E|z| diverges on the full line (§4.6.2), so the value "
            "depends on support and normalisation, which the paper does not fully state"
        )
    rows.append(Table1Row(f"fast-sigmoid B_th (k={FAST_SIGMOID_K:g}, δ={FAST_SIGMOID_DELTA:g})", bth,
                          PAPER_FAST_SIGMOID_BTH, ok, note))
    return rows


#: per-point Monte-Carlo tolerance in standard errors; with 20 000 draws a gate off by ±4 % exceeds
#: it at some point for every distribution (tested), while the correct gates stay below ~3.2
CHECK_STANDARD_ERRORS = 5.0


@dataclass
class CheckRow:
    target: str
    alpha: int
    c: float
    max_abs_error: float      # max_i |mean_i − g(u_i)|: Monte Carlo vs the target surrogate
    relative_error: float     # the same over the peak of g
    worst_ratio: float        # max_i |mean_i − E_i| / tol_i: Monte Carlo vs eq. 9 of the sampled law (≤ 1 passes)
    truncation: float         # g(δ·z_max): what a table distribution's finite support takes off eq. 9
    quadrature_error: float   # max_i |E_i − g(u_i)|: eq. 9 of the sampled law vs the target (≤ truncation passes)
    draws_per_point: int
    points: int
    passed: bool


def check(delta: float = 0.05, draws: int = 20_000, points: int = 41, seed: int = 0) -> list[CheckRow]:
    """Monte-Carlo ``c·E[G²(u)]`` on ``points`` values of ``u ∈ [−4δ, 4δ]``, two ways, per point.

    1. Against ``E_i``, eq. 9 integrated by quadrature for the law the sampler draws from (a table
       distribution's finite support included): ``|mean_i − E_i| ≤ 5·se_i`` at every point, with
       ``se_i = s_i/√draws`` from the sample's deviation ``s_i``; where fewer than 100 draws hit
       (the band's edge, where a sample of few hits says little about its own spread), ``s_i`` is
       at least the law's ``σ_i``, ``σ_i² = E[G_i²] − E_i²`` by the same quadrature. A gate off by
       4 % fails it.
    2. ``E_i`` against the target surrogate ``g(u_i)``: ``|E_i − g(u_i)| ≤ g(δ·z_max) + 1e-6·peak``,
       the truncation constant of a table distribution (see :func:`theorem3_distribution`).
    """
    u = torch.linspace(-4 * delta, 4 * delta, points, dtype=torch.float32)
    rows = []
    for name in (*DISTRIBUTIONS, "sigmoid", "fast-sigmoid"):
        spec = GateSpec.build(Method.LOCALZO, name, delta=delta)
        dist = spec.dist
        v = u.expand(1, draws, points).contiguous()
        gates = localzo_gate(v, spec, DrawKey(seed, 0), 0)[0].double()
        mean, se = gates.mean(0), gates.std(0) / math.sqrt(draws)
        target = surrogate_gate(u, spec).double()
        err = float((mean - target).abs().max())
        peak = float(target.abs().max())
        trunc = 0.0
        if isinstance(dist, TableDistribution):
            trunc = float(dist.surrogate(np.array([delta * dist.z_max]))[0])  # type: ignore[union-attr]
        expected = torch.from_numpy(expected_surrogate_numeric(dist, u.double().numpy(), delta))
        rare = (gates != 0).sum(0) < 100
        if bool(rare.any()):
            second = torch.from_numpy(expected_surrogate_numeric(dist, u[rare].double().numpy(), delta, power=2))
            law = (second - expected[rare] ** 2).clamp_min(0).sqrt() / math.sqrt(draws)
            se[rare] = torch.maximum(se[rare], law)
        tol = CHECK_STANDARD_ERRORS * se + 1e-9 * peak  # 1e-9: points where the gate is always 0
        worst = float(((mean - expected).abs() / tol).max())
        quad = float((expected - target).abs().max())
        rows.append(CheckRow(
            target=dist.surrogate.describe() if isinstance(dist, TableDistribution) else name,  # type: ignore[union-attr]
            alpha=dist.alpha, c=getattr(dist, "c", dist.scale), max_abs_error=err, relative_error=err / peak,
            worst_ratio=worst, truncation=trunc, quadrature_error=quad, draws_per_point=draws, points=points,
            passed=worst <= 1.0 and quad <= trunc + 1e-6 * peak,
        ))
    return rows


def as_dicts(rows: list) -> list[dict]:
    return [asdict(r) for r in rows]
