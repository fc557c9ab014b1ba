"""Speed and memory of one LIF layer's training step, methods side by side (issue: C++/CUDA extension).

Workload (default): the paper's N-MNIST layer 2 — B = 256, T = 300, 200 → 200, β = 0.905,
LocalZO normal, δ = 0.05, m = 1. Input: Bernoulli spikes at ``--rate`` per (step, neuron).
Weights: N(μ, σ) with μ chosen so the layer fires at about the input rate (``--calibrate``).

Methods, measured interleaved in one process (every repeat runs each method once, in a rotating
order), after warm-up; medians and the interquartile range over repeats:

  (a) ``autograd-loop``: a plain per-step autograd loop with a surrogate spike function, as users
      of other SNN libraries write it (one matmul per step);
  (e) ``events-dense``, ``events-sparsegrad``, ``events-localzo``: the event ops
      (kernels/cpu_*.cpp) — current from the input events, fused scan + gate, and a backward that
      takes the upstream gradient as values on the active list and returns the input gradient as
      values on the previous layer's active list (events-dense: the dense rule on the same forward,
      dW from the input events, dx by GEMM). The upstream values are gathered outside the timing,
      as the network's backward hands them over.

(The per-layer ops ``lzo::lif_forward`` / ``lif_backward``, methods (b) ``fused-dense`` and (c) of
earlier results in BENCHMARKS.md, were retired with the kernel-layer issue: one op family.)

The layer's input requires grad (it is layer 2), so every method computes dW and dx; the sparse
ops compute dx only at the previous layer's active entries, taken as a random set of the same
density as this layer's. ``--first-layer``: the input needs no gradient, only dW is computed. Memory: bytes saved for backward (exact, via saved-tensor hooks) and,
on CUDA, the peak allocated during the step above what was allocated before it.

    python benchmarks/layer_speed.py                 # CPU, defaults
    python benchmarks/layer_speed.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import extension as ops
from lzo_bench.ops import library
from lzo_bench.ops.backends import autograd_loop_layer
from lzo_bench.ops.event_network import as_events
from lzo_bench.runtime.devices import device_name
from lzo_bench.runtime.memory import saved_bytes


@dataclass
class Row:
    method: str
    fwd_ms: float
    fwd_iqr_ms: float
    bwd_ms: float
    bwd_iqr_ms: float
    active_pct: float
    saved_mib: float
    peak_mib: float | None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-in", type=int, default=200)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0.01, help="input spikes per (step, neuron)")
    ap.add_argument("--beta", type=float, default=0.905)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--first-layer", action="store_true",
                    help="the input does not require grad (layer 1): no input gradient is computed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--profile-kernels", action="store_true",
                    help="after timing, one step of each method under torch.profiler: its top kernels")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ops.build(cuda=True if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(0)
    T, B, Nin, N = args.steps, args.batch, args.n_in, args.n
    x = (torch.rand(T, B, Nin, generator=gen) < args.rate).float().to(device)
    sigma = 1.0 / math.sqrt(Nin)
    # mean weight so that the expected drive per step, rate·Nin·μ, holds u near (1−β)·θ·… :
    # calibrate μ by bisection on the output rate (target: the input rate).
    lo, hi = 0.0, 5.0
    base = torch.randn(Nin, N, generator=gen).to(device) * sigma
    ev = as_events(x)  # the event ops' layout: rows b*T + t

    def forward(w, spec, update=0):
        table, *params = library.gate_args(spec, DrawKey(0, update), device)
        return torch.ops.lzo.lif_events_forward(ev.ptr, ev.col, ev.val, w, table, T, args.beta, 1.0, *params, 1, 0)

    def rate(w) -> float:
        return float(forward(w, None)[0][-1]) / (T * B * N)

    for _ in range(20):
        mu = 0.5 * (lo + hi)
        lo, hi = (mu, hi) if rate(base + mu) < args.rate else (lo, mu)
    w0 = base + 0.5 * (lo + hi)
    out_rate = rate(w0)

    specs = {
        "fused-dense": GateSpec.build("surrogate", "normal", args.delta),
        "sparsegrad": GateSpec.build("sparsegrad", "normal", args.delta),
        "localzo": GateSpec.build("localzo", "normal", args.delta),
    }
    # the previous layer's active entries: a random set with this layer's localzo density
    density = float(forward(w0, specs["localzo"])[3][-1]) / (T * B * N)
    n_prev = max(1, int(density * T * B * Nin))
    prev_key = torch.randperm(T * B * Nin, generator=gen)[:n_prev].sort().values.to(device)  # (b*T + t)*Nin + i
    prev_ev = SpikeEvents.from_keys(prev_key, T, B, Nin)
    upstream = torch.randn(T, B, N, generator=gen).to(device)
    upstream_rows = upstream.transpose(0, 1).reshape(T * B, N).contiguous()
    empty_f, empty_i = torch.empty(0, device=device), torch.empty(0, dtype=torch.int32, device=device)
    no_prev = (empty_i, empty_i)

    def event_step(name: str, update: int):
        spec = specs["fused-dense" if name == "events-dense" else name.removeprefix("events-")]
        table, *params = library.gate_args(spec, DrawKey(0, update), device)
        sync(device)
        t0 = time.perf_counter()
        s_ptr, s_col, _, a_ptr, a_col, a_gate, dgate = torch.ops.lzo.lif_events_forward(
            ev.ptr, ev.col, ev.val, w0, table, T, args.beta, 1.0, *params, 1, 0)
        sync(device)
        fwd = time.perf_counter() - t0
        if spec.is_sparse:
            kept = [a_ptr, a_col, a_gate, ev.ptr, ev.col, ev.val, w0]
            active = int(a_ptr[-1])  # lists made on the GPU are allocated at their bound: a_col[:active] is valid
            rows = torch.repeat_interleave(torch.arange(T * B, device=device), (a_ptr[1:] - a_ptr[:-1]).long())
            g = torch.zeros(a_col.numel(), device=device)
            g[:active] = upstream_rows[rows, a_col[:active].long()]
            prev = no_prev if args.first_layer else (prev_ev.ptr, prev_ev.col)
            sync(device)
            t1 = time.perf_counter()
            torch.ops.lzo.lif_sparse_backward(g, a_ptr, a_col, a_gate, empty_f, ev.ptr, ev.col, ev.val, w0,
                                              args.beta, T, *prev)
        else:
            kept = [dgate, ev.ptr, ev.col, ev.val, w0]
            t1 = time.perf_counter()
            torch.ops.lzo.lif_dense_backward(upstream_rows, dgate, empty_f, ev.ptr, ev.col, ev.val, w0, args.beta, T,
                                             not args.first_layer, 0)
            active = T * B * N
        sync(device)
        t2 = time.perf_counter()
        saved = sum(t.untyped_storage().nbytes() for t in kept)
        return fwd, t2 - t1, active, saved, None

    def step(name: str, update: int):
        xi = x.detach().requires_grad_(not args.first_layer)
        w = w0.detach().requires_grad_()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        if name.startswith("events-"):
            return event_step(name, update)
        t0 = time.perf_counter()
        out, saved = saved_bytes(lambda: autograd_loop_layer(xi, w, args.beta, 1.0, specs["fused-dense"], None, 1))
        spikes, active = out.spikes, out.active
        sync(device)
        t1 = time.perf_counter()
        spikes.backward(upstream)
        sync(device)
        t2 = time.perf_counter()
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else None
        return t1 - t0, t2 - t1, active, saved, peak

    names = ["autograd-loop", "events-dense", "events-sparsegrad", "events-localzo"]
    samples = {n: {"fwd": [], "bwd": [], "active": [], "saved": 0, "peak": []} for n in names}
    for rep in range(args.warmup + args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            f, b, a, sv, pk = step(name, rep)
            if rep >= args.warmup:
                d = samples[name]
                d["fwd"].append(f)
                d["bwd"].append(b)
                d["active"].append(a)
                d["saved"] = sv
                if pk is not None:
                    d["peak"].append(pk)

    def med_iqr(v):
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
        return 1e3 * statistics.median(v), 1e3 * (q[2] - q[0])

    rows = []
    for name in names:
        d = samples[name]
        fm, fi = med_iqr(d["fwd"])
        bm, bi = med_iqr(d["bwd"])
        rows.append(Row(name, fm, fi, bm, bi, 100 * statistics.mean(d["active"]) / (T * B * N),
                        d["saved"] / 2**20, max(d["peak"]) if d["peak"] else None))
    by = {r.method: r for r in rows}
    header = (f"LIF layer training step, {device.type} ({device_name(device)}, "
              f"{torch.get_num_threads()} threads), T={T} B={B} {Nin}->{N}, beta={args.beta}, delta={args.delta}, "
              f"input rate {args.rate:.2%}, output rate {out_rate:.2%}, "
              + ("first layer (no input gradient); " if args.first_layer else f"prev-layer active {density:.3%}; ")
              + f"medians of {args.repeats} interleaved repeats after {args.warmup} warm-up")
    print(header)
    cols = ("method", "fwd ms", "bwd ms", "bwd x vs (a)", "bwd x vs (e) events-dense",
            "overall x vs (a)", "overall x vs (e)", "active %", "saved MiB", "peak MiB")
    print(" | ".join(cols))
    for r in rows:
        tot = r.fwd_ms + r.bwd_ms
        a, e = by["autograd-loop"], by["events-dense"]
        print(" | ".join([
            r.method, f"{r.fwd_ms:.1f} ±{r.fwd_iqr_ms / 2:.1f}", f"{r.bwd_ms:.2f} ±{r.bwd_iqr_ms / 2:.2f}",
            f"{a.bwd_ms / r.bwd_ms:.1f}", f"{e.bwd_ms / r.bwd_ms:.1f}",
            f"{(a.fwd_ms + a.bwd_ms) / tot:.2f}", f"{(e.fwd_ms + e.bwd_ms) / tot:.2f}",
            f"{r.active_pct:.3f}", f"{r.saved_mib:.1f}", "n/a (CPU)" if r.peak_mib is None else f"{r.peak_mib:.1f}",
        ]))
    if args.profile_kernels:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for name in names:
            with profile(activities=acts) as prof:
                step(name, 0)
            print(f"-- kernels of one {name} step (forward + backward)")
            print(prof.key_averages().table(sort_by=key, row_limit=8))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "args": vars(args), "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
