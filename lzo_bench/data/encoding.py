"""Latency (time-to-first-spike) coding of static intensities, as SparseGrad codes FMNIST."""

from __future__ import annotations

import numpy as np
import torch


class TooLarge(MemoryError):
    """A tensor would not fit in this machine's available memory; the message says which and how big."""


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo``, or ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return kb * 1024


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise :class:`TooLarge` before allocating ``nbytes`` when more than half the available memory
    would go to it (``--steps 100000`` on digits asked for 11.5 GB and died in the allocator)."""
    free = available_bytes()
    if free is not None and nbytes > free // 2:
        raise TooLarge(f"{what} need {nbytes / 2**30:.1f} GiB, more than half of the {free / 2**30:.1f} GiB available")


def latency_steps(x: np.ndarray, tau_eff: float = 20.0, threshold: float = 0.2) -> np.ndarray:
    """Spike step of each intensity ``x ∈ [0, 1]``: ``⌊τ_eff·ln(x / (x − thr))⌋``.

    Intensities ``x ≤ thr`` never spike and get step ``-1``. Brighter → earlier.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, -1, dtype=np.int64)
    fires = x > threshold
    xf = x[fires]
    out[fires] = np.floor(tau_eff * np.log(xf / (xf - threshold))).astype(np.int64)
    return out


def latency_encode(
    x: np.ndarray, steps: int, tau_eff: float = 20.0, threshold: float = 0.2
) -> torch.Tensor:
    """``[n, units]`` intensities in ``[0, 1]`` → ``[n, steps, units]`` bool spikes, one per unit at most.

    No spike when ``x ≤ thr`` or when the spike step is ``≥ steps``.
    """
    step = latency_steps(x, tau_eff, threshold)
    n, units = step.shape
    check_fits_in_memory(n * steps * units, f"{n} samples × {steps} steps × {units} units of spikes")
    spikes = torch.zeros((n, steps, units), dtype=torch.bool)
    rows, cols = np.nonzero((step >= 0) & (step < steps))
    spikes[torch.from_numpy(rows), torch.from_numpy(step[rows, cols]), torch.from_numpy(cols)] = True
    return spikes
