"""Comparing two float computations of the same network: bounds from the rounding error, not equality.

Two implementations that add the same terms in another order (a GEMM against a per-step loop, one
CPU's vector kernels against another's) agree to the bit only by luck. Each computes a sum of ``n``
float32 terms within ``γ_n·Σ|a_i|`` of the exact value, ``γ_n = n·u / (1 − n·u)``, ``u = 2⁻²⁴``
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and §3.1), so two of
them differ by at most ``2·γ_n·Σ|a_i|``. Spikes are thresholds of such sums: they are compared
exactly, except that a spike may flip where its potential lies within the rounding bound of θ
(:func:`lif_potential_bound`, :func:`spikes_agree`); what lies downstream of a flip is not compared.
Logits, built from the spikes by the leaky readout, are compared with the readout's bound
(:func:`readout_bound`; :func:`compare_logits` takes spike counts exactly, where its caller has shown
the potentials far from θ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lzo_bench.core.conv import ConvShape, pool_dense
from lzo_bench.core.forward import leaky_readout
from lzo_bench.core.lif import layer_current, lif_membrane

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
    diff = (ours.detach().double() - ref.detach().double()).abs()
    within = bool((diff <= bound.to(diff)).all()) and bool(torch.isfinite(diff).all())
    counts_equal = all(torch.equal(a, b) for a, b in counts)
    return Agreement(counts_equal, float(diff.max()) if diff.numel() else 0.0,
                     float(bound.max()) if bound.numel() else 0.0, within)


# ---- spikes of two computations of one LIF network -------------------------------------------------

#: roundings of the potential's own terms in one step of the LIF recursion (β·u, β itself where one
#: implementation rounds it differently, the two additions): see :func:`lif_potential_bound`
LIF_STEP_OPS = 4
#: primary flips allowed, as a fraction of the spike entries compared (at least one): rounding puts a
#: potential within the bound of θ rarely (the bound is a worst case, the real difference far smaller)
MAX_FLIP_FRACTION = 1e-3


def lif_potential_bound(x: torch.Tensor, w: torch.Tensor, beta: float, theta: float,
                        spikes: torch.Tensor, conv: ConvShape | None = None,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Bound ``[T, B, N]`` (float64) on ``|û − ũ|`` for two float32 computations ``û``, ``ũ`` of one
    LIF layer (:mod:`lzo_bench.core.lif`) from the same input ``x [T, B, n_in]``, weights ``W [n_in, N]``
    and own spikes ``s`` (``spikes``) up to ``t − 1``::

        u[t] = β·u[t−1] + I[t] − θ·s[t−1],   I[t] = Σ_i x_i[t]·W_ij   (n_in terms)

    in any order of the sum and of the three terms, with or without fused multiply-adds. With
    ``S[t] = Σ_i |x_i[t]·W_ij|``, the same recursion over magnitudes,
    ``A[t] = |β|·A[t−1] + S[t] + |θ|·s[t−1]``, bounds ``|u[t]|``. A term of the current is rounded at
    most ``n_in`` times in the sum and twice in the step, ``β·u[t−1]`` at most ``LIF_STEP_OPS`` times
    (Higham Lemma 3.1; ``EXTRA_OPS`` more allowed for each), so one computation's error
    ``E[t] = |û[t] − u[t]|`` satisfies::

        E[t] ≤ |β|·(1 + γ_4)·E[t−1] + γ_{n_in+2+X}·S[t] + γ_{4+X}·(|β|·A[t−1] + |θ|·s[t−1]),  X = EXTRA_OPS

    and two computations differ by at most ``2·E[t]``, which is returned: the recursion decays with
    ``β`` instead of growing with ``T``. (The magnitudes are summed in float64, whose own rounding is
    far inside the allowance.) It holds only where both saw the same input and the same own spikes
    before ``t`` (:func:`spikes_agree` tracks where that stops). A conv layer (``conv``): ``S`` is the conv of
    ``|x|`` with ``|W|`` and a neuron's current sums ``C_in·K²`` terms. A ``bias`` is one more term (``|b|``
    added to ``S``)."""
    steps, batch, n_in = x.shape
    current = layer_current(x.detach().double().abs(), w.detach().double().abs(),
                            None if bias is None else bias.detach().double().abs(), conv)
    n_in = (conv.c_in * conv.kernel ** 2 if conv else n_in) + (bias is not None)
    reset = abs(theta) * spikes.detach().double()
    decay = abs(beta) * (1.0 + gamma(LIF_STEP_OPS))
    g_current, g_step = gamma(n_in + 2 + EXTRA_OPS), gamma(LIF_STEP_OPS + EXTRA_OPS)
    a = torch.zeros_like(current[0])
    e = torch.zeros_like(a)
    out = []
    for t in range(steps):
        carried = abs(beta) * a + (reset[t - 1] if t > 0 else 0.0)
        e = decay * e + g_current * current[t] + g_step * carried
        a = carried + current[t]
        out.append(e)
    return 2.0 * torch.stack(out)


@dataclass(frozen=True)
class SpikeAgreement:
    """Spikes of two computations of a network, layer by layer.

    A *flip* is an entry whose spike differs. It is *primary* where both computations still had the
    same input and the same own spikes before (no flip earlier in the neuron's own trace, none in the
    previous layer's row at or before that step): only there is the potential bound valid, so only
    there can a flip be judged. Every later entry of the row is downstream of the flip and is not
    compared. The spikes agree up to rounding (``legitimate``) when every primary flip lies within the
    bound of θ and they are few (``MAX_FLIP_FRACTION`` of the entries, at least one)."""

    entries: int               # spike entries compared, all layers
    flips: int                 # entries whose spike differs, primary or downstream
    primary: int               # flips where the bound applies
    near: int                  # primary flips within the bound of θ
    worst: float               # largest |u_ref − θ| / bound over the primary flips (≤ 1: within)
    rows_equal: torch.Tensor   # [B] bool: samples whose spikes are equal in every layer
    max_fraction: float = MAX_FLIP_FRACTION

    @property
    def equal(self) -> bool:
        return self.flips == 0

    @property
    def within(self) -> bool:
        return self.near == self.primary

    @property
    def few(self) -> bool:
        return self.primary <= max(1, int(self.max_fraction * self.entries))

    @property
    def legitimate(self) -> bool:
        return self.equal or (self.within and self.few)

    def __str__(self) -> str:
        return (f"{self.flips} of {self.entries} spikes differ, {self.primary} where the bound applies, "
                f"{self.near} of them within it (worst |u − θ| = {self.worst:.3g}× the bound); "
                f"{int(self.rows_equal.sum())} of {self.rows_equal.numel()} samples equal")


def spikes_agree(ours: list[torch.Tensor], ref: list[torch.Tensor], u_ref: list[torch.Tensor], theta: float,
                 bounds: list[torch.Tensor], max_fraction: float = MAX_FLIP_FRACTION) -> SpikeAgreement:
    """Per layer ``l`` (in order, layer ``l`` the next's input) spikes ``ours[l]`` against ``ref[l]``
    (``[T, B, N_l]``), with the reference's potentials ``u_ref[l]`` and the bound ``bounds[l]`` on the
    two computations' difference (:func:`lif_potential_bound`). Primary flips, per :class:`SpikeAgreement`:
    ``f ∧ ¬(an earlier flip of the same neuron) ∧ ¬(a flip in the previous layer's row at or before t)``."""
    entries = flips = primary = near = 0
    worst = 0.0
    upstream = None   # [T, B]: the previous layer's row has flipped at or before t
    rows_equal = None
    for s_ours, s_ref, u, bound in zip(ours, ref, u_ref, bounds, strict=True):
        f = s_ours.detach().cpu() != s_ref.detach().cpu()
        before = (f.long().cumsum(0) - f.long()) > 0
        prim = f & ~before if upstream is None else f & ~before & ~upstream.unsqueeze(2)
        margin = (u.detach().cpu().double() - theta).abs()[prim] / bound.cpu()[prim]
        entries += f.numel()
        flips += int(f.sum())
        primary += int(prim.sum())
        near += int((margin <= 1.0).sum())
        worst = max(worst, float(margin.max()) if margin.numel() else 0.0)
        row_flipped = f.any(2)
        upstream = torch.cummax(row_flipped.long(), 0).values > 0
        rows_equal = ~row_flipped.any(0) if rows_equal is None else rows_equal & ~row_flipped.any(0)
    if rows_equal is None:
        raise ValueError("no layer to compare")
    return SpikeAgreement(entries, flips, primary, near, worst, rows_equal, max_fraction)


def network_spikes_agree(ours: list[torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor], beta: float,
                         theta: float, max_fraction: float = MAX_FLIP_FRACTION,
                         convs: list[ConvShape] | tuple = ()) -> SpikeAgreement:
    """Hidden-layer spikes ``ours`` (``[T, B, N_l]`` per layer) of some computation of the network
    with hidden weights ``weights`` on input ``x [T, B, n_in]``, against the pure-PyTorch reference
    (:mod:`lzo_bench.core.lif`: one GEMM for the current, then the scan, in float32 on the CPU), whose
    potentials and spikes are recomputed here: :func:`spikes_agree` with :func:`lif_potential_bound`."""
    h = x.detach().cpu()
    refs, us, bounds = [], [], []
    convs = [*convs, *[None] * (len(weights) - len(convs))]
    for w, conv in zip(weights, convs):
        w = w.detach().cpu()
        u = lif_membrane(layer_current(h, w, None, conv), beta, theta)
        s = (u - theta > 0).to(u.dtype)
        refs.append(s)
        us.append(u)
        bounds.append(lif_potential_bound(h, w, beta, theta, s, conv))
        h = pool_dense(s, conv) if conv else s
    return spikes_agree(ours, refs, us, theta, bounds, max_fraction)
