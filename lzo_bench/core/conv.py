"""Convolutional LIF layers (issue 22, the paper's future work): their geometry, the spike sum-pooling
between them, and the pure-PyTorch reference of their current.

Units are **channels-last**: input unit ``(y·W + x)·C_in + c``, output unit ``(oy·W_out + ox)·C_out + o``,
so a conv layer's spikes are events over ``(y, x, channel)`` like a dense layer's over its neurons, and a
flatten into the fully connected stack is the identity on the events. Layer ``l`` with weights
``W [C_out, C_in, K, K]`` (torch's ``conv2d`` layout), stride ``s`` and padding ``p``::

    I[t, b, (oy, ox, o)] = Σ_{c, ky, kx} x[t, b, (oy·s + ky − p, ox·s + kx − p, c)] · W[o, c, ky, kx]  (+ b[o])
    u = β·u + I − θ·s_prev,   s = H(u − θ)                                 (as every LIF layer, docs/ARCHITECTURE.md §3)

Sparse backward (docs/ARCHITECTURE.md §5 with conv indexing), ``e`` non-zero only at the active entries::

    ∂L/∂W[o, c, ky, kx] = Σ_{active (t, b, (oy, ox, o))} e · x̄[t, b, (oy·s + ky − p, ox·s + kx − p, c)]

and the input gradient only at the previous layer's active entries. Sum pooling with window and stride
``k`` maps output ``(oy, ox, o)`` to ``(oy // k, ox // k, o)`` (rows and columns past the last whole window
dropped, as ``avg_pool2d`` does); the pooled events carry counts as values, and its backward hands each
input the gradient of its window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lzo_bench.core.events import SpikeEvents


@dataclass(frozen=True)
class ConvShape:
    """One conv layer's geometry: input ``c_in × height × width``, ``c_out`` kernels ``kernel × kernel``,
    ``stride``, zero ``padding``, and a sum pooling ``pool × pool`` of its spikes (1: none)."""

    c_in: int
    height: int
    width: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1

    def __post_init__(self) -> None:
        for name in ("c_in", "height", "width", "c_out", "kernel", "stride", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"conv {name} must be ≥ 1, got {getattr(self, name)}")
        if self.padding < 0:
            raise ValueError(f"conv padding must be ≥ 0, got {self.padding}")
        if min(self.height, self.width) + 2 * self.padding < self.kernel:
            raise ValueError(f"conv kernel {self.kernel} is larger than the padded input "
                             f"{self.height + 2 * self.padding}×{self.width + 2 * self.padding}")
        if self.pool > 1 and min(self.out_height, self.out_width) < self.pool:
            raise ValueError(f"pooling window {self.pool} is larger than the conv output "
                             f"{self.out_height}×{self.out_width}")

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def units_in(self) -> int:
        return self.c_in * self.height * self.width

    @property
    def units_out(self) -> int:
        """The layer's neurons, ``c_out · out_height · out_width``."""
        return self.c_out * self.out_height * self.out_width

    @property
    def next_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of what the next layer receives: the spikes, pooled."""
        return self.c_out, self.out_height // self.pool, self.out_width // self.pool

    @property
    def units_next(self) -> int:
        c, h, w = self.next_shape
        return c * h * w

    def kernel_args(self) -> list[int]:
        """``[C_in, H, W, C_out, K, stride, padding]``, the ``shape`` argument of the ``lzo::conv_*`` ops."""
        return [self.c_in, self.height, self.width, self.c_out, self.kernel, self.stride, self.padding]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConvLayer:
    """One conv layer of a network spec, its input shape left to the layer before: ``channels`` out,
    ``kernel``, ``stride``, ``padding`` and the sum pooling of its spikes."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


#: the network architectures of ``lzo-bench train --arch``: fully connected, or conv layers first
ARCHS = ("fc", "conv")
#: ``lzo-bench train --arch conv``: each dataset's conv layers (then the ``--hidden`` layers, the readout)
CONV_NETWORKS: dict[str, tuple[ConvLayer, ...]] = {
    "digits": (ConvLayer(16, 3, 1, 1),),                                    # 1×8×8 → 16×8×8
    "fmnist": (ConvLayer(12, 5, pool=2), ConvLayer(32, 5, stride=2)),       # 1×28×28 → 12×12×12 → 32×4×4
    "nmnist": (ConvLayer(12, 5, pool=2), ConvLayer(32, 5, stride=2)),       # 2×34×34 → 12×15×15 → 32×6×6
}


def chain_shapes(frame: tuple[int, int, int], layers: tuple[ConvLayer, ...]) -> list[ConvShape]:
    """Each layer's :class:`ConvShape`, the first on ``frame = (C, H, W)``, each next on the last's
    pooled output; raises ``ValueError`` naming a layer that does not fit."""
    c, h, w = frame
    shapes = []
    for i, layer in enumerate(layers, 1):
        try:
            shapes.append(ConvShape(c, h, w, layer.channels, layer.kernel, layer.stride, layer.padding, layer.pool))
        except ValueError as e:
            raise ValueError(f"conv layer {i} on {c}×{h}×{w} inputs: {e}") from None
        c, h, w = shapes[-1].next_shape
    return shapes


def conv_current(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shape: ConvShape) -> torch.Tensor:
    """The reference current ``[T, B, units_out]`` (channels-last) of input ``x [T, B, units_in]``
    (channels-last): one ``conv2d`` over all ``T·B`` rows."""
    steps, batch, _ = x.shape
    x4 = frames(x.reshape(steps * batch, x.shape[-1]), shape.c_in, shape.height, shape.width)
    out = F.conv2d(x4, weight, bias, stride=shape.stride, padding=shape.padding)
    return units(out).reshape(steps, batch, shape.units_out)


def frames(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """Rows ``[..., H·W·C]`` of channels-last units as frames ``[..., C, H, W]`` (a view: channels-last memory)."""
    return x.reshape(*x.shape[:-1], h, w, c).movedim(-1, -3)


def units(x: torch.Tensor) -> torch.Tensor:
    """Frames ``[..., C, H, W]`` as rows ``[..., H·W·C]`` of channels-last units (the inverse of :func:`frames`)."""
    c, h, w = x.shape[-3:]
    return x.movedim(-3, -1).reshape(*x.shape[:-3], h * w * c)  # sizes named: a batch of 0 frames reshapes too


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` frames as ``[T, B, H·W·C]`` rows of channels-last units."""
    if x.dim() != 5:
        raise ValueError(f"frames must have shape [T, B, C, H, W], got {tuple(x.shape)}")
    return units(x)


def nchw_order(c: int, h: int, w: int) -> torch.Tensor:
    """For each position of a ``[C, H, W]`` frame flattened in NCHW order (``c·H·W + y·W + x``, as torch's
    and NIR's ``Flatten`` do), its channels-last unit ``(y·W + x)·C + c``: the rows of a dense layer after
    the conv part, permuted for a library that flattens NCHW."""
    return frames(torch.arange(c * h * w), c, h, w).reshape(-1)


def pool_index(shape: ConvShape, device: torch.device | str = "cpu") -> torch.Tensor:
    """For each output unit of the layer, its pooled unit, or −1 where no whole window covers it
    (int64 ``[units_out]``)."""
    ho, wo, c = shape.out_height, shape.out_width, shape.c_out
    k = shape.pool
    hp, wp = ho // k, wo // k
    oy = torch.arange(ho, device=device).view(ho, 1, 1)
    ox = torch.arange(wo, device=device).view(1, wo, 1)
    o = torch.arange(c, device=device).view(1, 1, c)
    pooled = ((oy // k) * wp + ox // k) * c + o
    inside = (oy < hp * k) & (ox < wp * k)
    return torch.where(inside, pooled, torch.full_like(pooled, -1)).reshape(-1)


def pool_events(spikes: SpikeEvents, shape: ConvShape, lib: Any = None) -> SpikeEvents:
    """``spikes`` of the conv layer summed over ``pool × pool`` windows (``lzo::pool_events`` of ``lib``,
    by default ``torch.ops.lzo``; cost ``O(nnz)`` on the CPU): events over the pooled units with the counts
    as values."""
    if shape.pool == 1:
        return spikes
    ptr, col, val = (lib or torch.ops.lzo).pool_events(spikes.ptr, spikes.col, spikes.val,
                                                       [shape.c_out, shape.out_height, shape.out_width], shape.pool)
    return SpikeEvents(ptr, col, val, spikes.steps, spikes.batch, shape.units_next)


def pool_dense(s: torch.Tensor, shape: ConvShape) -> torch.Tensor:
    """The reference of :func:`pool_events` on ``[T, B, units_out]`` spikes: ``[T, B, units_next]``."""
    if shape.pool == 1:
        return s
    steps, batch, _ = s.shape
    fr = frames(s.reshape(steps * batch, s.shape[-1]), shape.c_out, shape.out_height, shape.out_width)
    pooled = F.avg_pool2d(fr, shape.pool, shape.pool, divisor_override=1)
    return units(pooled).reshape(steps, batch, shape.units_next)


def unpool_columns(col: torch.Tensor, shape: ConvShape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where the next layer must give the gradient of the layer's entries ``col``: their pooled units
    (int32, 0 where none) and a float mask of the covered ones (``None``: all are)."""
    if shape.pool == 1:
        return col, None
    # a list made on the GPU is allocated at its bound: the entries past its end are garbage, kept in range here
    mapped = pool_index(shape, col.device)[col.long().clamp(0, shape.units_out - 1)]
    inside = mapped >= 0
    return mapped.clamp_min(0).to(torch.int32), inside.to(torch.float32)


def unpool_dense(g: torch.Tensor, shape: ConvShape) -> torch.Tensor:
    """The gradient ``[rows, units_next]`` of the pooled spikes as the gradient of the layer's spikes
    ``[rows, units_out]`` (each unit the value of its window, 0 outside every window): a nearest
    upsampling on the channels-last frames (2.5x a plain copy; a 6-D broadcast copy is 6x)."""
    if shape.pool == 1:
        return g
    k = shape.pool
    c, hp, wp = shape.next_shape
    up = F.interpolate(frames(g, c, hp, wp), scale_factor=k, mode="nearest")
    if shape.out_height != hp * k or shape.out_width != wp * k:  # the dropped remainder gets 0
        up = F.pad(up, (0, shape.out_width - wp * k, 0, shape.out_height - hp * k))
    return units(up)


def square_size(value: Any) -> Any:
    """The one size of a square kernel, stride or padding as torch and NIR give it: ``K``, ``(K, K)`` or an
    array ``[K]`` / ``[K, K]``; ``None`` where the two axes differ. Not checked to be an integer."""
    if isinstance(value, (tuple, list, np.ndarray)):
        v = np.asarray(value).reshape(-1).tolist()
        return v[0] if len(v) in (1, 2) and v[0] == v[-1] else None
    return value
