"""A dataset of binary spike trains held in memory, and the batch iterator over it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from lzo_bench.core.events import SpikeEvents


@dataclass(frozen=True)
class DatasetInfo:
    """What a trained network needs to know about its data (recorded in checkpoints)."""

    name: str
    n_units: int
    n_classes: int
    default_steps: int
    dt_ms: float
    encoding: str
    tau_mem_ms: float = 10.0
    tau_out_ms: float = 10.0
    reduce: str = "max"
    lr: float = 2e-4
    batch_size: int = 256
    init: str = "normal"
    init_gain: float = 10.0
    f_up: float = 1.0
    frame: tuple[int, int, int] | None = None  # (C, H, W) for --arch conv, units channels-last; None: no frames


@dataclass(frozen=True)
class SpikeDataset:
    """``spikes [n, T, units]`` (bool, at most one spike per unit and bin) and ``labels [n]``."""

    spikes: torch.Tensor
    labels: torch.Tensor
    n_classes: int

    def __post_init__(self) -> None:
        if self.spikes.ndim != 3 or self.spikes.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"spikes must be [n, T, units] with n = len(labels); got {tuple(self.spikes.shape)}"
                f" and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.spikes.shape[0]

    @property
    def steps(self) -> int:
        return self.spikes.shape[1]

    @property
    def n_units(self) -> int:
        return self.spikes.shape[2]

    def dense(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Samples ``idx`` as bool ``[n, T, units]``."""
        return self.spikes[idx]

    def spike_events(self, idx: torch.Tensor | slice) -> SpikeEvents:
        """Samples ``idx`` as events, batch row ``b`` = position in ``idx``."""
        x = self.spikes[idx]
        n, t, u = x.nonzero(as_tuple=True)  # sorted by (n, t, u)
        return SpikeEvents.from_keys((n * self.steps + t) * self.n_units + u, self.steps, x.shape[0], self.n_units)


@dataclass(frozen=True)
class EventDataset:
    """Binned spikes of many samples kept as events: sample ``i`` holds the flat positions
    ``events[offsets[i]:offsets[i+1]]`` (``t·units + u``, strictly ascending: at most one spike per
    unit and bin) of its spikes; made dense, or into a batch's event list, per batch."""

    events: torch.Tensor   # int32 or int64, flat t*units + u
    offsets: torch.Tensor  # int64 [n + 1]
    labels: torch.Tensor
    n_classes: int
    steps: int
    n_units: int

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets.numel() != self.labels.numel() + 1:
            raise ValueError("offsets must have one entry more than labels")
        if int(self.offsets[-1]) != self.events.numel():
            raise ValueError(f"offsets end at {int(self.offsets[-1])} but there are {self.events.numel()} events")

    def __len__(self) -> int:
        return self.labels.numel()

    def _gather(self, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(idx, row of each event, flat t·units + u of each event)`` of samples ``idx``."""
        idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).reshape(-1)
        start, stop = self.offsets[idx].tolist(), self.offsets[idx + 1].tolist()
        pos = torch.cat([self.events[a:b] for a, b in zip(start, stop)]) if start else self.events[:0]
        counts = torch.tensor([b - a for a, b in zip(start, stop)], dtype=torch.int64)
        rows = torch.repeat_interleave(torch.arange(idx.numel()), counts)
        return idx, rows, pos.long()

    def spike_events(self, idx: torch.Tensor | slice) -> SpikeEvents:
        """Samples ``idx`` as events, batch row ``b`` = position in ``idx``: no dense tensor is made."""
        from lzo_bench.ops import extension, library  # the event-driven backend's C++ ops: batches are built for it

        extension.build()
        idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).reshape(-1)
        ptr, col = library.batch_events(torch.ops.lzo, self.events, self.offsets, idx.long(), self.steps, self.n_units)
        return SpikeEvents(ptr, col, torch.zeros(0), self.steps, idx.numel(), self.n_units)

    def dense(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Samples ``idx`` as bool ``[n, T, units]`` (a scatter of their events)."""
        idx, rows, pos = self._gather(idx)
        out = torch.zeros(idx.numel(), self.steps * self.n_units, dtype=torch.bool)
        out[rows, pos] = True
        return out.view(idx.numel(), self.steps, self.n_units)


class EventBatcher:
    """Float ``[T, B, units]`` batches of an :class:`EventDataset` written into one reused buffer:
    only the previous batch's spikes are cleared, so a batch costs O(its events), not O(T·B·units).
    Each batch is overwritten by the next one: consume it before asking for another."""

    def __init__(self, data: EventDataset):
        self.data = data
        self.buf: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        d = self.data
        idx, rows, pos = d._gather(idx)
        batch = idx.numel()
        if self.buf is None or self.buf.shape[1] != batch:
            self.buf, self.last = torch.zeros(d.steps, batch, d.n_units), None
        flat = self.buf.view(-1)
        if self.last is not None:
            flat[self.last] = 0.0
        t, u = pos // d.n_units, pos % d.n_units
        self.last = (t * batch + rows) * d.n_units + u
        flat[self.last] = 1.0
        return self.buf


def batches(
    data: "SpikeDataset | EventDataset",
    batch_size: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    reuse_buffer: bool = False,
    events: bool = False,
) -> Iterator[tuple["torch.Tensor | SpikeEvents", torch.Tensor]]:
    """Yield ``(x [T, B, units] float32, y [B])``; shuffled when a generator is given.

    The last batch may be smaller than ``batch_size``. ``events``: ``x`` is a :class:`SpikeEvents`
    (what the event-driven backend takes; no dense batch is made). ``reuse_buffer`` (event datasets,
    dense batches): build each batch in one reused buffer (:class:`EventBatcher`) — each ``x`` is
    overwritten by the next.
    """
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batcher = EventBatcher(data) if reuse_buffer and isinstance(data, EventDataset) else None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if events:
            x = data.spike_events(idx).to(device)
        elif batcher is not None:
            x = batcher(idx).to(device)
        else:
            x = data.dense(idx).to(device=device, dtype=torch.float32).transpose(0, 1).contiguous()
        yield x, data.labels[idx].to(device)
