"""Freed memory kept in the process (lzo_bench.runtime.memory): a large block freed and allocated again reuses its
pages instead of faulting them in again; ``LZO_MALLOC=system`` keeps glibc's defaults. Each case runs in a
fresh interpreter, since the setting is process-wide and cannot be undone. (Through torch's allocator the
same holds once the heap has grown to an update's high-water mark: benchmarks/peak_rss.py.)"""

import json
import os
import platform
import subprocess
import sys

import pytest

from lzo_bench.runtime import devices

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

CHILD = """
import ctypes, json, resource
from lzo_bench.runtime.memory import keep_freed_memory, malloc_state
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
before = malloc_state()
state = keep_freed_memory()
assert keep_freed_memory() == state  # idempotent
faults = []
for _ in range(3):  # 64 MiB allocated, written and freed, three times: an update's fresh [T, B, N] tensor
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    libc.memset(p, 1, 64 << 20)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"before": before, "state": state, "faults": faults}))
"""

def _child(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env=os.environ | env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults():
    kept = _child(LZO_MALLOC="")
    assert kept["before"].startswith("glibc's defaults (not set")
    assert kept["state"].startswith("freed memory kept for reuse")
    pages = (64 << 20) // 4096
    assert kept["faults"][0] >= pages // 2  # the first touch faults the pages in
    assert max(kept["faults"][1:]) < pages // 20, kept["faults"]  # then they are reused


def test_system_malloc_is_left_alone_and_faults_every_time():
    system = _child(LZO_MALLOC="system")
    assert system["state"] == "glibc's defaults (LZO_MALLOC=system)"
    pages = (64 << 20) // 4096
    assert min(system["faults"]) >= pages // 2, system["faults"]  # mmap'd and unmapped: faulted in again


def test_cpu_facts_name_the_vector_extension_and_the_allocator():
    facts = devices.cpu_facts()
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    assert facts["vector_isa"] == next((i for i in ("avx512f", "avx2", "avx") if i in flags), platform.machine())
    assert facts["logical_cpus"] == os.cpu_count() and facts["torch_threads"] >= 1
    line = devices.cpu_header(facts)
    assert line.startswith(f"CPU {facts['cpu']} ({facts['vector_isa']}") and f"malloc: {facts['malloc']}" in line
