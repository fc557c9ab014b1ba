"""The paper-style summary of a recipe's grid (:func:`summarize`) and its files ``reproduce.json``
and ``reproduce.csv`` (:func:`write_outputs`):

* train and test accuracy of the last epoch, mean ± sample std over trials;
* backward and overall speed-up against ``surrogate``: the mean over trials and updates of the
  per-update ratio ``surrogate ms / method ms`` (runs paired by seed and update index), from the
  training runs' own timings, and only between runs one process timed (a resumed grid or
  ``--jobs > 1`` timed them in different processes: those pairs are left out, and a method with
  none says so) — use ``lzo-bench profile`` for clean ratios;
* trials that diverged or failed are counted and left out of the means;
* active neurons per layer, mean over trials of the last epoch;
* the machine and device that ran each trial.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lzo_bench.experiments.grid import run_dir
from lzo_bench.runtime.fsio import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from lzo_bench.experiments.recipe import Recipe


def _metrics(path: Path) -> dict[str, Any]:
    return json.loads((path / "metrics.json").read_text())


def _mean_std(v: list[float]) -> tuple[float, float]:
    return (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (math.nan, math.nan)


def _paired_ratio(ref: list[dict], runs: list[dict], key: str) -> list[float]:
    """Per-update ratios ``ref[key] / run[key]`` paired by seed (list position) and update."""
    out = []
    for a, b in zip(ref, runs):
        ra, rb = a["updates"][key], b["updates"][key]
        out += [x / y for x, y in zip(ra, rb) if y > 0]
    return out


def completed_metrics(path: Path) -> dict[str, Any] | None:
    try:
        m = _metrics(path)
    except (OSError, ValueError):
        return None
    return m if m.get("status") == "completed" else None


def _status(path: Path) -> str:
    try:
        return str(_metrics(path).get("status", "unknown"))
    except (OSError, ValueError):
        return "not run"


def _placement(path: Path) -> dict[str, Any]:
    """Where a trial ran (``config.json``'s environment): host, device and the device's name."""
    try:
        env = json.loads((path / "config.json").read_text()).get("environment", {})
    except (OSError, ValueError):
        env = {}
    return {"host": env.get("host"), "device": env.get("device"), "device_name": env.get("device_name")}


def summarize(p: Recipe, out: Path) -> dict[str, Any]:
    """The table over the trials that completed; diverged / failed / unfinished ones are counted.
    Speed-ups pair a method's run with ``surrogate``'s of the same seed only when one process timed
    both (``metrics.json``'s ``process``): timings from different processes (a resumed grid, parallel
    jobs) are not compared."""
    metrics = {m: [completed_metrics(run_dir(out, m, s)) for s in p.seeds] for m in p.methods}
    statuses = {m: [_status(run_dir(out, m, s)) for s in p.seeds] for m in p.methods}
    ref = metrics.get("surrogate")
    rows = []
    for m in p.methods:
        runs = [r for r in metrics[m] if r is not None]
        train_ms = _mean_std([r["final"]["train_acc"] for r in runs])
        test_ms = _mean_std([r["final"]["test_acc"] for r in runs])
        layers = len(runs[0]["final"]["active_pct"]) if runs else len(p.hidden)
        active = [statistics.fmean(r["final"]["active_pct"][i] for r in runs) if runs else math.nan
                  for i in range(layers)]
        bwd = overall = None
        note = None
        if ref is not None:
            pairs = [(a, b) for a, b in zip(ref, metrics[m])
                     if a is not None and b is not None and a.get("process") is not None
                     and a.get("process") == b.get("process")]
            if pairs:
                pa, pb = [a for a, _ in pairs], [b for _, b in pairs]
                bwd = statistics.fmean(_paired_ratio(pa, pb, "bwd_ms"))
                tot = lambda r: {"updates": {"t": [f + b for f, b in zip(r["updates"]["fwd_ms"], r["updates"]["bwd_ms"])]}}  # noqa: E731
                overall = statistics.fmean(_paired_ratio([tot(r) for r in pa], [tot(r) for r in pb], "t"))
            elif runs:
                note = "no trial of this method and surrogate was timed by one process: speed-up not compared"
        paper = p.paper.get(m, {})
        rows.append({
            "method": m, "trials": len(runs),
            "diverged": statuses[m].count("diverged"), "failed": statuses[m].count("failed"),
            "unfinished": sum(s not in ("completed", "diverged", "failed") for s in statuses[m]),
            "speedup_note": note,
            "train_mean": train_ms[0], "train_std": train_ms[1], "test_mean": test_ms[0], "test_std": test_ms[1],
            "backward_speedup": bwd, "overall_speedup": overall, "active_pct": active,
            "paper_train": paper.get("train"), "paper_test": paper.get("test"),
            "paper_backward": paper.get("backward"), "paper_overall": paper.get("overall"),
        })
    trials = [{"method": m, "seed": seed, "status": statuses[m][i]} | _placement(run_dir(out, m, seed))
              for m in p.methods for i, seed in enumerate(p.seeds)]
    return {"profile": asdict(p), "rows": rows, "trials": trials}


def write_outputs(summary: dict[str, Any], out: Path) -> list[Path]:
    paths = [atomic_write_json(out / "reproduce.json", summary)]
    cols = ["method", "trials", "train_mean", "train_std", "test_mean", "test_std", "backward_speedup",
            "overall_speedup", "paper_train", "paper_test", "paper_backward", "paper_overall"]
    lines = [",".join(cols + ["active_pct"])]
    for r in summary["rows"]:
        vals = [r[c] for c in cols]
        cells = ["" if v is None else (f"{v[0]}±{v[1]}" if isinstance(v, list) else
                                       (f"{v:.6g}" if isinstance(v, float) else str(v))) for v in vals]
        lines.append(",".join(cells + [" / ".join(f"{a:.4f}" for a in r["active_pct"])]))
    paths.append(atomic_write_text(out / "reproduce.csv", "\n".join(lines) + "\n"))
    return paths
