"""Peak resident memory of one training update per method and library, each in a fresh process.

Every contender of :mod:`lzo_bench.measure.peers` (ours: localzo, sparsegrad, surrogate; the peers where
installed) runs ``--updates`` full updates (forward, loss, backward, Adam) on the same input and
weights in its own ``python`` subprocess. The child resets the kernel's peak-RSS mark after building its
input, weights and model (``echo 5 > /proc/self/clear_refs``), so ``VmHWM`` afterwards is the peak
of the updates alone; the table shows it beside the RSS before the first update (interpreter,
torch, the dense input batch and the model). Beside it, the page faults and system time per update
after the first (``getrusage``): with ``--malloc system`` (glibc's defaults) every update's large fresh
tensors fault their pages in again; with ``--malloc kept`` (the default, what ``lzo-bench`` and
``peers.py`` do: :mod:`lzo_bench.runtime.memory`) freed memory is reused (issue 21, item 3).

    python benchmarks/peak_rss.py                    # N-MNIST shape; --shape shd, --json, --malloc system
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys


def child(name: str, shape_name: str, updates: int, threads: int) -> dict:
    import torch

    from lzo_bench.measure import peers
    from lzo_bench.runtime.memory import keep_freed_memory

    malloc = keep_freed_memory()

    torch.set_num_threads(threads)
    shape = peers.SHAPES[shape_name]
    x, y = peers.make_inputs(shape)
    weights, _, _ = peers.initial_weights(shape, x)
    c = peers.build_contender(name, shape, weights)
    c.first_spikes = []  # skip the dense spike check of peers.timed_update: it is not part of an update
    gc.collect()
    _trim()  # kept memory (lzo_bench.runtime.memory) would otherwise hold the set-up's freed pages for the updates to reuse
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _status_mib("VmRSS")
    peers.timed_update(c, x, y, record=True)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(updates - 1):
        peers.timed_update(c, x, y, record=True)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = max(1, updates - 1)
    return {"name": name, "version": c.version, "rss_before_mib": before, "peak_rss_mib": _status_mib("VmHWM"),
            "total_ms": sorted(c.total)[len(c.total) // 2], "malloc": malloc,
            "minor_faults_per_update": (r1.ru_minflt - r0.ru_minflt) / n,
            "sys_ms_per_update": 1e3 * (r1.ru_stime - r0.ru_stime) / n,
            "user_ms_per_update": 1e3 * (r1.ru_utime - r0.ru_utime) / n}


def _trim() -> None:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim), so the peak measured next is the
    updates' own."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def main() -> int:
    from lzo_bench.measure.peer_models import ALL_NAMES
    from lzo_bench.measure.peers import SHAPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="nmnist")
    ap.add_argument("--updates", type=int, default=3, help="updates per contender (>= 2: faults and times are per update after the first)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--malloc", choices=("kept", "system"), default="kept",
                    help="kept: freed memory reused (lzo_bench.runtime.memory, as lzo-bench runs); system: glibc's defaults")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.updates < 2:
        ap.error("--updates must be at least 2: the per-update faults and times are taken after the first update")
    if args.child:
        print(json.dumps(child(args.child, args.shape, args.updates, args.threads)))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ALL_NAMES)
    rows = []
    for name in names:
        env = os.environ | ({"LZO_MALLOC": "system"} if args.malloc == "system" else {})
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--shape", args.shape, "--updates",
                               str(args.updates), "--threads", str(args.threads)], capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"skipped {name}: {last}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"shape": args.shape, "updates": args.updates, "threads": args.threads, "rows": rows}, indent=2))
        return 0
    from lzo_bench.runtime.devices import cpu_facts, cpu_header

    malloc = "glibc's defaults (LZO_MALLOC=system)" if args.malloc == "system" else "freed memory kept for reuse"
    print(cpu_header(cpu_facts() | {"torch_threads": args.threads, "malloc": f"{malloc} (in each child)"}))
    print(f"peak RSS of {args.updates} full updates, {args.shape} shape, {args.threads} thread(s), one process each, "
          f"malloc {args.malloc}; faults and sys/user time per update after the first")
    print("name | version | RSS before MiB | peak RSS MiB | added MiB | update ms | minor faults | sys ms | user ms")
    for r in rows:
        print(f"{r['name']} | {r['version']} | {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} | {r['total_ms']:.0f} | "
              f"{r['minor_faults_per_update']:.0f} | {r['sys_ms_per_update']:.0f} | {r['user_ms_per_update']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
