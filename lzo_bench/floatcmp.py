"""Comparing two float computations of the same network: bounds from the rounding error, not equality.

Two implementations that add the same terms in another order (a GEMM against a per-step loop, one
CPU's vector kernels against another's) agree to the bit only by luck. Each computes a sum of ``n``
float32 terms within ``γ_n·Σ|a_i|`` of the exact value, ``γ_n = n·u / (1 − n·u)``, ``u = 2⁻²⁴``
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and §3.1), so two of
them differ by at most ``2·γ_n·Σ|a_i|``. Spikes are integers: equal spike counts are an exact claim
and are compared exactly; logits, built from them by the leaky readout, are compared with that bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lzo_bench.forward import leaky_readout

UNIT_ROUNDOFF = 2.0**-24
#: operations beyond the sums themselves on the longest path of a readout (scale, decay, reduction)
EXTRA_OPS = 8


def gamma(n: int) -> float:
    """``γ_n = n·u / (1 − n·u)``: the relative error bound of ``n`` float32 operations in sequence."""
    nu = n * UNIT_ROUNDOFF
    if nu >= 1.0:
        raise ValueError(f"{n} float32 operations in sequence have no rounding bound (n·u ≥ 1)")
    return nu / (1.0 - nu)


def readout_bound(spikes: torch.Tensor, w_out: torch.Tensor, beta_out: float, reduce: str) -> torch.Tensor:
    """Per-logit bound ``[B, C]`` on ``|ours − ref|`` for two computations of
    ``logits = reduce_t o[t]``, ``o[t] = β_r·o[t−1] + (1 − β_r)·(s[t] @ W_out)`` from the same spikes
    ``s [T, B, N]``: ``2·γ_n·A`` with ``A`` the same readout over ``|s|`` and ``|W_out|`` (in float64) and
    ``n = N + 3T`` (``+ T`` for the sum over time) roundings on the longest path: the step's N-term sum,
    a multiply and an add per step of the recursion, and the decay constant itself rounded once per
    step when an implementation forms it differently (NIR's ``1 − dt/τ`` against ``β_r``)."""
    steps, _, n_in = spikes.shape
    a = leaky_readout(spikes.double().abs(), w_out.detach().double().abs(), beta_out)
    magnitude = a.amax(0) if reduce == "max" else a.sum(0)
    n = n_in + 3 * steps + (steps if reduce == "sum" else 0) + EXTRA_OPS
    return 2.0 * gamma(n) * magnitude


@dataclass(frozen=True)
class Agreement:
    """Whether two runs of one network agree: spike counts equal, logits within the rounding bound."""

    counts_equal: bool
    max_dlogit: float   # max |ours − ref| over the logits
    max_bound: float    # the bound at that logit's scale: the largest per-logit bound
    within: bool        # every logit within its own bound

    @property
    def agree(self) -> bool:
        return self.counts_equal and self.within


def compare_logits(ours: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor,
                   counts: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> Agreement:
    """``ours`` against ``ref`` (``[B, C]``) within ``bound`` per logit, and each ``(ours, ref)`` pair of
    spike counts equal."""
    diff = (ours.double() - ref.double()).abs()
    within = bool((diff <= bound.to(diff)).all()) and bool(torch.isfinite(diff).all())
    counts_equal = all(torch.equal(a, b) for a, b in counts)
    return Agreement(counts_equal, float(diff.max()) if diff.numel() else 0.0,
                     float(bound.max()) if bound.numel() else 0.0, within)
