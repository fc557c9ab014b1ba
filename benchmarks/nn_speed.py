"""One training update of the N-MNIST network through ``lzo_bench.nn.Sequential`` against the same
network as ``lzo_bench.core.model.SNN`` — one implementation, so the two should time alike.

    python benchmarks/nn_speed.py --threads 1 --updates 20 [--rule localzo|sparsegrad|surrogate]

Same weights (calibrated so hidden layer 1 fires at ~1 %, as benchmarks/peers.py), same synthetic
input as events, Adam; updates interleaved A, B, A, B…; medians of forward, backward and whole update
(wall) and of process CPU time per update. Prints the machine first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lzo_bench import nn, spike
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey
from lzo_bench.measure.peers import initial_weights, make_inputs
from lzo_bench.measure.workloads import WORKLOADS
from lzo_bench.ops.backends import select_backend
from lzo_bench.ops.event_network import as_events
from lzo_bench.runtime.devices import device_name

RULES = {"localzo": spike.LocalZO, "sparsegrad": spike.SparseGrad, "surrogate": spike.Surrogate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rule", choices=tuple(RULES), default="localzo")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = WORKLOADS["nmnist"]
    print(f"{time.strftime('%Y-%m-%d')} · {device_name(torch.device('cpu'))} · torch {torch.__version__} · "
          f"{args.threads} thread(s) · load {os.getloadavg()[0]:.2f} · N-MNIST shape {shape.n_in}-200-200-{shape.n_out}, "
          f"T {shape.steps}, B {shape.batch} · rule {args.rule}", flush=True)
    x, y = make_inputs(shape)
    weights, _, rate = initial_weights(shape, x)
    events = as_events(x)
    reg = SpikeRegularizer(f_up=shape.f_up)

    model = SNN(shape.network())
    model.weights.load_state_dict({str(i): w.clone() for i, w in enumerate(weights)})
    gate = GateSpec.build(args.rule, "normal", delta=0.05)
    backend = select_backend("auto", "cpu", gate)
    twin_src = SNN(shape.network())
    twin_src.weights.load_state_dict({str(i): w.clone() for i, w in enumerate(weights)})
    twin = nn.Sequential.from_snn(twin_src, RULES[args.rule](delta=0.05))

    def snn_forward(update: int):
        return model(events, gate, DrawKey(0, update), backend)

    def nn_forward(update: int):
        return twin.run(events)

    contenders = {"SNN": (snn_forward, torch.optim.Adam(model.parameters(), lr=1e-4)),
                  "nn.Sequential": (nn_forward, torch.optim.Adam(twin.parameters(), lr=1e-4))}
    times: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "bwd": [], "total": [], "cpu": []} for k in contenders}
    for update in range(args.warmup + args.updates):
        for name, (forward, opt) in contenders.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out = forward(update)
            loss = classification_loss(out.logits, y) + reg(out.counts)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3, c3 = time.perf_counter(), time.process_time()
            if update >= args.warmup:
                for key, value in (("fwd", t1 - t0), ("bwd", t2 - t1), ("total", t3 - t0), ("cpu", c3 - c0)):
                    times[name][key].append(1e3 * value)
    print(f"layer-1 rate {100 * rate:.2f} %, {args.updates} timed updates each (after {args.warmup})\n")
    print("| network | fwd ms | bwd ms | update ms | CPU ms | update / SNN's |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times["SNN"]["total"])
    for name, t in times.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"| {name} | {med['fwd']:.1f} | {med['bwd']:.1f} | {med['total']:.1f} | {med['cpu']:.1f} | "
              f"{med['total'] / base:.3f} |")


if __name__ == "__main__":
    main()
