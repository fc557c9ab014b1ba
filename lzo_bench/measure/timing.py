"""The clock of a timed training update and the one timed update that train, profile and peers share.

:class:`PhaseClock` marks phase edges: CUDA events on a GPU, ``perf_counter`` elsewhere.
:func:`timed_update` runs one update — forward with the loss, ``zero_grad`` + backward, optimizer
step — and returns the three phase times from that clock. What else a caller records around an
update (profile: allocator peaks and saved-tensor bytes; peers: process CPU time and the first
update's spikes; train: the loss and the active counts) it does in its ``forward`` callable or
around the call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

R = TypeVar("R")


class PhaseClock:
    """Phase edges: CUDA events (plus a sync per edge) on GPU, perf_counter after a sync elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        """A phase edge: a recorded (and synchronised) CUDA event on GPU, else ``perf_counter()``."""
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            torch.cuda.synchronize(self.device)
            return e
        return time.perf_counter()

    def ms(self, a: Any, b: Any) -> float:
        """Milliseconds from edge ``a`` to edge ``b``."""
        return a.elapsed_time(b) if self.cuda else 1e3 * (b - a)


@dataclass(frozen=True)
class PhaseTimes:
    """Milliseconds of one update's phases on a :class:`PhaseClock`."""

    fwd_ms: float  # forward with the loss
    bwd_ms: float  # zero_grad + backward (and whatever ``before_backward`` does)
    opt_ms: float  # optimizer step
    total_ms: float  # the first edge to the last


def timed_update(clock: PhaseClock, forward: Callable[[], tuple[R, torch.Tensor]], optimizer: torch.optim.Optimizer,
                 before_backward: Callable[[R, torch.Tensor], None] | None = None) -> tuple[R, PhaseTimes]:
    """One training update with its phases on ``clock``: ``forward()`` → ``(result, loss)``, then
    ``before_backward(result, loss)`` if given (timed with the backward: train reads the loss there),
    ``optimizer.zero_grad(set_to_none=True)`` + ``loss.backward()``, ``optimizer.step()``.
    Returns ``(result, phase times)``."""
    t0 = clock.mark()
    result, loss = forward()
    t1 = clock.mark()
    if before_backward is not None:
        before_backward(result, loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = clock.mark()
    optimizer.step()
    t3 = clock.mark()
    return result, PhaseTimes(clock.ms(t0, t1), clock.ms(t1, t2), clock.ms(t2, t3), clock.ms(t0, t3))
