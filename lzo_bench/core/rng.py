"""Counter-based random numbers for LocalZO draws: Philox4x32-10 (Salmon et al., SC'11).

A draw is a pure function of its key and counter, so every backend (this reference, the C++
CPU loops, the CUDA kernels) produces the same ``z`` for the same neuron without sharing state:

* key     ``(k0, k1) = (seed, update mod 2³²)`` for a seed below 2³²; a larger (64-bit) seed is
  hashed with the update into the key, ``(k0, k1) = Philox((seed_lo, seed_hi, update, "LZO\\0"),
  (W1, W0))[:2]``: seeds equal mod 2³² no longer share their draws (two keys still meet with
  the chance of any two 64-bit values, 2⁻⁶⁴ per pair)
* counter ``(c0, c1, c2, c3) = (j, t, b, layer·2¹⁶ + k)`` — neuron, time step, batch row,
  layer and sample index ``k < m``.

The first output word ``x0`` becomes a uniform ``u = (⌊x0 / 2⁹⌋ + 0.5)·2⁻²³ ∈ (0, 1)``, exact in
float32, which the distribution's inverse CDF turns into ``|z|``.

Arithmetic is done on int64 tensors holding 32-bit values. The 32×32→64-bit products of the
Philox round are split into 16-bit halves so no intermediate exceeds 2⁴⁹: the result is exact
on every platform, with no reliance on signed overflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MAX_SAMPLES = 1 << 16
MAX_LAYERS = 1 << 16


MAX_SEED = 1 << 64
KEY_TAG = 0x4C5A4F00  # "LZO\0": the hashed keys' domain


@dataclass(frozen=True)
class DrawKey:
    """What makes one update's draws differ from another's: the run seed (64 bits) and the update index."""

    seed: int
    update: int

    @property
    def words(self) -> tuple[int, int]:
        """The Philox key: ``(seed, update)`` when the seed fits 32 bits (the draws every earlier run
        made), else both words hashed from the full seed and the update."""
        if self.seed >> 32 == 0:
            return self.seed, self.update & MASK32
        counter = tuple(torch.tensor([w], dtype=torch.int64)
                        for w in (self.seed & MASK32, (self.seed >> 32) & MASK32, self.update & MASK32, KEY_TAG))
        k0, k1, _, _ = philox4x32(counter, (PHILOX_W1, PHILOX_W0))  # type: ignore[arg-type]
        return int(k0), int(k1)


def _mulhilo(m: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` 32-bit words of the 64-bit product ``m·a`` (``m``, ``a`` < 2³²)."""
    p_lo = (a & 0xFFFF) * m          # < 2⁴⁸
    p_hi = (a >> 16) * m             # < 2⁴⁸;  m·a = p_hi·2¹⁶ + p_lo
    mid = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (mid >> 32), mid & MASK32


def philox4x32(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[int, int],
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with ``rounds`` rounds on int64 tensors of 32-bit counter words.

    One round: ``(hi0, lo0) = M0·c0``, ``(hi1, lo1) = M1·c2``,
    ``c ← (hi1 ⊕ c1 ⊕ k0, lo1, hi0 ⊕ c3 ⊕ k1, lo0)``; the key is bumped by the Weyl constants
    ``(W0, W1)`` between rounds.
    """
    c0, c1, c2, c3 = (c.to(torch.int64) & MASK32 for c in counter)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_from_bits(x: torch.Tensor) -> torch.Tensor:
    """``u = (⌊x / 2⁹⌋ + 0.5)·2⁻²³`` in float32: 2²³ equally spaced values inside (0, 1)."""
    return ((x >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def draw_uniform(
    key: DrawKey,
    layer: int,
    t: torch.Tensor,
    b: torch.Tensor,
    j: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """The uniform behind LocalZO sample ``k`` of neuron ``j`` at step ``t``, batch row ``b``."""
    if not 0 <= k < MAX_SAMPLES or not 0 <= layer < MAX_LAYERS:
        raise ValueError(f"sample index {k} and layer {layer} must lie in [0, 65536)")
    c3 = torch.full_like(j, (layer << 16) | k, dtype=torch.int64)
    x0, _, _, _ = philox4x32((j, t, b, c3), key.words)
    return uniform_from_bits(x0)
