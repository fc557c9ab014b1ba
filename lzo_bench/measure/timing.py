"""The clock of a timed training update: phase edges on the CPU or, on a GPU, CUDA events.

``profile`` (each method's update, on any device) and ``peers`` (each library's update, on the
CPU) time the same three phases — forward with the loss, ``zero_grad`` + backward, optimizer step —
with :class:`PhaseClock`; what else they record around an update differs (profile: allocator peaks
and saved-tensor bytes; peers: process CPU time and the first update's spikes), so each keeps its
own ``timed_update``.
"""

from __future__ import annotations

import time
from typing import Any

import torch


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
