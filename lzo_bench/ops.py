"""The ``lzo`` C++/CUDA event ops: JIT build, fake (meta) kernels, and the gate's arguments.

One op family, the event ops (schemas once in ``kernels/lif_common.h``, ``LZO_EVENT_OP_SCHEMAS``):
``to_events``, ``batch_events``, ``lif_events_forward``, ``readout_forward``, ``readout_backward``,
``lif_sparse_backward`` and ``lif_dense_backward`` — CPU kernels in ``kernels/snn_cpu.cpp``, CUDA
kernels in ``kernels/snn_cuda_kernels.cuh`` (host side ``snn_cuda.cu``), and the same CUDA kernels on
CPU tensors through the CUDA execution simulator as ``torch.ops.lzo_sim`` (:func:`build_sim`). They
are compiled on first use with :func:`torch.utils.cpp_extension.load` (ninja), cached by PyTorch
under ``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR`` overrides). CUDA sources are compiled
when a GPU is visible and nvcc plus a CUDA build of torch exist, or when asked for (:func:`build`
``cuda=True``, as the compile-only CI check does).

Autograd is not registered per op: the network's one autograd node
(:class:`lzo_bench.event_network._EventNetwork`) chains the forward and backward ops, since a sparse
rule hands gradients between layers as values on the active lists, which no per-op derivative sees.
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

import torch

from lzo_bench.conv import ConvShape
from lzo_bench.distributions import Laplace, Normal, TableDistribution, Uniform
from lzo_bench.gates import GateSpec, Method
from lzo_bench.rng import DrawKey

#: the CPU ops' translation units (snn_cpu.cpp defines the schemas; each file registers the ops it defines)
CPU_SOURCES = ("snn_cpu.cpp", "cpu_events.cpp", "cpu_lif.cpp", "cpu_conv.cpp")
KERNEL_FILES = ("lzo_math.h", "lif_common.h", "philox_avx2.h", "cpu_lists.h", "cpu_simd.h", "cpu_sparse_gate.h",
                "cpu_layer_map.h", *CPU_SOURCES, "snn_cuda.cu", "snn_cuda_kernels.cuh", "cuda_sim.h",
                "snn_cuda_sim.cpp")
#: threads per block of the simulated CUDA kernels (a multiple of 32: two warps keep the cross-warp ranking)
SIM_THREADS = 64
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
    files = list(CPU_SOURCES)
    if cuda:
        reason = cuda_toolchain()
        if reason:
            raise RuntimeError(f"cannot compile the CUDA ops: {reason}")
        files.append("snn_cuda.cu")
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # no device to ask for its arch
    ext = _load(f"ops_{'cuda' if cuda else 'cpu'}", files, ["-O3", "-fopenmp"], ["-fopenmp"], cuda, verbose,
                f"the C++{'/CUDA' if cuda else ''} ops for this machine and torch {torch.__version__} "
                f"(first run, about {'1 min' if cuda else '20 s'}; cached afterwards)")
    _register_fakes("lzo")
    return ext


@lru_cache(maxsize=None)
def build_sim(verbose: bool = False) -> Extension:
    """Compile (once, cached) and load the CUDA kernels for the CUDA execution simulator
    (``kernels/cuda_sim.h``): ``torch.ops.lzo_sim.*``, the event ops' schemas on CPU tensors, run the
    kernels of ``snn_cuda_kernels.cuh`` with blocks of :data:`SIM_THREADS` OS threads."""
    build(cuda=False)  # the CPU ops first: the simulated ops take lists they make
    ext = _load("sim", ["snn_cuda_sim.cpp"], ["-O2", "-pthread", f"-DLZO_THREADS={SIM_THREADS}"], ["-pthread"], False,
                verbose, "the CUDA kernels for the simulator (first run, about 30 s)")
    _register_fakes("lzo_sim")
    return ext


def _load(kind: str, files: list[str], cflags: list[str], ldflags: list[str], cuda: bool, verbose: bool,
          what: str) -> Extension:
    """Compile (cached by torch) and load ``files`` of ``kernels/`` as the extension
    ``lzo_<kind>_<CPU tag>_<torch tag>``, without FMA contraction; ``what`` names it on a first build."""
    cpp_extension = _cpp_extension()
    src = kernels_dir()
    arch, tag = _host_arch()
    name = f"lzo_{kind}_{tag}_{_torch_tag()}"
    if not _built(cpp_extension, name):
        print(f"lzo-bench: compiling {what}…", file=sys.stderr, flush=True)
    path = cpp_extension.load(
        name=name,
        sources=[str(src / f) for f in files],
        extra_include_paths=[str(src)],
        extra_cflags=[*cflags, "-ffp-contract=off", *arch],
        extra_ldflags=ldflags,
        extra_cuda_cflags=["-O3", "--fmad=false"],
        is_python_module=False,
        with_cuda=cuda,
        verbose=verbose,
    )
    return Extension(cuda=cuda, path=str(path))


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


_REGISTERED: set[str] = set()


def _register_fakes(ns: str) -> None:
    """Fake (meta) kernels of the event ops in namespace ``ns``: output shapes from input shapes, a
    list's length a dynamic size. Lists an op makes on the GPU (and in the simulator, ``lzo_sim``)
    are allocated at their bound ``B·T·N``; on the CPU they are exactly ``nnz`` long."""
    if ns in _REGISTERED:
        return
    _REGISTERED.add(ns)

    def bound_sized(t: torch.Tensor) -> bool:
        return ns == "lzo_sim" or t.device.type == "cuda"

    def dyn() -> int:
        return torch.library.get_ctx().new_dynamic_size()

    @torch.library.register_fake(f"{ns}::to_events")
    def _to_events(x):
        torch._check(x.dim() == 3, lambda: "x must have shape [T, B, N]")
        nnz = dyn()
        return x.new_empty((x.shape[0] * x.shape[1] + 1,), dtype=torch.int32), x.new_empty((nnz,), dtype=torch.int32), \
            x.new_empty((nnz,), dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::batch_events")
    def _batch_events(events, offsets, idx, steps, units):
        return idx.new_empty((idx.shape[0] * steps + 1,), dtype=torch.int32), idx.new_empty((dyn(),), dtype=torch.int32)

    @torch.library.register_fake(f"{ns}::lif_events_forward")
    def _events_forward(x_ptr, x_col, x_val, weight, table, steps, beta, theta, method, sample_kind, surrogate_kind,
                        delta, bth, k, band, term_scale, samples, alpha, seed, update, layer, current_mode):
        torch._check(weight.dim() == 2, lambda: "weight must have shape [N_in, N]")
        rows, n = x_ptr.shape[0] - 1, weight.shape[1]
        sparse = method >= Method.SPARSEGRAD.index
        i32 = dict(dtype=torch.int32)
        spikes = rows * n if bound_sized(weight) else dyn()
        active = (rows * n if bound_sized(weight) else dyn()) if sparse else 0
        return (x_ptr.new_empty((rows + 1,)), x_ptr.new_empty((spikes,)), weight.new_empty((rows // steps, n)),
                x_ptr.new_empty((rows + 1 if sparse else 1,)), weight.new_empty((active,), **i32),
                weight.new_empty((active,)), weight.new_empty((rows, n) if method == Method.SURROGATE.index else (0,)))

    @torch.library.register_fake(f"{ns}::readout_forward")
    def _readout_forward(s_ptr, s_col, w_out, steps, beta_out):
        return w_out.new_empty((steps, (s_ptr.shape[0] - 1) // steps, w_out.shape[1]))

    @torch.library.register_fake(f"{ns}::readout_backward")
    def _readout_backward(grad_o, s_ptr, s_col, w_out, beta_out, active_ptr, active_col):
        rows = grad_o.shape[0] * grad_o.shape[1]
        n_act = active_col.shape[0] if active_ptr.numel() > 0 else 0
        return w_out.new_empty(w_out.shape), w_out.new_empty((rows, w_out.shape[1])), w_out.new_empty((n_act,))

    @torch.library.register_fake(f"{ns}::lif_sparse_backward")
    def _sparse_backward(grad_active, active_ptr, active_col, active_gate, count_grad, x_ptr, x_col, x_val, weight,
                         beta, steps, prev_ptr, prev_col):
        n_prev = prev_col.shape[0] if prev_ptr.numel() > 0 else 0
        return weight.new_empty(weight.shape), weight.new_empty((n_prev,))

    @torch.library.register_fake(f"{ns}::lif_dense_backward")
    def _dense_backward(grad, gate, count_grad, x_ptr, x_col, x_val, weight, beta, steps, input_grad, current_mode):
        return weight.new_empty(weight.shape), weight.new_empty((grad.shape[0], weight.shape[0]) if input_grad else (0,))

    @torch.library.register_fake(f"{ns}::conv_lif_forward")
    def _conv_forward(x_ptr, x_col, x_val, weight, shape, table, steps, beta, theta, method, *rest):
        torch._check(weight.dim() == 2, lambda: "weight must have shape [C_out, C_in*K*K]")
        rows, n = x_ptr.shape[0] - 1, ConvShape(*shape).units_out
        sparse = method >= Method.SPARSEGRAD.index
        spikes = rows * n if bound_sized(weight) else dyn()
        active = (rows * n if bound_sized(weight) else dyn()) if sparse else 0
        return (x_ptr.new_empty((rows + 1,)), x_ptr.new_empty((spikes,)), weight.new_empty((rows // steps, n)),
                x_ptr.new_empty((rows + 1 if sparse else 1,)), weight.new_empty((active,), dtype=torch.int32),
                weight.new_empty((active,)), weight.new_empty((rows, n) if method == Method.SURROGATE.index else (0,)))

    @torch.library.register_fake(f"{ns}::pool_events")
    def _pool_events(ptr, col, val, frame, pool):
        nnz = col.shape[0] if bound_sized(col) else dyn()  # pooling never adds events: the input's length bounds it
        return ptr.new_empty(ptr.shape), col.new_empty((nnz,)), col.new_empty((nnz,), dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::conv_sparse_backward")
    def _conv_sparse_backward(grad_active, active_ptr, active_col, active_gate, count_grad, x_ptr, x_col, x_val,
                              weight, shape, beta, steps, prev_ptr, prev_col):
        return weight.new_empty(weight.shape), weight.new_empty((prev_col.shape[0] if prev_ptr.numel() > 0 else 0,))

    @torch.library.register_fake(f"{ns}::conv_dense_backward")
    def _conv_dense_backward(grad, gate, count_grad, x_ptr, x_col, x_val, weight, shape, beta, steps, input_grad,
                             current_mode):
        dx = (grad.shape[0], ConvShape(*shape).units_in) if input_grad else (0,)
        return weight.new_empty(weight.shape), weight.new_empty(dx)


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
