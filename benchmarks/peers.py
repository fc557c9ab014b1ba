"""One full training update of the paper's network in snnTorch, SpikingJelly, Norse and lzo-bench.

The command line of :mod:`lzo_bench.measure.peers` (the harness: workload, protocol and rows) over
the contenders of :mod:`lzo_bench.measure.peer_models`; ``lzo-bench profile --peers`` runs the same
harness. The table is :func:`lzo_bench.cli.report.peers_table` with this script's columns.

    pip install -e ".[bench]"
    python benchmarks/peers.py                                   # full size, all contenders
    python benchmarks/peers.py --steps 20 --batch 8 --repeats 2 --warmup 1 --threads 1  # smoke
    python benchmarks/peers.py --only "snntorch,lzo localzo" --json
    python benchmarks/peers.py --threads 1            # N-MNIST shape; --shape shd, --json, --only

Peers not installed are skipped with a line naming ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

import torch

from lzo_bench.cli.report import PeerColumn, peers_table
from lzo_bench.measure.peer_models import ALL_NAMES, CONV_PEERS, DELTA, OUR_METHODS
from lzo_bench.measure.peers import (
    DENSE_SUFFIX,
    LR,
    SHAPES,
    initial_weights,
    machine_info,
    make_inputs,
    reference_spikes,
    run_contenders,
)
from lzo_bench.measure.workloads import CONV_WORKLOAD


def _fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _l2(v: float | None, spec: str) -> str:
    """A layer-2 value, ``-`` for a network with one hidden layer."""
    return "-" if v is None else format(v, spec)


#: the benchmark's table: the profile's columns and threads, CPU time, IQRs, the backward ratio and saved bytes
COLUMNS = (
    PeerColumn("name", lambda r: r["name"], "left", no_wrap=True),
    PeerColumn("version", lambda r: r["version"], "left"),
    PeerColumn("thr", lambda r: str(r["threads"])),
    PeerColumn("fwd ms", lambda r: f"{_fmt(r['fwd_ms'])} ±{_fmt(r['fwd_iqr_ms'] / 2)}"),
    PeerColumn("bwd ms", lambda r: f"{_fmt(r['bwd_ms'])} ±{_fmt(r['bwd_iqr_ms'] / 2)}"),
    PeerColumn("opt ms", lambda r: _fmt(r["opt_ms"], 2)),
    PeerColumn("total ms", lambda r: f"{_fmt(r['total_ms'])} ±{_fmt(r['total_iqr_ms'] / 2)}"),
    PeerColumn("cpu ms", lambda r: _fmt(r["cpu_ms"])),
    PeerColumn("x vs localzo", lambda r: _fmt(r["x_vs_localzo"], 2)),
    PeerColumn("bwd x vs localzo", lambda r: _fmt(r["bwd_x_vs_localzo"], 2)),
    PeerColumn("saved MB", lambda r: _fmt(r.get("saved_mb"), 1)),
    PeerColumn("rate l1", lambda r: f"{r['rate_l1']:.3%}"),
    PeerColumn("rate l2", lambda r: _l2(r["rate_l2"], ".3%")),
    PeerColumn("spikes_vs_ours", lambda r: f"{r['spikes_vs_ours']:g} / {_l2(r['spikes_vs_ours_l2'], 'g')}"),
)


def print_table(rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """The machine line, :func:`~lzo_bench.cli.report.peers_table` with :data:`COLUMNS`, and the footnotes."""
    from rich.console import Console

    from lzo_bench.runtime.devices import cpu_header

    print(cpu_header(config.get("machine")))
    layers = [f"conv{c['c_in']}->{c['c_out']}k{c['kernel']}s{c['stride']}p{c['padding']}"
              + (f"+pool{c['pool']}" if c["pool"] > 1 else "") for c in config.get("conv", [])]
    title = (f"one training update, {config['shape']} T={config['steps']} B={config['batch']} "
             f"{'->'.join(map(str, [config['n_in'], *layers, *config['hidden'], config['n_out']]))}, "
             f"gain {config['gain']:.3g}, medians of {config['repeats']} interleaved repeats after "
             f"{config['warmup']} warm-up (CPU), our input: {config.get('input', 'events')}")
    Console(width=200).print(peers_table({"rows": rows}, title, COLUMNS))
    print("± is half the interquartile range; x vs localzo = total_ms / total_ms of lzo localzo (= localzo's "
          "speedup over that row); spikes_vs_ours = max |layer-1 / layer-2 spike count - ours| per (b, j) "
          "at the first update (0: identical forward); saved MB = distinct storages autograd keeps for the "
          "backward (saved_tensors_hooks, first update)")
    seen = set()
    for r in rows:
        if r["library"] != "lzo-bench" and r["name"] not in seen:
            seen.add(r["name"])
            print(f"  {r['name']} {r['version']}: {r['detail']}. Forward: {r['forward_note']}.")
        elif r["name"] not in seen:
            seen.add(r["name"])
            print(f"  {r['name']}: {r['detail']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="nmnist")
    ap.add_argument("--arch", choices=("fc", "conv"), default="fc",
                    help="fc: the paper's 2x200 network; conv: the conv network on N-MNIST's 2x34x34 frames "
                         f"(issue 22; {', '.join(CONV_PEERS)} as peers, batch 32 unless --batch)")
    ap.add_argument("--steps", type=int, default=None, help="time steps (default: the shape's)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default="", help="torch threads, or a list '1,2' (one pass per count)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ALL_NAMES)}")
    ap.add_argument("--backend", default="auto", choices=("auto", "cpp", "torch"), help="our backend")
    ap.add_argument("--seed", type=int, default=0, help="seed of the input and labels")
    ap.add_argument("--json", action="store_true", help="print JSON to stdout instead of the table")
    ap.add_argument("--input", choices=("events", "dense", "both"), default="events",
                    help="how our rows take the batch: events converted once outside the timed update (as the "
                         "training loader hands them), the dense float tensor every peer gets, converted inside it, "
                         f"or both (rows named '... {DENSE_SUFFIX}')")
    args = ap.parse_args(argv)
    from lzo_bench.runtime.memory import keep_freed_memory

    keep_freed_memory()  # process-wide, as `lzo-bench profile --peers` runs: main() is the benchmark's entry point

    if args.arch == "conv" and args.shape != "nmnist":
        ap.error(f"--arch conv runs on N-MNIST's frames; --shape {args.shape} has none")
    default_names = [*(f"lzo {m}" for m in OUR_METHODS), *CONV_PEERS] if args.arch == "conv" else list(ALL_NAMES)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else default_names
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown:
        ap.error(f"unknown contender(s) {', '.join(unknown)}; choose from: {', '.join(ALL_NAMES)}")
    try:
        thread_counts = [int(t) for t in args.threads.split(",") if t.strip()] or [torch.get_num_threads()]
    except ValueError:
        ap.error(f"--threads takes integers like 1 or 1,2, got {args.threads!r}")
    torch.set_num_threads(thread_counts[0])
    machine = machine_info()  # the load before this run adds its own

    shape = CONV_WORKLOAD if args.arch == "conv" else SHAPES[args.shape]
    shape = dataclasses.replace(shape, steps=args.steps or shape.steps, batch=args.batch or shape.batch)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    x, y = make_inputs(shape, args.seed)
    weights, gain, cal_rate = initial_weights(shape, x)
    log(f"input {float(x.mean()):.3%} per (step, input); gain {gain:.4g} -> layer-1 rate {cal_rate:.3%}")
    ref = reference_spikes(shape, weights, x)

    rows: list[dict[str, Any]] = []
    for th in thread_counts:
        try:
            rows += run_contenders(names, x, y, weights, shape, args.repeats, args.warmup, args.backend, th, ref, log,
                                   args.input)
        except Exception as e:  # one of our rows failed: say what, no traceback
            log(f"error: our update failed with {args.threads or th} thread(s): {type(e).__name__}: {e}")
            return 1
    config = {"shape": shape.name, "steps": shape.steps, "batch": shape.batch, "n_in": shape.n_in,
              "hidden": list(shape.hidden), "n_out": shape.n_out, "arch": args.arch,
              "conv": [c.to_dict() for c in shape.network().conv_shapes()], "beta": shape.beta, "beta_out": shape.beta_out,
              "reduce": shape.reduce, "f_up": shape.f_up, "input_rate": shape.synthetic_rate, "gain": gain,
              "calibrated_rate_l1": cal_rate, "lr": LR, "delta": DELTA, "repeats": args.repeats,
              "warmup": args.warmup, "threads": thread_counts, "backend": args.backend, "seed": args.seed,
              "contenders": names, "input": args.input, "machine": machine}
    if args.json:
        json.dump({"rows": rows, "config": config, "machine": config["machine"]}, sys.stdout, indent=2)
        print()
    else:
        print_table(rows, config)
    ours_ran = any(r["library"] == "lzo-bench" for r in rows)
    if not ours_ran and any(n.startswith("lzo ") for n in names):
        return 1
    return 0 if ours_ran or rows else 1


if __name__ == "__main__":
    sys.exit(main())
