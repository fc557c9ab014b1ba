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
import re
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


def is_cuda_toolkit(root: str | Path | None) -> bool:
    """Whether ``root`` is a CUDA toolkit torch can build and link with: ``bin/nvcc`` and the runtime
    library in ``lib64/`` or ``targets/*/lib/`` (torch links ``-L$CUDA_HOME/lib64``)."""
    if not root:
        return False
    root = Path(root)
    return (root / "bin" / "nvcc").is_file() and (any((root / "lib64").glob("libcudart*"))
                                                  or any(root.glob("targets/*/lib/libcudart*")))


def _real_nvcc(nvcc: Path, depth: int = 4) -> Path:
    """The nvcc behind a symlink or a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``),
    wrappers followed at most ``depth`` deep (a loop of wrappers ends there)."""
    real = nvcc.resolve()
    try:
        with real.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return real
    if depth > 0 and head.startswith(b"#!"):
        for target in re.findall(rb"(/[^\s\"'`;|&]*/bin/nvcc)(?![\w.-])", head):
            path = Path(target.decode(errors="replace"))
            if path.is_file() and path.resolve() != real:
                return _real_nvcc(path, depth - 1)
    return real


def find_cuda_home(environ=None, which=None, default: str = "/usr/local/cuda") -> tuple[str | None, str]:
    """The CUDA toolkit to build with and where it came from: ``$CUDA_HOME`` / ``$CUDA_PATH`` when it is
    a toolkit (:func:`is_cuda_toolkit`), else the toolkit of the real nvcc behind the one on ``PATH``
    (symlinks and wrapper scripts resolved), else ``default``; ``(None, why)`` when none is."""
    environ, which = os.environ if environ is None else environ, which or shutil.which
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            if is_cuda_toolkit(environ[var]):
                return str(Path(environ[var])), f"${var}"
            tried.append(f"${var}={environ[var]}")
    nvcc = which("nvcc")
    if nvcc:
        real = _real_nvcc(Path(nvcc))
        root = real.parent.parent
        if is_cuda_toolkit(root):
            return str(root), f"nvcc on PATH ({nvcc}{' -> ' + str(real) if real != Path(nvcc) else ''})"
        tried.append(f"nvcc {nvcc} -> {root}")
    if is_cuda_toolkit(default):
        return str(Path(default)), default
    tried.append(default)
    return None, f"no CUDA toolkit (bin/nvcc and lib64/libcudart*) at {', '.join(tried)}"


def torch_cuda_home(environ=None, which=None, default: str = "/usr/local/cuda") -> str | None:
    """What ``torch.utils.cpp_extension`` takes as CUDA_HOME on its own: ``$CUDA_HOME`` / ``$CUDA_PATH``,
    else the folder above the ``bin/`` of the first nvcc on PATH (a wrapper's folder, not the
    toolkit's), else ``default`` where it exists."""
    environ, which = os.environ if environ is None else environ, which or shutil.which
    home = environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    if home is None:
        nvcc = which("nvcc")
        home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else (default if os.path.exists(default) else None)
    return home


#: (what torch would have taken, what the build took instead) once :func:`use_cuda_home` corrected it
_CUDA_HOME_FIX: list[tuple[str | None, str]] = []


def use_cuda_home() -> str | None:
    """Point torch's build (``$CUDA_HOME`` and ``cpp_extension.CUDA_HOME``) at the real toolkit
    (:func:`find_cuda_home`) before building; the toolkit, or ``None`` when there is none."""
    cpp_extension = _cpp_extension()
    home, _how = find_cuda_home()
    if home is None:
        return None
    before = cpp_extension.CUDA_HOME
    if before != home or os.environ.get("CUDA_HOME") != home:
        if not is_cuda_toolkit(before) and not _CUDA_HOME_FIX:
            _CUDA_HOME_FIX.append((before, home))
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home
    return home


def cuda_home_problem() -> str | None:
    """Why the CUDA_HOME torch takes on its own is wrong here (one line naming the toolkit to use),
    or ``None`` when it is right."""
    if _CUDA_HOME_FIX:
        before, home = _CUDA_HOME_FIX[0]
    else:
        before, home = torch_cuda_home(), find_cuda_home()[0]
    if is_cuda_toolkit(before):
        return None
    if home is None:
        return f"CUDA_HOME {before} is not a CUDA toolkit and none was found: {find_cuda_home()[1]}"
    return (f"torch takes CUDA_HOME={before}, which is not a CUDA toolkit (no bin/nvcc with lib64/libcudart*); "
            f"the build uses {home}: export CUDA_HOME={home}")


def cuda_toolchain() -> str | None:
    """Why CUDA sources cannot be compiled here, or ``None`` if they can."""
    if torch.version.cuda is None:
        return "this torch is a CPU-only build"
    home, how = find_cuda_home()
    if home is None:
        return f"nvcc / CUDA_HOME not found: {how}"
    return None


@dataclass(frozen=True)
class Extension:
    cuda: bool
    path: str


#: builds that failed in this process, by ``cuda``: raised again instead of compiling again (every
#: backend selection used to recompile, 5-20 s each, seen on the GPU machine)
_FAILED: dict[bool, RuntimeError] = {}


#: the variants loaded in this process (True: the CUDA build, which holds the CPU kernels too). Both at
#: once would register the lzo ops twice, which aborts the process (seen: build(cuda=False) then
#: build(cuda=True), as the simulator's tests and doctor do on a GPU machine)
_LOADED: list[bool] = []


def build(cuda: bool | None = None, verbose: bool = False) -> Extension:
    """Compile (once, cached) and load the ops; ``cuda=None`` means: when a GPU can use them. A
    failed build is raised again, without recompiling, for the rest of the process. One variant per
    process: ``cuda=False`` gets the CUDA build where it is loaded or a GPU can use it (the CPU-only
    build where that fails), and ``cuda=True`` after the CPU-only build raises instead of aborting."""
    gpu_build = torch.cuda.is_available() and cuda_toolchain() is None
    if cuda is None:
        cuda = gpu_build
    if not cuda and (True in _LOADED or (gpu_build and False not in _LOADED and True not in _FAILED)):
        try:
            return build(cuda=True, verbose=verbose)
        except RuntimeError:
            if True in _LOADED:
                raise
    if cuda and False in _LOADED:
        raise RuntimeError("the CPU-only lzo ops are loaded in this process already; loading the CUDA build too "
                           "would register them twice (build the CUDA ops first)")
    if cuda in _FAILED:
        raise _FAILED[cuda]
    try:
        ext = _build(cuda, verbose)
    except Exception as e:
        _FAILED[cuda] = e if isinstance(e, RuntimeError) else RuntimeError(str(e))
        raise
    if cuda not in _LOADED:
        _LOADED.append(cuda)
    return ext


@lru_cache(maxsize=None)
def _build(cuda: bool, verbose: bool) -> Extension:
    files = list(CPU_SOURCES)
    if cuda:
        reason = cuda_toolchain()
        if reason:
            raise RuntimeError(f"cannot compile the CUDA ops: {reason}")
        use_cuda_home()  # not torch's guess from a wrapper nvcc (/usr/local/bin/nvcc -> CUDA_HOME=/usr/local)
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
