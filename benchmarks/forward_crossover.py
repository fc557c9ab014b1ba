"""Where one GEMM over all T·B rows beats adding a weight row per input event (issue: sparse end to end).

The event-driven forward forms a layer's current as ``I[t, b, :] = Σ_events x·W[i, :]`` (cost
nnz(x)·N) and switches to one GEMM over all rows (cost T·B·N_in·N at BLAS speed) above an input
density ``kGemmDensity`` (kernels/cpu_layer_map.h). The dense rule's backward makes the same choice for
``dW = xᵀ ĝ``. This script times both forms side by side (interleaved, medians) over input densities
and prints the measured crossover.

    python benchmarks/forward_crossover.py --threads 1
    python benchmarks/forward_crossover.py --arch conv --threads 1   # the N-MNIST conv layer 1 (issue 22)

``--arch conv``: the first conv layer of the N-MNIST conv network (2×34×34 → 12 channels, 5×5), the
event scatter (cost nnz(x)·C_out·K²) against one ``at::conv2d`` (oneDNN) over all rows, and for the dense
rule's dW the events against oneDNN's convolution backward.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lzo_bench.ops import extension as ops
from lzo_bench.ops.event_network import as_events

MODES = {"events": 1, "gemm": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-in", type=int, default=1156)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--densities", default="0.005,0.01,0.02,0.04,0.06,0.08,0.1,0.15,0.2,0.3")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--arch", choices=("fc", "conv"), default="fc")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ops.build()
    from lzo_bench.runtime.memory import keep_freed_memory

    keep_freed_memory()  # as the CLI and peers.py run: no page faults on each fresh tensor
    T, B, n_in, n = args.steps, args.batch, args.n_in, args.n
    conv = None
    if args.arch == "conv":
        from lzo_bench.measure.workloads import CONV_WORKLOAD

        conv = CONV_WORKLOAD.network().conv_shapes()[0]
        B = args.batch if args.batch != 256 else CONV_WORKLOAD.batch
        n_in, n = conv.units_in, conv.units_out
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n_in, n, generator=gen) * 0.02
    if conv:
        w = torch.randn(conv.c_out, conv.c_in * conv.kernel ** 2, generator=gen) * 0.2
    lib = torch.ops.lzo

    def forward(ev, code):
        if conv:
            return lib.conv_lif_forward(ev.ptr, ev.col, ev.val, w, conv.kernel_args(), empty, T, 0.9, 1.0, -1, 0, 0,
                                        0.05, 0.04, 0.0, 0.0, 1.0, 1, 1, 0, 0, 0, code)
        return lib.lif_events_forward(ev.ptr, ev.col, ev.val, w, empty, T, 0.9, 1.0, -1, 0, 0, 0.05,
                                      0.04, 0.0, 0.0, 1.0, 1, 1, 0, 0, 0, code)

    def dense_backward(ev, code):
        if conv:
            return lib.conv_dense_backward(grad, gate, empty, ev.ptr, ev.col, ev.val, w, conv.kernel_args(), 0.9, T,
                                           False, code)
        return lib.lif_dense_backward(grad, gate, empty, ev.ptr, ev.col, ev.val, w, 0.9, T, False, code)

    grad = torch.randn(T * B, n, generator=gen)
    gate = torch.rand(T * B, n, generator=gen)
    empty = torch.empty(0)
    rows = []
    for d in (float(s) for s in args.densities.split(",")):
        ev = as_events((torch.rand(T, B, n_in, generator=gen) < d).float())
        fwd = {m: [] for m in MODES}
        bwd = {m: [] for m in MODES}
        for rep in range(args.repeats + 1):
            for m, code in (MODES.items() if rep % 2 else reversed(MODES.items())):
                t0 = time.perf_counter()
                forward(ev, code)
                t1 = time.perf_counter()
                dense_backward(ev, code)
                t2 = time.perf_counter()
                if rep:  # the first round is warm-up
                    fwd[m].append(1e3 * (t1 - t0))
                    bwd[m].append(1e3 * (t2 - t1))
        row = {"density": d} | {f"fwd_{m}_ms": statistics.median(fwd[m]) for m in MODES} | {
            f"bwd_{m}_ms": statistics.median(bwd[m]) for m in MODES}
        rows.append(row)
    def crossover(kind: str) -> float | None:
        return next((r["density"] for r in rows if r[f"{kind}_gemm_ms"] < r[f"{kind}_events_ms"]), None)
    from lzo_bench.runtime.devices import cpu_facts

    result = {"machine": cpu_facts(), "threads": torch.get_num_threads(),
              "shape": {"T": T, "B": B, "n_in": n_in, "n": n, "conv": conv.to_dict() if conv else None}, "rows": rows,
              "forward_crossover": crossover("fwd"), "dense_dw_crossover": crossover("bwd")}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from lzo_bench.runtime.devices import cpu_header

    print(cpu_header(result["machine"]))
    print(f"T={T} B={B} {n_in}->{n}{' (conv ' + str(conv.kernel_args()) + ')' if conv else ''}, "
          f"{result['threads']} thread(s), medians of {args.repeats}")
    print("density | fwd events ms | fwd gemm ms | dense bwd (dW events) ms | dense bwd (dW gemm) ms")
    for r in rows:
        print(f"{r['density']:.3f} | {r['fwd_events_ms']:.1f} | {r['fwd_gemm_ms']:.1f} | {r['bwd_events_ms']:.1f} | {r['bwd_gemm_ms']:.1f}")
    print(f"GEMM first wins at density: forward {result['forward_crossover']}, dense dW {result['dense_dw_crossover']}")


if __name__ == "__main__":
    main()
