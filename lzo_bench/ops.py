"""The ``lzo`` C++/CUDA ops: JIT build, fake (meta) kernels, autograd, and the layer function.

``torch.ops.lzo.lif_forward`` / ``lif_backward`` are defined in ``kernels/lif_cpu.cpp`` (schema and
CPU kernels) and ``kernels/lif_cuda.cu`` (CUDA kernels); see those files for the math. They are
compiled on first use with :func:`torch.utils.cpp_extension.load` (ninja), cached by PyTorch under
``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR`` overrides). CUDA sources are compiled
when a GPU is visible and nvcc plus a CUDA build of torch exist, or when asked for
(:func:`build` ``cuda=True``, as the compile-only CI check does).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

from lzo_bench.distributions import Laplace, Normal, TableDistribution, Uniform
from lzo_bench.gates import GateSpec, Method
from lzo_bench.rng import DrawKey

KERNEL_FILES = ("lzo_math.h", "lif_common.h", "lif_cpu.cpp", "snn_cpu.cpp", "lif_cuda.cu", "snn_cuda.cu",
                "snn_cuda_kernels.cuh", "cuda_sim.h", "snn_cuda_sim.cpp")
#: threads per block of the simulated CUDA kernels (a multiple of 32: two warps keep the cross-warp ranking)
SIM_THREADS = 64
METHOD_NONE = -1


class UnsupportedGate(ValueError):
    """The gate has no C++ form (a user-defined surrogate); the torch backend must run it."""


def _cpp_extension():
    """``torch.utils.cpp_extension``, without its import-time warning about a missing CUDA runtime
    (expected on CPU machines; :func:`cuda_toolchain` reports what matters)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def kernels_dir() -> Path:
    """``kernels/`` of a checkout, or the copy packaged as ``lzo_bench/kernels`` in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "kernels", here / "kernels"):
        if all((candidate / f).is_file() for f in KERNEL_FILES):
            return candidate
    raise FileNotFoundError(f"kernel sources {', '.join(KERNEL_FILES)} not found beside {here}")


def cuda_toolchain() -> str | None:
    """Why CUDA sources cannot be compiled here, or ``None`` if they can."""
    cpp_extension = _cpp_extension()
    if torch.version.cuda is None:
        return "this torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None or shutil.which("nvcc") is None and not (
        Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
    ).exists():
        return "nvcc / CUDA_HOME not found"
    return None


@dataclass(frozen=True)
class Extension:
    cuda: bool
    path: str


#: builds that failed in this process, by ``cuda``: raised again instead of compiling again (every
#: backend selection used to recompile, 5-20 s each, seen on the GPU machine)
_FAILED: dict[bool, RuntimeError] = {}


def build(cuda: bool | None = None, verbose: bool = False) -> Extension:
    """Compile (once, cached) and load the ops; ``cuda=None`` means: when a GPU can use them. A
    failed build is raised again, without recompiling, for the rest of the process."""
    if cuda is None:
        cuda = torch.cuda.is_available() and cuda_toolchain() is None
    if cuda in _FAILED:
        raise _FAILED[cuda]
    try:
        return _build(cuda, verbose)
    except Exception as e:
        _FAILED[cuda] = e if isinstance(e, RuntimeError) else RuntimeError(str(e))
        raise


@lru_cache(maxsize=None)
def _build(cuda: bool, verbose: bool) -> Extension:
    cpp_extension = _cpp_extension()
    src = kernels_dir()
    sources = [str(src / "lif_cpu.cpp"), str(src / "snn_cpu.cpp")]
    if cuda:
        reason = cuda_toolchain()
        if reason:
            raise RuntimeError(f"cannot compile the CUDA ops: {reason}")
        sources += [str(src / "lif_cuda.cu"), str(src / "snn_cuda.cu")]
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # no device to ask for its arch
    arch, tag = _host_arch()
    name = f"lzo_ops_{'cuda' if cuda else 'cpu'}_{tag}_{_torch_tag()}"
    if not _built(cpp_extension, name):
        print(f"lzo-bench: compiling the C++{'/CUDA' if cuda else ''} ops for this machine and torch {torch.__version__} "
              f"(first run, about {'1 min' if cuda else '20 s'}; cached afterwards)…", file=sys.stderr, flush=True)
    path = cpp_extension.load(
        name=name,
        sources=sources,
        extra_include_paths=[str(src)],
        extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off", *arch],
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", "--fmad=false"],
        is_python_module=False,
        with_cuda=cuda,
        verbose=verbose,
    )
    _register_python_side()
    return Extension(cuda=cuda, path=str(path))


@lru_cache(maxsize=None)
def build_sim(verbose: bool = False) -> Extension:
    """Compile (once, cached) and load the CUDA kernels for the CUDA execution simulator
    (``kernels/cuda_sim.h``): ``torch.ops.lzo_sim.*``, the event ops' schemas on CPU tensors, run the
    kernels of ``snn_cuda_kernels.cuh`` with blocks of :data:`SIM_THREADS` OS threads."""
    build(cuda=False)  # the CPU ops first: the simulated ops take lists they make
    cpp_extension = _cpp_extension()
    src = kernels_dir()
    arch, tag = _host_arch()
    name = f"lzo_sim_{tag}_{_torch_tag()}"
    if not _built(cpp_extension, name):
        print("lzo-bench: compiling the CUDA kernels for the simulator (first run, about 30 s)…", file=sys.stderr, flush=True)
    path = cpp_extension.load(
        name=name,
        sources=[str(src / "snn_cuda_sim.cpp")],
        extra_include_paths=[str(src)],
        extra_cflags=["-O2", "-pthread", "-ffp-contract=off", f"-DLZO_THREADS={SIM_THREADS}", *arch],
        extra_ldflags=["-pthread"],
        is_python_module=False,
        with_cuda=False,
        verbose=verbose,
    )
    return Extension(cuda=False, path=str(path))


def _torch_tag() -> str:
    """The torch build the extension is compiled against (version, CUDA, C++ ABI), so two
    environments sharing ``~/.cache/torch_extensions`` keep one build each instead of rebuilding
    each other's."""
    key = f"{torch.__version__}|{torch.version.cuda}|{torch.compiled_with_cxx11_abi()}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def _built(cpp_extension, name: str) -> bool:
    """Whether a compiled library for ``name`` is already in the extensions cache."""
    try:
        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # a private helper: if it moves, only the message is lost
        return True
    return any(folder.glob(f"{name}*.so"))


def _host_arch() -> tuple[list[str], str]:
    """``-march=native`` on x86-64 (AVX2/AVX-512 for the sparse loops: 1.4× on dW, measured) and a
    tag of this CPU's feature flags, so a build cache shared between machines never hands one
    CPU's binary to another."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return [], "generic"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return [], "generic"
    return ["-march=native"], hashlib.sha1(flags.encode()).hexdigest()[:10]


_REGISTERED = False


def _register_python_side() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True

    @torch.library.register_fake("lzo::lif_forward")
    def _forward_fake(x, weight, table, prev_idx, beta, theta, method, sample_kind, surrogate_kind,
                      delta, bth, k, band, term_scale, samples, alpha, seed, update, layer):
        torch._check(weight.device == x.device, lambda: f"lzo::lif_forward: weight is on {weight.device} "
                     f"but x is on {x.device}; move both to one device")
        torch._check(x.dim() == 3, lambda: "x must have shape [T, B, N_in]")
        torch._check(weight.dim() == 2 and weight.shape[0] == x.shape[2], lambda: "weight must be [N_in, N]")
        steps, batch, _ = x.shape
        n = weight.shape[1]
        spikes = x.new_empty((steps, batch, n))
        if method <= Method.SURROGATE.index:
            gate = x.new_empty((steps, batch, n) if method == Method.SURROGATE.index else (0,))
            return spikes, x.new_empty((0,), dtype=torch.int64), gate, x.new_empty((0,), dtype=torch.int64), x.new_empty((0,))
        ctx = torch.library.get_ctx()
        nnz, n_events = ctx.new_dynamic_size(), ctx.new_dynamic_size()
        return (spikes, x.new_empty((nnz,), dtype=torch.int64), x.new_empty((nnz,)),
                x.new_empty((n_events,), dtype=torch.int64), x.new_empty((n_events,)))

    @torch.library.register_fake("lzo::lif_backward")
    def _backward_fake(grad_spikes, x, input_idx, input_val, weight, active_idx, active_gate, prev_idx, beta,
                       method, input_grad):
        steps, batch, _ = grad_spikes.shape
        n_in = weight.shape[0]
        dx = grad_spikes.new_empty((steps, batch, n_in)) if input_grad else grad_spikes.new_empty((0,))
        return dx, weight.new_empty(weight.shape)

    def _setup_context(ctx, inputs, output):
        x, weight, _table, prev_idx, beta, *_rest = inputs
        method = inputs[6]
        _spikes, idx, gate, in_idx, in_val = output
        ctx.beta, ctx.method = beta, method
        ctx.x_shape = x.shape
        dense_x = x if method == Method.SURROGATE.index else None  # sparse rules keep only x's events
        ctx.save_for_backward(dense_x, in_idx, in_val, weight, idx, gate, prev_idx)

    def _backward(ctx, grad_spikes, *_unused):
        x, in_idx, in_val, weight, idx, gate, prev_idx = ctx.saved_tensors
        input_grad = ctx.needs_input_grad[0]
        grads = [None] * 19
        if ctx.method == METHOD_NONE:  # no gate: the Heaviside's true derivative, 0 a.e.
            grads[0] = weight.new_zeros(ctx.x_shape) if input_grad else None
            grads[1] = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
            return tuple(grads)
        if x is None:
            x = weight.new_empty((0,))
        dx, dw = torch.ops.lzo.lif_backward(grad_spikes, x, in_idx, in_val, weight, idx, gate, prev_idx,
                                            ctx.beta, ctx.method, input_grad)
        grads[0] = dx if input_grad else None
        grads[1] = dw if ctx.needs_input_grad[1] else None
        return tuple(grads)

    torch.library.register_autograd("lzo::lif_forward", _backward, setup_context=_setup_context)


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
    _kinds(spec)


class LayerOps(NamedTuple):
    """Outputs of ``lzo::lif_forward``."""

    spikes: torch.Tensor       # [T, B, N]
    active_idx: torch.Tensor   # sparse rules: flat (t·B + b)·N + j of non-zero gates, sorted
    active_gate: torch.Tensor  # their γ (sparse) or γ for all entries [T, B, N] (dense rule)
    input_idx: torch.Tensor    # sparse rules: non-zero entries of x, flat (t·B + b)·N_in + i
    input_val: torch.Tensor    # their values


def gate_args(spec: GateSpec | None, key: DrawKey | None, device: torch.device) -> tuple:
    """The gate as the kernels take it: ``(table, method, sample_kind, surrogate_kind, delta, bth, k,
    band, term_scale, samples, alpha, seed, update)``; ``spec=None`` is inference (method −1)."""
    if spec is None:
        return (torch.empty(0, device=device), METHOD_NONE, 0, 0, 1.0, 1.0, 0.0, 0.0, 1.0, 1, 1, 0, 0)
    sample_kind, surrogate_kind, k = _kinds(spec)
    table = spec.dist.table.to(device) if isinstance(spec.dist, TableDistribution) else torch.empty(0, device=device)
    band = spec.band()
    seed, update = (key or DrawKey(0, 0)).words
    return (table, spec.method.index, sample_kind, surrogate_kind, spec.delta, spec.bth, k,
            band if band != float("inf") else 3.0e38, spec.dist.scale / spec.samples, spec.samples,
            spec.dist.alpha, seed, update)


def lif_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    theta: float,
    spec: GateSpec | None,
    key: DrawKey | None,
    layer: int,
    prev_idx: torch.Tensor | None = None,
) -> LayerOps:
    """``torch.ops.lzo.lif_forward`` with the gate spelled out as the kernels take it."""
    table, *params = gate_args(spec, key, x.device)
    return LayerOps(*torch.ops.lzo.lif_forward(x, weight, table, prev_idx, beta, theta, *params, layer))
