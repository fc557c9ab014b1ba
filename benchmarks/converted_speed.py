"""One training update of an snnTorch model converted by ``lzo_bench.nn.from_snntorch`` (LocalZO, the
event ops) against the same model's update in snnTorch with its ATan surrogate.

    python benchmarks/converted_speed.py --threads 1 --updates 15

The model: ``Linear(64, 200) → Leaky → Linear(200, 200) → Leaky → Linear(200, 10)``, β = 0.9, the logits the
last Linear's output, max over time (the converted network's β_r = 0 readout computes the same). Digits-sized
input: T = 25, B = 128, each of the 64 inputs spiking once at a random step with probability 0.8 (latency
coding's one spike per pixel). Same initial weights (snnTorch's init × 3, so both layers fire), the same loss
(cross entropy), Adam; updates interleaved A, B, A, B… after a warm-up; medians and IQR of the whole update
(forward, loss, backward, optimizer step). Prints the machine and its load first.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--updates", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import snntorch as snn
    from snntorch import surrogate
    from snntorch.utils import reset

    from lzo_bench import nn, spike
    from lzo_bench.runtime.devices import device_name

    print(f"{time.strftime('%Y-%m-%d %H:%M')} · {device_name(torch.device('cpu'))} · torch {torch.__version__} · "
          f"snntorch {snn.__version__} · {args.threads} thread(s) · load {os.getloadavg()[0]:.2f} · 64-200-200-10, "
          f"T {args.steps}, B {args.batch}", flush=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 200), snn.Leaky(beta=0.9, spike_grad=surrogate.atan(), init_hidden=True),
        torch.nn.Linear(200, 200), snn.Leaky(beta=0.9, spike_grad=surrogate.atan(), init_hidden=True),
        torch.nn.Linear(200, 10))
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(3.0)
    net = nn.from_snntorch(copy.deepcopy(model), rule=spike.LocalZO(delta=0.05, seed=0), reduce="max")
    g = torch.Generator().manual_seed(1)
    fires = torch.rand(args.batch, 64, generator=g) < 0.8
    when = torch.randint(0, args.steps, (args.batch, 64), generator=g)
    x = torch.zeros(args.steps, args.batch, 64)
    x[when[fires], fires.nonzero()[:, 0], fires.nonzero()[:, 1]] = 1.0
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def snntorch_logits() -> torch.Tensor:
        reset(model)
        return torch.stack([model(x_t) for x_t in x.unbind(0)]).amax(0)

    with torch.no_grad():
        rates = [float(c.mean()) / args.steps for c in net.run(x).counts]
    contenders = {"snnTorch (ATan)": (snntorch_logits, torch.optim.Adam(model.parameters(), lr=1e-4)),
                  "from_snntorch (LocalZO)": (lambda: net(x), torch.optim.Adam(net.parameters(), lr=1e-4))}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for update in range(args.warmup + args.updates):
        for name, (logits, opt) in contenders.items():
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(logits(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if update >= args.warmup:
                times[name].append(1e3 * (time.perf_counter() - t0))
    print(f"input density {100 * float(x.mean()):.2f} %, hidden firing rates {', '.join(f'{100 * r:.2f} %' for r in rates)} "
          f"(per neuron and step, at the start); {args.updates} timed updates each after {args.warmup}\n")
    backend = ", ".join(sorted({b.name for b in net._backends.values()}))
    print(f"converted network's backend: {backend}")
    print("| model | update ms (median) | IQR ms | snnTorch / this |")
    print("|---|---|---|---|")
    base = statistics.median(times["snnTorch (ATan)"])
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        print(f"| {name} | {statistics.median(t):.2f} | {q[0]:.2f}–{q[2]:.2f} | {base / statistics.median(t):.2f}× |")


if __name__ == "__main__":
    main()
