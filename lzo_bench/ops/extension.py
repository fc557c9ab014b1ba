"""The ``lzo`` C++/CUDA event ops' JIT build: the sources of ``kernels/`` compiled on first use with
:func:`torch.utils.cpp_extension.load` (ninja), cached by PyTorch under ``~/.cache/torch_extensions``
(``TORCH_EXTENSIONS_DIR`` overrides).

The CPU kernels are ``kernels/cpu_*.cpp`` (``snn_cpu.cpp`` defines the schemas, written once in
``kernels/lif_common.h``), the CUDA kernels ``kernels/snn_cuda_kernels.cuh`` with their host side
``snn_cuda.cu``, and the same CUDA kernels on CPU tensors through the CUDA execution simulator as
``torch.ops.lzo_sim`` (:func:`build_sim`). CUDA sources are compiled when a GPU is visible and nvcc
plus a CUDA build of torch exist, or when asked for (:func:`build` ``cuda=True``, as the compile-only
CI check does). The ops' typed wrappers and fake kernels are :mod:`lzo_bench.ops.library`.

Autograd is not registered per op: the network's one autograd node
(:class:`lzo_bench.ops.event_network._EventNetwork`) chains the forward and backward ops, since a sparse
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

from lzo_bench.ops.library import register_fakes

#: the CPU ops' translation units (snn_cpu.cpp defines the schemas; each file registers the ops it defines)
CPU_SOURCES = ("snn_cpu.cpp", "cpu_events.cpp", "cpu_lif.cpp", "cpu_conv.cpp")
KERNEL_FILES = ("lzo_math.h", "lif_common.h", "philox_avx2.h", "cpu_lists.h", "cpu_simd.h", "cpu_sparse_gate.h",
                "cpu_layer_map.h", *CPU_SOURCES, "snn_cuda.cu", "snn_cuda_kernels.cuh", "cuda_sim.h",
                "snn_cuda_sim.cpp")
#: threads per block of the simulated CUDA kernels (a multiple of 32: two warps keep the cross-warp ranking)
SIM_THREADS = 64
def _cpp_extension():
    """``torch.utils.cpp_extension``, without its import-time warning about a missing CUDA runtime
    (expected on CPU machines; :func:`cuda_toolchain` reports what matters)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def kernels_dir() -> Path:
    """``kernels/`` of a checkout, or the copy packaged as ``lzo_bench/kernels`` in a wheel."""
    package = Path(__file__).resolve().parent.parent  # lzo_bench/
    for candidate in (package.parent / "kernels", package / "kernels"):
        if all((candidate / f).is_file() for f in KERNEL_FILES):
            return candidate
    raise FileNotFoundError(f"kernel sources {', '.join(KERNEL_FILES)} not found beside {package}")


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
    register_fakes("lzo")
    return ext


@lru_cache(maxsize=None)
def build_sim(verbose: bool = False) -> Extension:
    """Compile (once, cached) and load the CUDA kernels for the CUDA execution simulator
    (``kernels/cuda_sim.h``): ``torch.ops.lzo_sim.*``, the event ops' schemas on CPU tensors, run the
    kernels of ``snn_cuda_kernels.cuh`` with blocks of :data:`SIM_THREADS` OS threads."""
    build(cuda=False)  # the CPU ops first: the simulated ops take lists they make
    ext = _load("sim", ["snn_cuda_sim.cpp"], ["-O2", "-pthread", f"-DLZO_THREADS={SIM_THREADS}"], ["-pthread"], False,
                verbose, "the CUDA kernels for the simulator (first run, about 30 s)")
    register_fakes("lzo_sim")
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
