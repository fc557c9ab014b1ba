"""Freed memory kept in the process, so a training loop's fresh large tensors do not page-fault every update.

glibc's ``malloc`` serves a request above ``M_MMAP_THRESHOLD`` (128 KiB, rising with use to at most
32 MiB) with its own ``mmap`` and unmaps it on ``free``; the heap above ``M_TRIM_THRESHOLD`` is returned
to the kernel too. A training update allocates the same large tensors every time (the dense rule's
``[T, B, N]`` gates and gradients: 61 MB each on N-MNIST; event lists; Adam's temporaries), so every
update touched fresh pages: 6.0 M minor faults and 23.1 s of system time in an 83 s
``lzo-bench profile --workload nmnist`` (1 thread, 2-core AMD EPYC VM, issue 21); the dense rule's update
alone 90.7 k faults and 280 ms of system time, 0.7 k and 2 ms with this setting (``benchmarks/peak_rss.py``). With
``M_MMAP_MAX = 0`` (every request from the heap) and no trimming, freed memory stays mapped and the next
update reuses it, as PyTorch's caching allocator does on a GPU. Resident memory then stays at the
process's high-water mark instead of following each update down and up again, and can lie somewhat above
the old peak: a freed block below a live one is reused only by requests that fit in it (a localzo update
added 37–39 MiB at its peak against 35–39 with glibc's defaults; the dense rule's 329 MiB either way).
The setting is inherited by forked children (DataLoader workers).

Applied by the ``lzo-bench`` console script and ``benchmarks/peers.py`` (every contender of a run gets
the same allocator); ``LZO_MALLOC=system`` leaves glibc's defaults. Not glibc (musl, macOS, Windows):
nothing is changed, and :func:`keep_freed_memory` says so.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any, Callable

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

#: heap grown in steps of this much: fewer brk calls for the first large tensors
TOP_PAD_BYTES = 64 << 20
#: never return the heap's top to the kernel (the largest value mallopt takes on 64-bit glibc)
NO_TRIM = 2**31 - 1

_state: str | None = None


def keep_freed_memory() -> str:
    """Keep freed memory in this process (see the module docstring); returns what was done, one line.
    Idempotent; ``LZO_MALLOC=system`` in the environment keeps glibc's defaults."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get("LZO_MALLOC", "").strip().lower() == "system":
        _state = "glibc's defaults (LZO_MALLOC=system)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = f"unchanged: not glibc ({platform.system()} {platform.libc_ver()[0] or 'libc'})"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NO_TRIM),
                                                  (M_TOP_PAD, TOP_PAD_BYTES)))
        _state = "freed memory kept for reuse (mallopt: no mmap, no trim)" if ok else "unchanged: mallopt refused"
    return _state


def malloc_state() -> str:
    """What :func:`keep_freed_memory` did in this process, without doing it."""
    return _state or "glibc's defaults (not set in this process)"


def saved_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` and count the bytes of the distinct storages autograd saves for the backward inside it
    (``torch.autograd.graph.saved_tensors_hooks``: custom Functions' ``save_for_backward`` included; a
    tensor saved twice, or a view of one saved, counts once)."""
    import torch  # here, not at import: the console script loads this module before torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())
