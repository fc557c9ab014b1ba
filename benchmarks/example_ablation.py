"""Digits accuracy of the example conv networks (examples/snntorch_conv.py, spikingjelly_conv.py) with
``lzo_bench.spike.LocalZO`` against the library's own atan surrogate, over seeds, side by side in one run.

    python benchmarks/example_ablation.py --seeds 5 --epochs 5 [--libraries snntorch,spikingjelly]

Each (library, rule, seed) is one process at 1 thread (the runs go one after another); prints the
machine, then a markdown table of test accuracy mean ± std (min–max) and the median update time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

from lzo_bench.runtime.devices import device_name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--libraries", default="snntorch,spikingjelly")
    args = p.parse_args()
    print(f"{date.today()} · {device_name(torch.device('cpu'))} · {os.cpu_count()} cores · 1 thread per run · "
          f"load {os.getloadavg()[0]:.2f} · torch {torch.__version__} · {args.epochs} epochs", flush=True)
    rows = []
    for lib in args.libraries.split(","):
        for rule in ("localzo", "atan"):
            acc, ms = [], []
            for seed in range(args.seeds):
                proc = subprocess.run([sys.executable, str(EXAMPLES / f"{lib}_conv.py"), "--rule", rule, "--seed",
                                       str(seed), "--epochs", str(args.epochs), "--threads", "1"],
                                      capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                acc.append(100 * r["test_acc"])
                ms.append(r["update_ms"])
                print(json.dumps(r), flush=True)
            rows.append((lib, rule, acc, ms))
    print("\n| library | spike gradient | test accuracy % (mean ± std, min–max) | update ms (median) |")
    print("|---|---|---|---|")
    for lib, rule, acc, ms in rows:
        name = "lzo_bench.spike.LocalZO (δ 0.05, m 1)" if rule == "localzo" else "atan (library's own)"
        print(f"| {lib} | {name} | {statistics.mean(acc):.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.2f} "
              f"({min(acc):.2f}–{max(acc):.2f}) | {statistics.median(ms):.0f} |")


if __name__ == "__main__":
    main()
