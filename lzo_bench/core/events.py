"""Spike trains as event lists: what the event-driven forward consumes and produces (docs/ARCHITECTURE.md §5b).

A batch of spike trains ``x [T, B, N]`` is held as a CSR list over rows ``r = b·T + t`` (one batch
row's steps contiguous, the order the forward scan and the backward walk both use)::

    events of row r  =  col[ptr[r]:ptr[r+1]]  (unit indices, int32)  with values val[...] (float32;
                        empty when every value is 1, as for binary spikes)

A layer's synaptic current is then ``I[t, b, :] = Σ_{q in row (b, t)} val[q]·W[col[q], :]``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpikeEvents:
    """Non-zero entries of a ``[T, B, width]`` spike tensor as a CSR list over rows ``b·T + t``."""

    ptr: torch.Tensor   # int32 [B·T + 1] (a list holds fewer than 2³¹ events)
    col: torch.Tensor   # int32 [≥ nnz]: a list made on the GPU is allocated at its bound, nnz = ptr[-1]
    val: torch.Tensor   # float32 like col, or empty: every value is 1
    steps: int
    batch: int
    width: int

    def __post_init__(self) -> None:
        """The checks that read no data (dtypes, ranks, lengths); :meth:`validate` reads the lists."""
        for name, dtype in (("ptr", torch.int32), ("col", torch.int32), ("val", torch.float32)):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != dtype:
                got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"SpikeEvents {name} must be a 1-D {str(dtype).replace('torch.', '')} tensor, got {got}")
        for name in ("steps", "batch", "width"):
            v = getattr(self, name)
            try:
                n = -1 if isinstance(v, bool) else operator.index(v)
            except TypeError:
                n = -1
            if n < 0:
                raise ValueError(f"SpikeEvents {name} must be an integer ≥ 0, got {v!r}")
            object.__setattr__(self, name, n)
        if self.ptr.numel() != self.steps * self.batch + 1:
            raise ValueError(f"ptr must hold B·T + 1 = {self.steps * self.batch + 1} entries, got {self.ptr.numel()}")
        if self.val.numel() not in (0, self.col.numel()):
            raise ValueError("val must be empty or hold one value per event")
        if not (self.ptr.device == self.col.device == self.val.device):
            raise ValueError(f"SpikeEvents ptr, col and val must be on one device, got {self.ptr.device}, "
                             f"{self.col.device}, {self.val.device}")

    def validate(self) -> "SpikeEvents":
        """Check what the ops rely on and do not re-check cheaply themselves, so a bad list is refused here
        in one line instead of reading out of bounds in a kernel: ``ptr[0] == 0``, ``ptr`` non-decreasing,
        ``ptr[-1]`` the number of events (``len(col)``; on the GPU at most ``len(col)``, as lists made there
        are allocated at their bound), every ``col`` in ``[0, width)``, every value finite. Vectorised, one
        pass over each list and one read back; returns ``self``."""
        ptr, n_col = self.ptr, self.col.numel()
        steps = ptr[1:] - ptr[:-1]
        nnz = ptr[-1]
        first = ptr[0]
        # one reduction each, stacked so the host reads them once
        facts = [first, nnz, steps.min() if steps.numel() else first.new_zeros(())]
        n = int(nnz) if self.device.type == "cpu" else min(int(nnz), n_col)
        col = self.col[:max(n, 0)]
        if col.numel():
            facts += [col.min(), col.max()]
        read = torch.stack(facts).tolist()
        if read[0] != 0:
            raise ValueError(f"SpikeEvents ptr[0] must be 0, got {read[0]}")
        if read[2] < 0:
            r = int((steps < 0).nonzero()[0, 0])
            raise ValueError(f"SpikeEvents row pointers must not decrease: ptr[{r + 1}] = {int(ptr[r + 1])} < "
                             f"ptr[{r}] = {int(ptr[r])} (rows r = b·T + t, CSR)")
        ok_end = read[1] == n_col if self.device.type == "cpu" else read[1] <= n_col
        if not ok_end:
            raise ValueError(f"SpikeEvents ptr[-1] must equal the number of events len(col) = {n_col}, got {read[1]}")
        if col.numel() and (read[3] < 0 or read[4] >= self.width):
            raise ValueError(f"SpikeEvents col must lie in [0, {self.width}) (the width), got [{read[3]}, {read[4]}]")
        if self.val.numel() and not all_finite(self.val[:n]):
            raise ValueError("SpikeEvents val must be finite; it holds NaN or inf")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """The dense shape ``(T, B, width)``."""
        return self.steps, self.batch, self.width

    @property
    def nnz(self) -> int:
        """The number of events, ``ptr[-1]`` (a device read for a list on the GPU)."""
        return int(self.ptr[-1])

    @property
    def device(self) -> torch.device:
        return self.col.device

    def to(self, device: torch.device | str) -> "SpikeEvents":
        if torch.device(device) == self.device:
            return self
        return SpikeEvents(self.ptr.to(device), self.col.to(device), self.val.to(device),
                           self.steps, self.batch, self.width)

    def row_of_event(self) -> torch.Tensor:
        """Row ``b·T + t`` of every event (int64 [nnz])."""
        counts = (self.ptr[1:] - self.ptr[:-1]).long()
        return torch.repeat_interleave(torch.arange(counts.numel(), device=self.ptr.device), counts)

    def dense(self) -> torch.Tensor:
        """The float32 ``[T, B, width]`` tensor; a column listed twice in a row adds, as it does in
        the layer's current."""
        out = torch.zeros(self.batch, self.steps, self.width, device=self.device)
        n = self.nnz
        values = self.val[:n] if self.val.numel() else torch.ones(n, device=self.device)
        out.view(-1, self.width).index_put_((self.row_of_event(), self.col[:n].long()), values, accumulate=True)
        return out.transpose(0, 1).contiguous()

    @classmethod
    def from_keys(cls, key: torch.Tensor, steps: int, batch: int, width: int) -> "SpikeEvents":
        """Binary events at ``key = (b·T + t)·width + col``; sorted and de-duplicated unless they
        already are (as a dataset's events are)."""
        key = key.long()
        if key.numel() > 1 and not bool((key[1:] > key[:-1]).all()):
            key = torch.unique(key)  # sorted
        rows = key // width
        return cls(_row_pointers(rows, batch * steps), (key - rows * width).to(torch.int32),
                   torch.zeros(0, device=key.device), steps, batch, width)


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether every value of every float tensor is finite: one ``aminmax`` pass each (NaN propagates, ±inf
    is an extreme), no bool copy (``isfinite(x).all()`` allocates one: ~20x slower on an N-MNIST batch),
    one read back for all of them."""
    ends = [torch.stack(torch.aminmax(t.detach())) for t in tensors if t.is_floating_point() and t.numel()]
    return not ends or bool(torch.isfinite(torch.cat([e.to(torch.float32) for e in ends])).all())


def _row_pointers(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """int32 row pointers ``[n_rows + 1]`` of events whose (sorted) rows are ``rows``."""
    if rows.numel() >= 2**31:
        raise ValueError(f"{rows.numel()} events: an event list holds fewer than 2^31; use a smaller batch")
    ptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=ptr[1:])
    return ptr.to(torch.int32)
