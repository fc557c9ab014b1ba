"""Running a recipe's grid: every method × trial a normal run folder ``<out>/<method>-seed<seed>``
(:func:`run_dir`; finished ones are not rerun), trained by an :class:`Engine`.

Engines: ``local`` trains in this process or ``--jobs`` local processes; ``ray`` makes every trial
a Ray task (one GPU each when the cluster has GPUs) on a local Ray or a cluster. A Ray trial
trains in a scratch folder of its worker and sends the folder's files back (:func:`store_trial`):
only the driver writes the grid folder, so the machines need no shared filesystem. Trials that
diverge or fail are recorded in their folders and the grid goes on; Ctrl-C (or SIGTERM) stops it
and a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lzo_bench.runtime.fsio import atomic_write_bytes, atomic_write_json
from lzo_bench.runtime.signals import signum_of
from lzo_bench.training.reporter import Reporter

if TYPE_CHECKING:
    from lzo_bench.experiments.recipe import Recipe


class Engine(str, Enum):
    LOCAL = "local"
    RAY = "ray"


class EngineUnavailable(RuntimeError):
    """``--engine ray`` where Ray is not installed."""


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}-seed{seed}"


def finished(path: Path) -> bool:
    try:
        return json.loads((path / "metrics.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


def _train_job(kwargs: dict[str, Any], threads: int, reporter: Reporter | None = None) -> str:
    """One trial, told to ``reporter``; a trial that diverges or fails is recorded as such in its
    folder and the grid goes on."""
    import torch

    from lzo_bench.training.config import TrainConfig
    from lzo_bench.training.train import TrainingDiverged, TrainingFailed, train

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(kwargs)
    try:
        train(cfg, reporter)
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
    todo: list[dict[str, Any]], jobs: int, reporter: Reporter, outcome: GridOutcome,
) -> None:
    """Train ``todo`` here (``jobs`` = 1, each trial told to ``reporter``) or in ``jobs`` local
    processes. Ctrl-C propagates once the pool's queued trials are cancelled."""
    if jobs <= 1:
        for kw in todo:
            _train_job(kw, 0, reporter)
            outcome.done += 1
            reporter.grid_progress(outcome.done, len(todo), kw["out"])
        return
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_job, kw, threads) for kw in todo]
        try:
            for fut in as_completed(futures):
                out = fut.result()
                outcome.done += 1
                reporter.grid_progress(outcome.done, len(todo), out)
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
    from lzo_bench.training.config import ConfigError
    from lzo_bench.training.train import TrainingInterrupted

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
    p: Recipe, out: Path, jobs: int = 1, device: str = "auto", backend: str = "auto",
    data_dir: str | None = None, download: bool = False,
    reporter: Reporter | None = None,
    engine: Engine = Engine.LOCAL, address: str | None = None, retries: int = 2,
) -> dict[str, Any]:
    """Train every method × trial not finished yet (whichever engine ran the finished ones);
    returns counts of run and skipped, the trials lost (Ray: worker died past ``retries``) and
    whether Ctrl-C stopped it. ``reporter.grid_progress`` hears of every finished trial; where the
    trials run one at a time in this process (local engine, ``jobs`` = 1) ``reporter`` is also
    each trial's train reporter (``start``, ``batch``, ``epoch``, ``warn``, ``stop``)."""
    import torch

    from lzo_bench.training.train import TrainingInterrupted

    reporter = reporter or Reporter()
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
    reporter.grid_progress(0, len(todo), "")
    outcome = GridOutcome()
    interrupted = 0  # the signal that stopped the grid (SIGINT, or SIGTERM through lzo_bench.runtime.signals), else 0
    try:
        if engine is Engine.RAY:
            _run_ray(todo, jobs, device, address, retries, reporter.grid_progress, outcome)
        else:
            _run_local(todo, jobs, reporter, outcome)
    except (KeyboardInterrupt, TrainingInterrupted) as e:
        interrupted = signum_of(e)
    return {"trained": outcome.done, "skipped": skipped, "lost": outcome.lost, "interrupted": interrupted}
