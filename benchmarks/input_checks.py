"""What refusing bad input costs on the event path (issue 34): ``to_events`` of a dense N-MNIST batch
alone, with the NaN/inf check on its event values (what ``as_events`` does), and with a full pass over
the dense tensor (``check_input``, the route for inputs that stay dense); ``SpikeEvents.validate()`` of
the same batch's events. Medians of ``--repeats`` interleaved rounds, one thread by default.

    python benchmarks/input_checks.py --threads 1 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lzo_bench.core.events import all_finite
from lzo_bench.ops import extension, library
from lzo_bench.ops.event_network import as_events, check_input
from lzo_bench.runtime.devices import cpu_header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--density", type=float, default=0.01)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extension.build()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(300, 256, 1156, generator=g) < args.density).float()  # N-MNIST: T 300, B 256, 1156 units
    events = as_events(x)
    cases = {
        "to_events alone": lambda: library.to_events(torch.ops.lzo, x),
        "as_events (NaN/inf on the events)": lambda: as_events(x),
        "full pass (check_input) + to_events": lambda: (check_input(x), library.to_events(torch.ops.lzo, x)),
        "full pass alone (all_finite)": lambda: all_finite(x),
        "SpikeEvents.validate()": events.validate,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    print(cpu_header())
    print(f"x: [300, 256, 1156] at {args.density:.1%} ({events.col.numel()} events); medians of {args.repeats}, ms")
    base = statistics.median(times["to_events alone"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:40s} {med:8.2f} ms  ({med / base:.2f}x to_events; IQR {statistics.quantiles(t, n=4)[2] - statistics.quantiles(t, n=4)[0]:.2f})")


if __name__ == "__main__":
    main()
