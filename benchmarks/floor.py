"""Where a localzo training update's time goes, phase by phase, next to the work each phase must do.

The N-MNIST update of ``benchmarks/peers.py`` (same input, weights and gain; 1156 → 200 → 200 → 10, T 300,
B 256) taken apart into the ops of :mod:`lzo_bench.ops.event_network`, each timed alone (median of
``--repeats``), and beside each the compulsory work — adds, Philox draws, bytes — and the time that work
takes at this machine's measured rates:

- ``add rate``: float adds per second of one core's vectorised loop over an L1-resident array (compiled
  here with the extension's flags, so the ISA the ops use), the ceiling of every accumulation phase;
- ``Philox rate``: Philox4x32-10 draws per second of one core, with the forward's 8-lane AVX2 code
  (``kernels/philox_avx2.h``);
- ``read bandwidth``: bytes per second of ``x.sum()`` over the dense input batch (355 MB, from memory),
  at the run's threads.

Compute floors count every thread as a core at that rate (``--threads 2``: twice the rate).

    python benchmarks/floor.py --threads 1            # --json; --repeats 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.cpp_extension import load_inline

RATES_SRC = r"""
#include <torch/extension.h>
#include <chrono>
#include <cstdint>
#include "lzo_math.h"
#include "philox_avx2.h"
// adds per second: 16 independent accumulators over a 4 KiB array, summed 200 000 times
double add_rate() {
  static float a[1024];
  for (int i = 0; i < 1024; ++i) a[i] = 1e-7f * i;
  float acc[64] = {0};
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < 20000; ++r)
    for (int i = 0; i < 1024; i += 64)
      for (int k = 0; k < 64; ++k) acc[k] += a[i + k];
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sum = 0; for (float x : acc) sum += x;
  return (sum == 12345.0f ? 1 : 0) + 20000.0 * 1024 / s;
}
// Philox4x32-10 words per second, 2^22 counters, as the forward's candidate loop computes them (8 lanes
// at a time with AVX2, else one at a time)
double philox_rate() {
  uint32_t sink = 0;
  const int n = 1 << 22;
  auto t0 = std::chrono::steady_clock::now();
#if defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (int i = 0; i < n; i += 8)
    acc = _mm256_xor_si256(acc, lzo::philox8_x0(_mm256_add_epi32(_mm256_set1_epi32(i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                                                7, 3, 1 << 16, 11, 5));
  sink = static_cast<uint32_t>(_mm256_extract_epi32(acc, 0));
#else
  for (int i = 0; i < n; ++i) sink ^= lzo::philox4x32_10_x0(i, 7, 3, 1 << 16, 11, 5);
#endif
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return (sink == 1 ? 1 : 0) + n / s;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add_rate", &add_rate); m.def("philox_rate", &philox_rate); }
"""


def machine_rates(repeats: int) -> dict[str, float]:
    """Adds and Philox draws per second of this machine's cores, compiled with the extension's flags."""
    from lzo_bench.ops import extension as ops

    arch, tag = ops._host_arch()  # the extension's own ISA flags, and one build per CPU
    mod = load_inline(f"lzo_floor_rates_{tag}", [RATES_SRC], extra_cflags=["-O3", *arch, "-ffp-contract=off"],
                      extra_include_paths=[str(ops.kernels_dir())], verbose=False)
    return {"adds_per_s": max(mod.add_rate() for _ in range(repeats)),
            "philox_per_s": max(mod.philox_rate() for _ in range(repeats))}


def med(fn, repeats: int) -> tuple[float, object]:
    out = fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lzo_bench.core.gates import GateSpec
    from lzo_bench.core.model import SpikeRegularizer, classification_loss
    from lzo_bench.core.rng import DrawKey
    from lzo_bench.measure import peer_models, peers
    from lzo_bench.ops import library
    from lzo_bench.ops.event_network import as_events
    from lzo_bench.runtime.devices import cpu_facts, cpu_header
    from lzo_bench.runtime.memory import keep_freed_memory

    keep_freed_memory()
    facts = cpu_facts()
    shape = peers.SHAPES["nmnist"]
    x, y = peers.make_inputs(shape)
    (w1, w2, wo), gain, _ = peers.initial_weights(shape, x)
    lib, r = torch.ops.lzo, args.repeats
    ev = as_events(x)
    e0, ei, ec = w1.new_empty(0), ev.ptr.new_empty(0), ev.col.new_empty(0)
    T, B, beta, beta_o = shape.steps, shape.batch, shape.beta, shape.beta_out
    N1, N2, C, Nin = w1.shape[1], w2.shape[1], wo.shape[1], w1.shape[0]

    def forward(spec, layer_in, w, layer):
        table, *params = library.gate_args(spec, DrawKey(0, 3), w.device)
        return lambda: lib.lif_events_forward(*layer_in, w, table, T, beta, 1.0, *params, layer, 0)

    lz = GateSpec.build("localzo", "normal", peer_models.DELTA)
    t = {}
    t["to_events (dense float input)"], _ = med(lambda: as_events(x), r)
    t["read x (x.sum, 355 MB)"], _ = med(lambda: x.sum(), r)
    # the forward's variants interleaved, one call each per round, so a gate's cost is the median of
    # per-round differences, not a difference of medians taken minutes apart on a noisy machine
    sg = GateSpec.build("sparsegrad", "normal", peer_models.DELTA)
    o1 = forward(lz, (ev.ptr, ev.col, ev.val), w1, 0)()
    variants = {"L1 current + scan (no gate)": forward(None, (ev.ptr, ev.col, ev.val), w1, 0),
                "L1 + sparsegrad gate": forward(sg, (ev.ptr, ev.col, ev.val), w1, 0),
                "L1 + localzo gate": forward(lz, (ev.ptr, ev.col, ev.val), w1, 0),
                "L2 current + scan (no gate)": forward(None, (o1[0], o1[1], e0), w2, 1),
                "L2 + localzo gate": forward(lz, (o1[0], o1[1], e0), w2, 1)}
    rounds: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(r + 1):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            out = fn()
            rounds[k].append(1e3 * (time.perf_counter() - t0))
            if k == "L2 + localzo gate":
                o2 = out
    rounds = {k: v[1:] for k, v in rounds.items()}  # the first round warms up
    t.update({k: statistics.median(v) for k, v in rounds.items()})

    def gate_ms(with_gate: str, without: str) -> float:
        return statistics.median(a - b for a, b in zip(rounds[with_gate], rounds[without]))

    t["readout"], o = med(lambda: lib.readout_forward(o2[0], o2[1], wo, T, beta_o), r)
    oo, c1, c2 = o.clone().requires_grad_(True), o1[2].clone().requires_grad_(True), o2[2].clone().requires_grad_(True)

    def loss_backward():
        oo.grad = c1.grad = c2.grad = None
        (classification_loss(oo.amax(0), y) + SpikeRegularizer(f_up=shape.f_up)([c1, c2])).backward()

    t["loss, forward and backward"], _ = med(loss_backward, r)
    go, g1, g2 = oo.grad.contiguous(), c1.grad, c2.grad
    t["readout backward"], (_, _, gact2) = med(lambda: lib.readout_backward(go, o2[0], o2[1], wo, beta_o, o2[3], o2[4]), r)
    t["L2 sparse backward (dW, dL/ds1)"], (_, gact1) = med(lambda: lib.lif_sparse_backward(
        gact2, o2[3], o2[4], o2[5], g2, o1[0], o1[1], e0, w2, beta, T, o1[3], o1[4]), r)
    t["L1 sparse backward (dW)"], _ = med(lambda: lib.lif_sparse_backward(
        gact1, o1[3], o1[4], o1[5], g1, ev.ptr, ev.col, ev.val, w1, beta, T, ei, ec), r)
    params = [w.clone().requires_grad_(True) for w in (w1, w2, wo)]
    for p in params:
        p.grad = torch.randn_like(p)
    adam = torch.optim.Adam(params, lr=2e-4)
    t["Adam step"], _ = med(adam.step, r)

    rates = machine_rates(3)
    adds, phil = args.threads * rates["adds_per_s"], args.threads * rates["philox_per_s"]
    bw = x.numel() * 4 / (t["read x (x.sum, 355 MB)"] / 1e3)
    nnz_x, s1, s2 = ev.nnz, o1[1].numel(), o2[1].numel()
    a1, a2 = o1[4].numel(), o2[4].numel()
    entries = T * B * N1
    # LocalZO's candidates |v| < δ·max|z| (each needs its Philox draw), counted on the reference potentials
    from lzo_bench.core.events import SpikeEvents
    from lzo_bench.core.lif import lif_potentials

    band = lz.band()
    v1 = lif_potentials(x @ w1, beta, 1.0)
    s1_dense = SpikeEvents(o1[0], o1[1], e0, T, B, N1).dense().transpose(0, 1)
    v2 = lif_potentials(s1_dense @ w2, beta, 1.0)
    cand = [int((v1.abs() < band).sum()), int((v2.abs() < band).sum())]
    del v1, v2, s1_dense
    rows = [  # phase, measured ms, work, floor ms
        ("L1 current + scan", t["L1 current + scan (no gate)"],
         f"{nnz_x * N1 / 1e6:.0f} M adds (nnz(x)·N) + {entries / 1e6:.1f} M entries × 5 flops",
         1e3 * (nnz_x * N1 + 5 * entries) / adds),
        ("L1 localzo gate", gate_ms("L1 + localzo gate", "L1 current + scan (no gate)"),
         f"{cand[0] / 1e6:.2f} M Philox draws ({100 * cand[0] / entries:.1f} % candidates)", 1e3 * cand[0] / phil),
        ("L1 sparsegrad gate", gate_ms("L1 + sparsegrad gate", "L1 current + scan (no gate)"), "≈1 % candidates, g(v)", None),
        ("L2 current + scan", t["L2 current + scan (no gate)"], f"{s1 * N2 / 1e6:.0f} M adds + {entries / 1e6:.1f} M entries × 5",
         1e3 * (s1 * N2 + 5 * T * B * N2) / adds),
        ("L2 localzo gate", gate_ms("L2 + localzo gate", "L2 current + scan (no gate)"),
         f"{cand[1] / 1e6:.2f} M Philox draws ({100 * cand[1] / (T * B * N2):.1f} %)", 1e3 * cand[1] / phil),
        ("readout", t["readout"], f"{s2 * C / 1e6:.1f} M adds + {T * B * C / 1e6:.1f} M", 1e3 * (s2 * C + 2 * T * B * C) / adds),
        ("loss (fwd + bwd)", t["loss, forward and backward"], f"{T * B * C / 1e6:.1f} M (max over T)", None),
        ("readout backward", t["readout backward"], f"{(s2 + a2) * C / 1e6:.1f} M mult-adds", 1e3 * 2 * (s2 + a2 + T * B) * C / adds),
        ("L2 backward", t["L2 sparse backward (dW, dL/ds1)"], f"{a2 * N2 * 2 / 1e6:.0f} M mult-adds (dW + dL/ds1)",
         1e3 * 2 * (2 * a2 * N2) / adds),
        ("L1 backward", t["L1 sparse backward (dW)"], f"{a1 * Nin / 1e6:.0f} M mult-adds (nnz(e)·N_in) + trace",
         1e3 * 2 * (a1 * Nin + nnz_x) / adds),
        ("Adam", t["Adam step"], f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters × ~12 flops",
         1e3 * 12 * sum(p.numel() for p in params) / adds),
        ("to_events (dense float)", t["to_events (dense float input)"], f"{x.numel() * 4 / 1e6:.0f} MB read",
         1e3 * x.numel() * 4 / bw),
    ]
    result = {"machine": facts, "threads": args.threads, "gain": gain, "rates": rates | {"read_bytes_per_s": bw},
              "times_ms": t, "nnz_x": nnz_x, "spikes": [s1, s2], "active": [a1, a2], "candidates": cand,
              "rows": [{"phase": p, "ms": m, "work": wk, "floor_ms": f} for p, m, wk, f in rows]}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(cpu_header(facts))
    print(f"rates per core: {rates['adds_per_s'] / 1e9:.1f} G adds/s (L1-resident), {rates['philox_per_s'] / 1e6:.0f} M "
          f"Philox draws/s (8 lanes); "
          f"{bw / 1e9:.1f} GB/s read; {args.threads} thread(s); nnz(x) {nnz_x}, spikes {s1} / {s2}, active {a1} / {a2}")
    print("| phase | measured ms | compulsory work | floor ms | gap × |")
    print("|---|---|---|---|---|")
    for p, m, wk, f in rows:
        print(f"| {p} | {m:.1f} | {wk} | {'-' if f is None else f'{f:.1f}'} | {'-' if f is None else f'{m / f:.1f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
