"""What a forward pass returns, and the leaky readout: a leaf module (torch and the event lists
only), so the network paths (:mod:`lzo_bench.core.model`, :mod:`lzo_bench.ops.event_network`) and the backends
import it without importing each other."""

from __future__ import annotations

import torch

from lzo_bench.core.events import SpikeEvents


class Forward:
    """What a forward pass returns: logits, per hidden layer the spike counts (differentiable, the
    regulariser's input), the entries the backward touches, and the spikes — dense ``[T, B, N]``
    tensors, built on first access where the forward produced events."""

    def __init__(self, logits: torch.Tensor, counts: list[torch.Tensor], active: list[int | torch.Tensor],
                 spikes: list[torch.Tensor | SpikeEvents]):
        self.logits = logits    # [B, C]
        self.counts = counts    # per hidden layer, [B, N]
        self._active = active   # ints, or 0-d device tensors read on first access
        self._spikes = spikes

    @property
    def active(self) -> list[int]:
        """Per hidden layer, the entries the backward touches. A forward on the GPU leaves them on the
        device (its lists are sized by their bound); they are read here, once, in one transfer, so the
        forward itself never waits for the device."""
        if any(isinstance(a, torch.Tensor) for a in self._active):
            on_device = [a for a in self._active if isinstance(a, torch.Tensor)]
            values = iter(torch.stack([a.reshape(()).long() for a in on_device]).tolist())
            self._active = [next(values) if isinstance(a, torch.Tensor) else a for a in self._active]
        return self._active  # type: ignore[return-value]

    @property
    def spikes(self) -> list[torch.Tensor]:
        """Per hidden layer, ``[T, B, N]``."""
        self._spikes = [s.dense() if isinstance(s, SpikeEvents) else s for s in self._spikes]
        return self._spikes  # type: ignore[return-value]


def leaky_readout(s: torch.Tensor, w_out: torch.Tensor, beta_out: float) -> torch.Tensor:
    """``o[t] = β_r·o[t−1] + (1 − β_r)·(s[t] @ W_out)`` for ``s [T, B, N]`` → ``o [T, B, C]``."""
    steps, batch, _ = s.shape
    a = (s.reshape(steps * batch, s.shape[-1]) @ w_out).view(steps, batch, w_out.shape[1])
    o = torch.zeros_like(a[0])
    outs = []
    for a_t in a.unbind(0):
        o = beta_out * o + (1.0 - beta_out) * a_t
        outs.append(o)
    return torch.stack(outs)
