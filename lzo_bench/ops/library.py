"""The op family from Python: one typed wrapper per event op, beside its fake (meta) kernel, as in
PyTorch's ``extension-cpp``; and the gate's arguments as the kernels take them.

The schemas are written once, in ``kernels/lif_common.h`` (``LZO_EVENT_OP_SCHEMAS``,
``LZO_CONV_OP_SCHEMAS``); the same ops exist as ``torch.ops.lzo`` (CPU and CUDA kernels) and
``torch.ops.lzo_sim`` (the CUDA kernels on CPU tensors, through the execution simulator). Each wrapper
takes that namespace as ``lib`` and names every argument, so a caller never passes twenty positional
values; each fake gives the op's output shapes from its inputs for ``torch.compile`` and ``opcheck``,
a list's length a dynamic size (lists an op makes on the GPU, and in the simulator, are allocated at
their bound ``B·T·N``; on the CPU they are exactly ``nnz`` long). docs/ARCHITECTURE.md §6.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import torch

from lzo_bench.core.conv import ConvShape
from lzo_bench.core.distributions import Laplace, Normal, TableDistribution, Uniform
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.gates import GateSpec, Method
from lzo_bench.core.rng import DrawKey

Tensor = torch.Tensor
METHOD_NONE = -1
#: the event ops, as the fake kernels, opcheck and the compile check know them
EVENT_OPS = ("to_events", "batch_events", "lif_events_forward", "readout_forward", "readout_backward",
             "lif_sparse_backward", "lif_dense_backward")
#: the convolutional layers' ops (``LZO_CONV_OP_SCHEMAS``)
CONV_OPS = ("conv_lif_forward", "conv_sparse_backward", "conv_dense_backward", "pool_events")
#: the ops with CUDA kernels (all but batch_events, which reads the dataset on the CPU)
CUDA_OPS = EVENT_OPS[:1] + EVENT_OPS[2:] + CONV_OPS


class UnsupportedGate(ValueError):
    """The gate has no C++ form (a user-defined surrogate); the torch backend must run it."""


class GateArgs(NamedTuple):
    """The gate as the kernels take it (the schemas' ``table, method … update``); ``method`` −1 is
    inference. A tuple, so ``table, *params = gate_args(…)`` unpacks it as the schemas order it."""

    table: Tensor
    method: int
    sample_kind: int
    surrogate_kind: int
    delta: float
    bth: float
    k: float
    band: float
    term_scale: float
    samples: int
    alpha: int
    seed: int
    update: int


class LayerLists(NamedTuple):
    """A hidden layer's forward: its spikes as events (``spike_ptr``, ``spike_col``), spike counts
    ``[B, N]``, the active list (``active_ptr``, ``active_col``, ``active_gate``: the entries whose gate
    is non-zero, sparse rules) and the dense gate ``[B·T, N]`` (the surrogate rule)."""

    spike_ptr: Tensor
    spike_col: Tensor
    counts: Tensor
    active_ptr: Tensor
    active_col: Tensor
    active_gate: Tensor
    dense_gate: Tensor


#: fake kernels by op name, registered for a namespace by :func:`register_fakes`
_FAKES: dict[str, Callable[..., Any]] = {}
_REGISTERED: set[str] = set()


class _Fake:
    """What a fake kernel needs to know of its namespace: whether lists are allocated at their bound."""

    def __init__(self, ns: str):
        self.ns = ns

    def bound_sized(self, t: Tensor) -> bool:
        return self.ns == "lzo_sim" or t.device.type == "cuda"

    @staticmethod
    def dyn() -> int:
        return torch.library.get_ctx().new_dynamic_size()

    def list_len(self, like: Tensor, bound: int) -> int:
        return bound if self.bound_sized(like) else self.dyn()


@contextmanager
def own_lists(lib: Any, own: bool = True) -> Iterator[None]:
    """Within (``own``): every list handed to ``lib``'s CUDA ops (or their simulator, ``torch.ops.lzo_sim``) was
    made by the extension itself — a layer's spikes and active list, a pooled list, the lists the forward saved
    for the backward (the first of them validated by the first layer's forward) — so the ops skip their
    device-side validation (``validate_list_kernel``, one launch per list); the host-side shape checks stay.
    A no-op where ``lib`` has no CUDA ops (the CPU ops check on the host). Thread-local in the extension: the
    autograd engine runs a CUDA backward in its own thread, which enters this itself."""
    try:
        op = lib.own_lists
    except (AttributeError, RuntimeError):
        op = None
    if op is None or not own:
        yield
        return
    old = op(True)
    try:
        yield
    finally:
        op(old)


def _fake(op: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def record(fn: Callable[..., Any]) -> Callable[..., Any]:
        _FAKES[op] = fn
        return fn
    return record


def register_fakes(ns: str) -> None:
    """Register every op's fake kernel in namespace ``ns`` (``lzo`` or ``lzo_sim``), once."""
    if ns in _REGISTERED:
        return
    _REGISTERED.add(ns)
    ctx = _Fake(ns)
    for op, fn in _FAKES.items():
        torch.library.register_fake(f"{ns}::{op}")(lambda *a, _fn=fn: _fn(ctx, *a))


# ---- to_events: a dense spike tensor [T, B, N] as row-pointer lists ----

def to_events(lib: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(ptr [T·B + 1], col [nnz], val [nnz])`` of the non-zeros of ``x [T, B, N]``, row ``t·B + b``."""
    return lib.to_events(x)


@_fake("to_events")
def _to_events(f: _Fake, x):
    torch._check(x.dim() == 3, lambda: "x must have shape [T, B, N]")
    nnz = f.dyn()
    return x.new_empty((x.shape[0] * x.shape[1] + 1,), dtype=torch.int32), x.new_empty((nnz,), dtype=torch.int32), \
        x.new_empty((nnz,), dtype=torch.float32)


# ---- batch_events: a batch's rows gathered from a dataset's event store ----

def batch_events(lib: Any, events: Tensor, offsets: Tensor, idx: Tensor, steps: int, units: int) -> tuple[Tensor, Tensor]:
    """``(ptr [B·T + 1], col)`` of samples ``idx`` of a dataset stored as ``events`` with ``offsets``."""
    return lib.batch_events(events, offsets, idx, steps, units)


@_fake("batch_events")
def _batch_events(f: _Fake, events, offsets, idx, steps, units):
    return idx.new_empty((idx.shape[0] * steps + 1,), dtype=torch.int32), idx.new_empty((f.dyn(),), dtype=torch.int32)


# ---- lif_events_forward / conv_lif_forward: event current, LIF scan, fused gate ----

def lif_events_forward(lib: Any, x: SpikeEvents, weight: Tensor, gate: GateArgs, beta: float, theta: float, *,
                       layer: int, current_mode: int) -> LayerLists:
    """A fully connected LIF layer on input events ``x`` (``weight [N_in(+1), N]``, a bias row last):
    ``u[t] = β·u[t−1] + I[t] − θ·s[t−1]``, ``s[t] = H(u[t] − θ)``, the gate where the rule is non-zero."""
    return LayerLists(*lib.lif_events_forward(x.ptr, x.col, x.val, weight, gate.table, x.steps, beta, theta,
                                              *gate[1:], layer, current_mode))


def _forward_fake(f: _Fake, x_ptr, weight, steps, method, n):
    rows = x_ptr.shape[0] - 1
    sparse = method >= Method.SPARSEGRAD.index
    spikes = f.list_len(weight, rows * n)
    active = f.list_len(weight, rows * n) if sparse else 0
    return (x_ptr.new_empty((rows + 1,)), x_ptr.new_empty((spikes,)), weight.new_empty((rows // steps, n)),
            x_ptr.new_empty((rows + 1 if sparse else 1,)), weight.new_empty((active,), dtype=torch.int32),
            weight.new_empty((active,)), weight.new_empty((rows, n) if method == Method.SURROGATE.index else (0,)))


@_fake("lif_events_forward")
def _lif_events_forward(f: _Fake, x_ptr, x_col, x_val, weight, table, steps, beta, theta, method, *rest):
    torch._check(weight.dim() == 2, lambda: "weight must have shape [N_in, N]")
    return _forward_fake(f, x_ptr, weight, steps, method, weight.shape[1])


def conv_lif_forward(lib: Any, x: SpikeEvents, weight: Tensor, shape: ConvShape, gate: GateArgs, beta: float,
                     theta: float, *, layer: int, current_mode: int) -> LayerLists:
    """A convolutional LIF layer (``weight [C_out, C_in·K·K(+1)]``, channels-last units): the same scan
    and gate as :func:`lif_events_forward` with the conv current of ``shape``."""
    return LayerLists(*lib.conv_lif_forward(x.ptr, x.col, x.val, weight, shape.kernel_args(), gate.table, x.steps,
                                            beta, theta, *gate[1:], layer, current_mode))


@_fake("conv_lif_forward")
def _conv_lif_forward(f: _Fake, x_ptr, x_col, x_val, weight, shape, table, steps, beta, theta, method, *rest):
    torch._check(weight.dim() == 2, lambda: "weight must have shape [C_out, C_in*K*K]")
    return _forward_fake(f, x_ptr, weight, steps, method, ConvShape(*shape).units_out)


# ---- pool_events: sum pooling of a conv layer's spike events (typed wrapper: core.conv.pool_events) ----

@_fake("pool_events")
def _pool_events(f: _Fake, ptr, col, val, frame, pool):
    # bound-sized (CUDA): pooling never adds events, and a pooled row holds each of its units once
    rows, (c, h, w) = ptr.shape[0] - 1, frame
    nnz = torch.sym_min(col.shape[0], rows * ((h // pool) * (w // pool) * c)) if f.bound_sized(col) else f.dyn()
    return ptr.new_empty(ptr.shape), col.new_empty((nnz,)), col.new_empty((nnz,), dtype=torch.float32)


# ---- readout_forward / readout_backward: the leaky readout ----

def readout_forward(lib: Any, s: SpikeEvents, w_out: Tensor, beta_out: float) -> Tensor:
    """``o[t] = β_r·o[t−1] + (1 − β_r)·(s[t] @ W_out)``, ``[T, B, C]``."""
    return lib.readout_forward(s.ptr, s.col, w_out, s.steps, beta_out)


@_fake("readout_forward")
def _readout_forward(f: _Fake, s_ptr, s_col, w_out, steps, beta_out):
    return w_out.new_empty((steps, (s_ptr.shape[0] - 1) // steps, w_out.shape[1]))


def readout_backward(lib: Any, grad_o: Tensor, s_ptr: Tensor, s_col: Tensor, w_out: Tensor, beta_out: float,
                     active_ptr: Tensor, active_col: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂L/∂W_out, ∂L/∂a [B·T, C], ∂L/∂s at the last layer's active entries)`` (empty lists: dense rule)."""
    return lib.readout_backward(grad_o, s_ptr, s_col, w_out, beta_out, active_ptr, active_col)


@_fake("readout_backward")
def _readout_backward(f: _Fake, grad_o, s_ptr, s_col, w_out, beta_out, active_ptr, active_col):
    rows = grad_o.shape[0] * grad_o.shape[1]
    n_act = active_col.shape[0] if active_ptr.numel() > 0 else 0
    return w_out.new_empty(w_out.shape), w_out.new_empty((rows, w_out.shape[1])), w_out.new_empty((n_act,))


# ---- lif_sparse_backward / conv_sparse_backward: the sparse rules' backward ----

class BackwardLists(NamedTuple):
    """What a layer's sparse backward reads: ∂L/∂s at its active entries (``grad_active``), its active
    list, the gradient of its spike counts, and its input events."""

    grad_active: Tensor
    active_ptr: Tensor
    active_col: Tensor
    active_gate: Tensor
    count_grad: Tensor
    x: SpikeEvents


def lif_sparse_backward(lib: Any, b: BackwardLists, weight: Tensor, beta: float, prev_ptr: Tensor,
                        prev_col: Tensor) -> tuple[Tensor, Tensor]:
    """``(∂L/∂W, ∂L/∂s of the layer below at its entries prev_ptr/prev_col)``, with
    ``∂L/∂u[t] = Σ_{t'≥t} β^{t'−t} e[t']`` and ``∂L/∂W = Σ_t x̄[t]ᵀ e[t]`` (docs/ARCHITECTURE.md §5)."""
    return lib.lif_sparse_backward(b.grad_active, b.active_ptr, b.active_col, b.active_gate, b.count_grad, b.x.ptr,
                                   b.x.col, b.x.val, weight, beta, b.x.steps, prev_ptr, prev_col)


@_fake("lif_sparse_backward")
def _lif_sparse_backward(f: _Fake, grad_active, active_ptr, active_col, active_gate, count_grad, x_ptr, x_col, x_val,
                         weight, beta, steps, prev_ptr, prev_col):
    n_prev = prev_col.shape[0] if prev_ptr.numel() > 0 else 0
    return weight.new_empty(weight.shape), weight.new_empty((n_prev,))


def conv_sparse_backward(lib: Any, b: BackwardLists, weight: Tensor, shape: ConvShape, beta: float, prev_ptr: Tensor,
                         prev_col: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`lif_sparse_backward` with the connectivity of the conv layer ``shape``."""
    return lib.conv_sparse_backward(b.grad_active, b.active_ptr, b.active_col, b.active_gate, b.count_grad, b.x.ptr,
                                    b.x.col, b.x.val, weight, shape.kernel_args(), beta, b.x.steps, prev_ptr, prev_col)


@_fake("conv_sparse_backward")
def _conv_sparse_backward(f: _Fake, grad_active, active_ptr, active_col, active_gate, count_grad, x_ptr, x_col, x_val,
                          weight, shape, beta, steps, prev_ptr, prev_col):
    return weight.new_empty(weight.shape), weight.new_empty((prev_col.shape[0] if prev_ptr.numel() > 0 else 0,))


# ---- lif_dense_backward / conv_dense_backward: the surrogate rule's backward ----

def lif_dense_backward(lib: Any, grad: Tensor, gate: Tensor, count_grad: Tensor, x: SpikeEvents, weight: Tensor,
                       beta: float, *, input_grad: bool, current_mode: int) -> tuple[Tensor, Tensor]:
    """``(∂L/∂W, ∂L/∂x [B·T, N_in] or empty)`` from ``∂L/∂s [B·T, N]`` and the dense gate."""
    return lib.lif_dense_backward(grad, gate, count_grad, x.ptr, x.col, x.val, weight, beta, x.steps, input_grad,
                                  current_mode)


@_fake("lif_dense_backward")
def _lif_dense_backward(f: _Fake, grad, gate, count_grad, x_ptr, x_col, x_val, weight, beta, steps, input_grad,
                        current_mode):
    return weight.new_empty(weight.shape), weight.new_empty((grad.shape[0], weight.shape[0]) if input_grad else (0,))


def conv_dense_backward(lib: Any, grad: Tensor, gate: Tensor, count_grad: Tensor, x: SpikeEvents, weight: Tensor,
                        shape: ConvShape, beta: float, *, input_grad: bool, current_mode: int) -> tuple[Tensor, Tensor]:
    """:func:`lif_dense_backward` with the connectivity of the conv layer ``shape``."""
    return lib.conv_dense_backward(grad, gate, count_grad, x.ptr, x.col, x.val, weight, shape.kernel_args(), beta,
                                   x.steps, input_grad, current_mode)


@_fake("conv_dense_backward")
def _conv_dense_backward(f: _Fake, grad, gate, count_grad, x_ptr, x_col, x_val, weight, shape, beta, steps, input_grad,
                         current_mode):
    dx = (grad.shape[0], ConvShape(*shape).units_in) if input_grad else (0,)
    return weight.new_empty(weight.shape), weight.new_empty(dx)


# ---- the gate's arguments ----

def _kinds(spec: GateSpec) -> tuple[int, int, float]:
    """``(sample_kind, surrogate_kind, k)`` of the kernels' enums for this gate."""
    dist = spec.dist
    closed = {Normal: 0, Uniform: 1, Laplace: 2}
    if type(dist) in closed:
        kind = closed[type(dist)]
        return kind, kind, 0.0
    if isinstance(dist, TableDistribution):
        params = dict(dist.surrogate.params)  # type: ignore[union-attr]
        surr = {"sigmoid": 3, "fast-sigmoid": 4}.get(dist.surrogate.name)  # type: ignore[union-attr]
        if surr is None:
            raise UnsupportedGate(f"surrogate {dist.surrogate.name!r} has no C++ form")  # type: ignore[union-attr]
        return 3, surr, float(params["k"])
    raise UnsupportedGate(f"distribution {dist.name!r} has no C++ form")


def check_supported(spec: GateSpec) -> None:
    """Raise :class:`UnsupportedGate` where the kernels have no form of ``spec``'s gate."""
    _kinds(spec)


def gate_args(spec: GateSpec | None, key: DrawKey | None, device: torch.device) -> GateArgs:
    """The gate as the kernels take it; ``spec=None`` is inference (method −1)."""
    if spec is None:
        return GateArgs(torch.empty(0, device=device), METHOD_NONE, 0, 0, 1.0, 1.0, 0.0, 0.0, 1.0, 1, 1, 0, 0)
    sample_kind, surrogate_kind, k = _kinds(spec)
    table = spec.dist.table.to(device) if isinstance(spec.dist, TableDistribution) else torch.empty(0, device=device)
    band = spec.band()
    seed, update = (key or DrawKey(0, 0)).words
    return GateArgs(table, spec.method.index, sample_kind, surrogate_kind, spec.delta, spec.bth, k,
                    band if band != float("inf") else 3.0e38, spec.dist.scale / spec.samples, spec.samples,
                    spec.dist.alpha, seed, update)
