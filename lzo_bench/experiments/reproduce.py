"""Profiles (``profiles/*.toml``) and ``lzo-bench reproduce``: a paper table block, end to end.

A profile names the dataset, network, methods, distribution, δ, m, epochs, trials and seeds, and
holds the paper's printed numbers for its block under ``[paper.<method>]``. ``reproduce`` trains
every method × trial (each a normal run folder under ``<out>/<method>-seed<seed>``; finished ones
are not rerun), then summarises as the paper does:

* train and test accuracy of the last epoch, mean ± sample std over trials;
* backward and overall speed-up against ``surrogate``: the mean over trials and updates of the
  per-update ratio ``surrogate ms / method ms`` (runs paired by seed and update index), from the
  training runs' own timings, and only between runs one process timed (a resumed grid or
  ``--jobs > 1`` timed them in different processes: those pairs are left out, and a method with
  none says so) — use ``lzo-bench profile`` for clean ratios;
* trials that diverged or failed are counted and left out of the means; Ctrl-C stops the grid
  with the table of the finished trials (exit 130) and a rerun resumes;
* active neurons per layer, mean over trials of the last epoch;
* the machine and device that ran each trial.

Engines: ``local`` trains in this process or ``--jobs`` local processes; ``ray`` makes every trial
a Ray task (one GPU each when the cluster has GPUs) on a local Ray or a cluster. A Ray trial
trains in a scratch folder of its worker and sends the folder's files back: only the driver
writes the grid folder, so the machines need no shared filesystem.

Figures: training loss per update (the paper's Figure 2) and active % and overall speed-up per
update (Figure 3), as PNG.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from lzo_bench.runtime.fsio import atomic_write_bytes, atomic_write_json, atomic_write_text
from lzo_bench.runtime.signals import signum_of
from lzo_bench.training.reporter import Reporter

PROFILE_KEYS = {"name", "title", "dataset", "methods", "dist", "k", "delta", "samples", "bth", "epochs", "trials",
                "seeds", "hidden", "batch_size", "lr", "steps", "paper", "arch"}
MAX_TRIALS = 10_000  # one run folder per (method, trial): beyond this a grid is a typo, not an experiment
PAPER_METRICS = ("train", "test", "backward", "overall")  # what a [paper.<method>] table may hold (numbers)


class ProfileError(ValueError):
    pass


class Engine(str, Enum):
    LOCAL = "local"
    RAY = "ray"


class EngineUnavailable(RuntimeError):
    """``--engine ray`` where Ray is not installed."""


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    dataset: str
    methods: tuple[str, ...]
    dist: str
    delta: float
    samples: int
    epochs: int
    trials: int
    seeds: tuple[int, ...]
    hidden: tuple[int, ...] = (200, 200)
    k: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    steps: int | None = None
    bth: float | None = None  # SparseGrad's band as the paper set it; None: δ·E[max_k |z_k|]
    paper: dict[str, dict[str, Any]] = field(default_factory=dict)
    arch: str = "fc"  # "conv": the dataset's conv layers before the hidden ones (lzo-bench train --arch conv)

    def train_kwargs(self, method: str | None = None) -> dict[str, Any]:
        """The :class:`TrainConfig` fields this profile sets for ``method`` (``bth`` for sparsegrad only)."""
        return {"dataset": self.dataset, "dist": self.dist, "k": self.k, "delta": self.delta,
                "samples": self.samples, "epochs": self.epochs, "hidden": self.hidden,
                "batch_size": self.batch_size, "lr": self.lr, "steps": self.steps, "arch": self.arch,
                "bth": self.bth if method == "sparsegrad" else None}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_problem(key: str, value: Any) -> str | None:
    """What a profile field must be, if ``value`` is not that; ``None`` when it is fine."""
    from lzo_bench.core.gates import Method

    from lzo_bench.data import DATASET_INFO

    if key == "name":  # the grid folder's name under runs/: no path of its own
        ok = isinstance(value, str) and value not in (".", "..") and value.replace("-", "").replace("_", "").replace(".", "").isalnum()
        return None if ok else "a folder name of letters, digits, '-', '_' and '.' (it names runs/<name>)"
    if key == "dataset":
        return None if value in DATASET_INFO else f"one of {', '.join(DATASET_INFO)}"
    if key == "arch":
        from lzo_bench.core.conv import ARCHS

        return None if value in ARCHS else f"one of {', '.join(ARCHS)}"
    if key in ("title", "dist"):
        return None if isinstance(value, str) and value else "a non-empty string"
    if key == "methods":
        valid = [m.value for m in Method]
        ok = isinstance(value, list) and value and all(m in valid for m in value) and len(set(value)) == len(value)
        return None if ok else f"a non-empty list of {', '.join(valid)}, each once"
    if key in ("delta", "lr", "k", "bth"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return None if ok else "a number > 0"
    if key == "trials":
        return None if _is_int(value) and 1 <= value <= MAX_TRIALS else f"an integer in [1, {MAX_TRIALS}]"
    if key in ("samples", "epochs", "batch_size", "steps"):
        return None if _is_int(value) and value >= 1 else "an integer ≥ 1"
    if key == "seeds":
        ok = isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value) and len(set(value)) == len(value)
        return None if ok else "a list of distinct integers ≥ 0 (a repeated seed would train one folder twice)"
    if key == "hidden":
        ok = isinstance(value, list) and value and all(_is_int(v) and v >= 1 for v in value)
        return None if ok else "a non-empty list of positive integers"
    if key == "paper":
        valid = [m.value for m in Method]

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        ok = isinstance(value, dict) and all(
            m in valid and isinstance(t, dict) and all(
                k in PAPER_METRICS and (number(v) or isinstance(v, list) and len(v) == 2 and all(map(number, v)))
                for k, v in t.items())
            for m, t in value.items())
        return None if ok else (f"tables [paper.<method>] ({', '.join(valid)}) of {', '.join(PAPER_METRICS)}, "
                                "each a number or [mean, std]")
    return None


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile; :class:`ProfileError` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"no profile at {path}; the shipped ones are in profiles/ (e.g. profiles/digits-quick.toml)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(f"{path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path} is not valid TOML: {e}") from None
    unknown = set(raw) - PROFILE_KEYS
    if unknown:
        raise ProfileError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(PROFILE_KEYS)}")
    missing = {"name", "dataset", "methods", "dist", "delta", "samples", "epochs", "trials"} - set(raw)
    if missing:
        raise ProfileError(f"{path}: missing keys {sorted(missing)}")
    for key, value in raw.items():
        problem = _field_problem(key, value)
        if problem:
            raise ProfileError(f"{path}: {key} must be {problem} (got {value!r})")
    trials = int(raw["trials"])
    seeds = tuple(int(s) for s in raw.get("seeds", range(trials)))
    if len(seeds) < trials:
        raise ProfileError(f"{path}: {trials} trials need {trials} seeds, got {len(seeds)}")
    profile = Profile(
        name=raw["name"], title=raw.get("title", raw["name"]), dataset=raw["dataset"],
        methods=tuple(raw["methods"]), dist=raw["dist"], delta=float(raw["delta"]), samples=int(raw["samples"]),
        epochs=int(raw["epochs"]), trials=trials, seeds=seeds[:trials], hidden=tuple(raw.get("hidden", (200, 200))),
        k=raw.get("k"), batch_size=raw.get("batch_size"), lr=raw.get("lr"), steps=raw.get("steps"),
        bth=raw.get("bth"), paper=raw.get("paper", {}), arch=raw.get("arch", "fc"),
    )
    check_trainable(profile, path)
    return profile


def check_trainable(p: Profile, path: Path) -> None:
    """Every trial's configuration checked as train checks it, before any folder exists, with the
    error naming the profile key (``delta``), not a command-line option reproduce does not have."""
    from lzo_bench.training.config import ConfigError, TrainConfig

    for method in p.methods:
        try:
            TrainConfig(method=method, seed=p.seeds[0], **p.train_kwargs(method)).validate()
        except ConfigError as e:
            said = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), str(e))  # options as keys
            raise ProfileError(f"{path}: {said}") from None


def with_overrides(p: Profile, epochs: int | None = None, trials: int | None = None) -> Profile:
    from dataclasses import replace

    trials = trials or p.trials
    seeds = p.seeds if trials <= len(p.seeds) else tuple(range(trials))
    return replace(p, epochs=epochs or p.epochs, trials=trials, seeds=seeds[:trials])


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}-seed{seed}"


def finished(path: Path) -> bool:
    try:
        return json.loads((path / "metrics.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


class _EpochReporter(Reporter):
    """Hands the running trial's finished epochs to ``on_epoch(out, epoch, epochs)``."""

    def __init__(self, out: str, epochs: int, on_epoch: Callable[[str, int, int], None]):
        self.out, self.epochs, self.on_epoch = out, epochs, on_epoch

    def start(self, result: Any, n_batches: int) -> None:
        self.on_epoch(self.out, 0, self.epochs)

    def epoch(self, record: Any) -> None:
        self.on_epoch(self.out, record.epoch, self.epochs)


def _train_job(kwargs: dict[str, Any], threads: int, on_epoch: Callable[[str, int, int], None] | None = None) -> str:
    """One trial; a trial that diverges or fails is recorded as such in its folder and the grid goes on.
    ``on_epoch(out, epoch, epochs)``: each finished epoch of the trial (``epoch`` 0 at its start)."""
    import torch

    from lzo_bench.training.train import TrainingDiverged, TrainingFailed, train
    from lzo_bench.training.config import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(kwargs)
    try:
        train(cfg, _EpochReporter(cfg.out, cfg.resolved().epochs, on_epoch) if on_epoch else None)
    except (TrainingDiverged, TrainingFailed):
        pass  # metrics.json says "diverged" / "failed"; summarize counts it
    return cfg.out


def _train_in_scratch(kwargs: dict[str, Any], threads: int) -> dict[str, bytes]:
    """One trial (as :func:`_train_job`) in a scratch folder of the machine that runs it; returns
    the run folder's files by name."""
    from lzo_bench.training.run_folder import RUN_ARTEFACTS

    with tempfile.TemporaryDirectory(prefix="lzo-trial-") as tmp:
        run = Path(_train_job({**kwargs, "out": str(Path(tmp) / "run")}, threads))
        return {name: (run / name).read_bytes() for name in RUN_ARTEFACTS if (run / name).is_file()}


def store_trial(path: Path, files: dict[str, bytes]) -> None:
    """Write a trial's files (from :func:`_train_in_scratch`) into its grid folder, each atomically
    and ``metrics.json`` last, so the trial counts as finished only once all of them are in place.
    ``config.json`` is pointed at ``path`` instead of the worker's scratch folder."""
    from lzo_bench.training.run_folder import RUN_ARTEFACTS

    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").unlink(missing_ok=True)
    for name in RUN_ARTEFACTS:
        if name not in files:
            (path / name).unlink(missing_ok=True)
    if "config.json" in files:
        config = json.loads(files["config.json"])
        config["train"]["out"] = str(path)
        atomic_write_json(path / "config.json", config)
    for name, data in files.items():
        if name not in ("config.json", "metrics.json"):
            atomic_write_bytes(path / name, data)
    if "metrics.json" in files:
        atomic_write_bytes(path / "metrics.json", files["metrics.json"])


@dataclass
class GridOutcome:
    """What an engine did so far: trials finished, trials lost (with why)."""

    done: int = 0
    lost: list[str] = field(default_factory=list)


def _run_local(
    todo: list[dict[str, Any]], jobs: int, progress: Callable[[int, int, str], None], outcome: GridOutcome,
    on_epoch: Callable[[str, int, int], None] | None = None,
) -> None:
    """Train ``todo`` here (``jobs`` = 1, each trial's epochs to ``on_epoch``) or in ``jobs`` local
    processes. Ctrl-C propagates once the pool's queued trials are cancelled."""
    if jobs <= 1:
        for kw in todo:
            _train_job(kw, 0, on_epoch)
            outcome.done += 1
            progress(outcome.done, len(todo), kw["out"])
        return
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_job, kw, threads) for kw in todo]
        try:
            for fut in as_completed(futures):
                out = fut.result()
                outcome.done += 1
                progress(outcome.done, len(todo), out)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def ray_placement(device: str, jobs: int) -> tuple[dict[str, Any], str, int]:
    """Ray resources for one trial, the device it trains on and its torch threads: one GPU when the
    cluster has GPUs (and ``device`` allows), else the largest node's CPUs shared by ``jobs``
    trials (``jobs`` = 1: a trial takes a whole machine)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0) if device in ("auto", "cuda") else 0
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1}, "cuda", 0
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    threads = max(1, int(node_cpus) // jobs)
    return {"num_cpus": threads}, "cpu" if device == "auto" else device, threads


def _run_ray(
    todo: list[dict[str, Any]], jobs: int, device: str, address: str | None, retries: int,
    progress: Callable[[int, int, str], None], outcome: GridOutcome,
) -> None:
    """Every trial of ``todo`` a Ray task on the cluster at ``address`` (``None``: ``RAY_ADDRESS``,
    else a Ray started on this machine, else a new local one); each result is stored by the driver
    as it arrives. A task whose worker dies or is interrupted (SIGTERM) is rerun up to ``retries``
    times, then counted lost; on Ctrl-C the outstanding tasks are cancelled and the interrupt
    propagates."""
    try:
        import ray
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        raise EngineUnavailable("--engine ray needs Ray: pip install 'lzo-bench[ray]' (or pip install ray)") from None
    from lzo_bench.training.train import TrainingInterrupted
    from lzo_bench.training.config import ConfigError

    started_here = not ray.is_initialized()
    if started_here:
        # Ray starts its workers at niceness 15: on a shared machine the trials would yield to everything
        # else. A Ray this call starts runs them at the driver's priority, as Ray's own job submission does.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        resources, trial_device, threads = ray_placement(device, jobs)
        task = ray.remote(_train_in_scratch).options(max_retries=retries, retry_exceptions=[TrainingInterrupted],
                                                     **resources)
        trials = {task.remote({**kw, "device": trial_device}, threads): kw["out"] for kw in todo}
        pending = list(trials)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                out = trials[ready[0]]
                try:
                    files = ray.get(ready[0])
                except RayTaskError as e:
                    if isinstance(e.cause, ConfigError):
                        raise e.cause from None
                    outcome.lost.append(f"{Path(out).name}: {type(e.cause).__name__}: {e.cause}")
                    continue
                except RayError as e:  # the worker or its node died more than `retries` times
                    outcome.lost.append(f"{Path(out).name}: {type(e).__name__} after {retries} retries")
                    continue
                store_trial(Path(out), files)
                outcome.done += 1
                progress(outcome.done, len(todo), out)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started_here:
            ray.shutdown()


def run_grid(
    p: Profile, out: Path, jobs: int = 1, device: str = "auto", backend: str = "auto",
    data_dir: str | None = None, download: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    engine: Engine = Engine.LOCAL, address: str | None = None, retries: int = 2,
    on_epoch: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Train every method × trial not finished yet (whichever engine ran the finished ones);
    returns counts of run and skipped, the trials lost (Ray: worker died past ``retries``) and
    whether Ctrl-C stopped it. ``on_epoch(out, epoch, epochs)``: the running trial's epochs, where the
    trials run one at a time in this process (local engine, ``jobs`` = 1)."""
    import torch

    from lzo_bench.training.train import TrainingInterrupted

    progress = progress or (lambda *_: None)
    todo, skipped = [], 0
    local_gpus = engine is Engine.LOCAL and device in ("auto", "cuda") and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if local_gpus else 0
    for method in p.methods:
        for seed in p.seeds:
            path = run_dir(out, method, seed)
            if finished(path):
                skipped += 1
                continue
            dev = f"cuda:{len(todo) % gpus}" if gpus > 1 else device
            todo.append({**p.train_kwargs(method), "method": method, "seed": seed, "out": str(path), "overwrite": True,
                         "device": dev, "backend": backend, "data_dir": data_dir, "download": download})
    progress(0, len(todo), "")
    outcome = GridOutcome()
    interrupted = 0  # the signal that stopped the grid (SIGINT, or SIGTERM through lzo_bench.runtime.signals), else 0
    try:
        if engine is Engine.RAY:
            _run_ray(todo, jobs, device, address, retries, progress, outcome)
        else:
            _run_local(todo, jobs, progress, outcome, on_epoch)
    except (KeyboardInterrupt, TrainingInterrupted) as e:
        interrupted = signum_of(e)
    return {"trained": outcome.done, "skipped": skipped, "lost": outcome.lost, "interrupted": interrupted}


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


def _completed_metrics(path: Path) -> dict[str, Any] | None:
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


def summarize(p: Profile, out: Path) -> dict[str, Any]:
    """The table over the trials that completed; diverged / failed / unfinished ones are counted.
    Speed-ups pair a method's run with ``surrogate``'s of the same seed only when one process timed
    both (``metrics.json``'s ``process``): timings from different processes (a resumed grid, parallel
    jobs) are not compared."""
    metrics = {m: [_completed_metrics(run_dir(out, m, s)) for s in p.seeds] for m in p.methods}
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


def _moving_average(v: list[float], n: int) -> list[float]:
    if n <= 1 or len(v) < n:
        return v
    acc, out = 0.0, []
    for i, x in enumerate(v):
        acc += x
        if i >= n:
            acc -= v[i - n]
        out.append(acc / min(i + 1, n))
    return out


def figures(p: Profile, out: Path) -> list[Path]:
    """Figure 2 (training loss per update) and Figure 3 (active % and overall speed-up per update)."""
    from lzo_bench.experiments.plots import _pyplot, _save

    plt = _pyplot()
    completed = {m: [_completed_metrics(run_dir(out, m, s)) for s in p.seeds] for m in p.methods}
    metrics = {m: [r for r in runs if r is not None] for m, runs in completed.items()}
    mean_over_trials = lambda series: [statistics.fmean(v) for v in zip(*series)]  # noqa: E731
    color = {m: f"C{i}" for i, m in enumerate(p.methods)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, runs in metrics.items():
        ax.plot(mean_over_trials([r["updates"]["loss"] for r in runs]), label=m, lw=1, color=color[m])
    ax.set_xlabel("gradient update")
    ax.set_ylabel("training loss (mean over trials)")
    ax.set_title(p.title, fontsize=9)
    ax.legend()
    paths = [_save(fig, out / "figure2_loss.png")]
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    ref = metrics.get("surrogate")
    for m, runs in metrics.items():
        active = mean_over_trials([[statistics.fmean(a) for a in r["updates"]["active_pct"]] for r in runs])
        a1.plot(active, label=m, lw=1, color=color[m])
        if ref is not None and m != "surrogate":
            tot = lambda r: [f + b for f, b in zip(r["updates"]["fwd_ms"], r["updates"]["bwd_ms"])]  # noqa: E731
            same = [(a, b) for a, b in zip(completed["surrogate"], completed[m])  # one process timed both
                    if a is not None and b is not None and a.get("process") == b.get("process")]
            if not same:
                continue
            ratios = mean_over_trials([[x / y for x, y in zip(tot(a), tot(b))] for a, b in same])
            a2.plot(_moving_average(ratios, 10), label=m, lw=1, color=color[m])
    a1.set_xlabel("gradient update")
    a1.set_ylabel("active neurons % (mean over layers and trials)")
    a1.set_yscale("log")
    a1.legend()
    a2.set_xlabel("gradient update")
    a2.set_ylabel("overall speed-up vs surrogate (10-update mean)")
    if a2.lines:
        a2.legend()
    else:
        a2.text(0.5, 0.5, "no speed-up to show: no surrogate run\ntimed by the same process", ha="center",
                va="center", transform=a2.transAxes)
    fig.suptitle(p.title, fontsize=9)
    paths.append(_save(fig, out / "figure3_active_speedup.png"))
    plt.close(fig)
    return paths
