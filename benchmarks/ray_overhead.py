"""What `reproduce --engine ray` adds per trial, against `--engine local`, on this machine.

Both engines run the same grid (a profile, default digits-quick, as shipped: 3 epochs, 2 × 200)
through :func:`lzo_bench.experiments.grid.run_grid` with 1 job, into fresh folders, engines alternating
from repeat to repeat. A trial's time is the gap between consecutive results reaching the driver
(the first from the call), so the Ray figure includes scheduling, the worker's scratch folder,
shipping the files back and the driver's atomic writes. That time splits into the training itself
(``train()``'s own wall time, from metrics.json) and the rest: the engine's overhead is the
difference of the rest, Ray minus local; the training's own difference is reported beside it
(zero on an idle machine, noise on a shared one). Torch threads are pinned to what a Ray trial gets
(the node's CPUs with --jobs 1). Ray is started once and warmed (one untimed grid per engine):
``ray.init`` and the first worker's imports are one-time costs, reported apart.

    python benchmarks/ray_overhead.py [--profile profiles/digits-quick.toml] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import ray
import torch

from lzo_bench.experiments.grid import Engine, run_grid
from lzo_bench.experiments.recipe import Recipe, load_recipe, with_overrides
from lzo_bench.runtime.devices import device_name
from lzo_bench.training.reporter import Reporter

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def trial_seconds(p: Recipe, out: Path, engine: Engine) -> dict[str, tuple[float, float]]:
    """One grid into a fresh ``out``; per trial (run folder name): seconds before its result
    reached the driver, and ``train()``'s own wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    times: dict[str, float] = {}
    last = time.perf_counter()

    class Arrived(Reporter):
        def grid_progress(self, done: int, total: int, path: str) -> None:
            nonlocal last
            if done:
                now = time.perf_counter()
                times[Path(path).name] = now - last
                last = now

    run_grid(p, out, device="cpu", reporter=Arrived(), engine=engine)
    return {n: (s, json.loads((out / n / "metrics.json").read_text())["final"]["wall_s"]) for n, s in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(PROFILES / "digits-quick.toml"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trials", type=int, default=None, help="override the profile's trials")
    ap.add_argument("--epochs", type=int, default=None, help="override the profile's epochs (a quick check)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    p = with_overrides(load_recipe(args.profile), epochs=args.epochs, trials=args.trials)

    os.environ.setdefault("RAY_worker_niceness", "0")  # as a Ray started by `reproduce --engine ray`
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - t0
    node_cpus = int(ray.cluster_resources()["CPU"])
    torch.set_num_threads(node_cpus)
    per: dict[Engine, dict[str, list[tuple[float, float]]]] = {e: {} for e in Engine}
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        warm = {e: sum(s for s, _ in trial_seconds(p, Path(tmp) / e.value, e).values())
                for e in (Engine.RAY, Engine.LOCAL)}
        for r in range(args.repeats):
            order = (Engine.LOCAL, Engine.RAY) if r % 2 == 0 else (Engine.RAY, Engine.LOCAL)
            for e in order:
                for name, st in trial_seconds(p, Path(tmp) / e.value, e).items():
                    per[e].setdefault(name, []).append(st)
                print(f"repeat {r + 1}/{args.repeats} {e.value}: {sum(per[e][n][-1][0] for n in per[e]):.2f} s "
                      f"(training {sum(per[e][n][-1][1] for n in per[e]):.2f} s)", flush=True)
    ray.shutdown()

    def mean_of_medians(e: Engine, part: Callable[[tuple[float, float]], float]) -> float:
        """Per trial the median over repeats, then the mean over the grid's trials."""
        return statistics.fmean(statistics.median(part(st) for st in v) for v in per[e].values())

    total = {e: mean_of_medians(e, lambda st: st[0]) for e in Engine}
    training = {e: mean_of_medians(e, lambda st: st[1]) for e in Engine}
    rest = {e: mean_of_medians(e, lambda st: st[0] - st[1]) for e in Engine}
    local_s = total[Engine.LOCAL]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "cpu": device_name(torch.device("cpu")), "ray_cpus": node_cpus,
                    "torch_threads": node_cpus, "ray": ray.__version__, "torch": torch.__version__},
        "profile": p.name, "epochs": p.epochs, "trials_per_grid": len(per[Engine.LOCAL]), "repeats": args.repeats,
        "trial_s": {e.value: total[e] for e in Engine},
        "training_s": {e.value: training[e] for e in Engine},
        "outside_training_s": {e.value: rest[e] for e in Engine},
        "engine_overhead_ms_per_trial": 1e3 * (rest[Engine.RAY] - rest[Engine.LOCAL]),
        "engine_overhead_pct": 100 * (rest[Engine.RAY] - rest[Engine.LOCAL]) / local_s,
        "training_difference_pct": 100 * (training[Engine.RAY] - training[Engine.LOCAL]) / training[Engine.LOCAL],
        "whole_trial_difference_pct": 100 * (total[Engine.RAY] - local_s) / local_s,
        "one_time_s": {"ray_init": init_s, "first_ray_grid_minus_first_local_grid": warm[Engine.RAY] - warm[Engine.LOCAL]},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
