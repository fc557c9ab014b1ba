"""Overhead of the profiler's instrumentation on a training update (issue: lzo-bench profile).

Interleaves, for one method, a bare update (forward, loss, backward, Adam step, nothing else) and
the profiler's ``timed_update`` (device sync / CUDA event at each phase edge and saved-tensor
hooks for the memory measure), and reports the ratio of the median wall times of the two.

    python benchmarks/profiler_overhead.py --workload digits --method localzo --updates 40
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, SpikeRegularizer
from lzo_bench.measure.profile import Runner, timed_update, workload_batches
from lzo_bench.measure.timing import PhaseClock
from lzo_bench.measure.workloads import WORKLOADS
from lzo_bench.ops.backends import select_backend
from lzo_bench.runtime.devices import sync_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="digits")
    ap.add_argument("--method", default="localzo")
    ap.add_argument("--updates", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    w = WORKLOADS[args.workload]
    batches, source = workload_batches(w, args.updates, 0)
    batches = [(x.float().to(device), y.to(device)) for x, y in batches]
    net = w.network()
    spec = GateSpec.build(args.method)
    model = SNN(net).to(device)
    r = Runner(args.method, spec, select_backend("auto", device, spec), model,
               torch.optim.Adam(model.parameters(), lr=2e-4), SpikeRegularizer())
    clock = PhaseClock(device)
    bare, timed = [], []
    for i, (x, y) in enumerate(batches):
        for kind in ((0, 1) if i % 2 else (1, 0)):
            sync_device(device)
            t0 = time.perf_counter()
            if kind == 0:
                _, loss = r.forward_loss(x, y, i)
                r.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                r.optimizer.step()
            else:
                timed_update(r, x, y, i, clock)
            sync_device(device)
            (bare if kind == 0 else timed).append(time.perf_counter() - t0)
    b, t = statistics.median(bare[2:]), statistics.median(timed[2:])
    print(f"{args.workload} ({source}), {args.method}, {r.backend.name} on {device}: bare update {1e3 * b:.2f} ms, "
          f"profiled update {1e3 * t:.2f} ms, overhead {100 * (t / b - 1):+.1f} % (medians of {len(bare) - 2})")


if __name__ == "__main__":
    main()
