"""The run folder a training run leaves behind, and what it records there.

A run folder holds ``config.json`` (the resolved configuration), ``metrics.json`` (``status``,
per-epoch ``history``, per-update ``updates``, ``final``) and ``checkpoint.pt`` (state dict +
network spec, loadable without this package). Each is rewritten atomically after every finished
epoch, so an interrupted or diverged run keeps everything it finished. Here: the folder's checks,
creation and lock (:class:`RunFolder`), the records (:class:`EpochRecord`, :class:`RunResult`, which
writes ``metrics.json``), and ``--resume`` (:func:`resume_config`, :func:`restore_run`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, NetworkSpec
from lzo_bench.data.base import DatasetInfo
from lzo_bench.ops.backends import Backend
from lzo_bench.runtime.fsio import atomic_write_json, check_creatable_dir, ensure_writable_dir, fault_point
from lzo_bench.training.checkpoint import CheckpointError, load_checkpoint
from lzo_bench.training.config import ConfigError, TrainConfig
from lzo_bench.training.limits import MAX_EPOCHS

#: this process, as recorded in every run's metrics: speed-ups are only taken between runs timed by one process
PROCESS_ID = f"{platform.node()}:{os.getpid()}:{time.time_ns()}"


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    active_pct: list[float]
    fwd_ms: float
    bwd_ms: float
    opt_ms: float
    updates: int
    wall_s: float
    energy_j: float | None = None        # GPU energy over the epoch (NVML counter), None if unavailable
    j_per_update: float | None = None    # energy_j amortised over the epoch's updates
    energy_note: str | None = None       # why energy_j is None although the meter works


@dataclass
class RunResult:
    out: Path
    config: TrainConfig
    gate: GateSpec
    backend: Backend
    history: list[EpochRecord] = field(default_factory=list)
    update_loss: list[float] = field(default_factory=list)
    update_active_pct: list[list[float]] = field(default_factory=list)
    update_fwd_ms: list[float] = field(default_factory=list)
    update_bwd_ms: list[float] = field(default_factory=list)
    status: str = "running"
    wall_s: float = 0.0
    energy: dict = field(default_factory=lambda: {"requested": False})
    processes: list[str] = field(default_factory=lambda: [PROCESS_ID])  # more than one after --resume
    warnings: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict | None:
        if not self.history:
            return None
        last = self.history[-1]
        n = sum(r.updates for r in self.history)
        return {
            "epoch": last.epoch,
            "train_acc": last.train_acc,
            "test_acc": last.test_acc,
            "train_loss": last.train_loss,
            "active_pct": last.active_pct,
            "fwd_ms": sum(r.fwd_ms * r.updates for r in self.history) / n,
            "bwd_ms": sum(r.bwd_ms * r.updates for r in self.history) / n,
            "opt_ms": sum(r.opt_ms * r.updates for r in self.history) / n,
            "updates": n,
            "wall_s": self.wall_s,
            "energy_j": sum(r.energy_j for r in self.history) if all(r.energy_j is not None for r in self.history) else None,
        }

    def write_metrics(self, **extra) -> None:
        """Write :meth:`metrics` (with ``extra`` keys, e.g. ``failure``) to ``out/metrics.json``, atomically."""
        atomic_write_json(self.out / "metrics.json", self.metrics() | extra)

    def metrics(self) -> dict:
        return {
            "status": self.status,
            "process": self.processes[0] if len(self.processes) == 1 else None,  # None: timed by several
            "processes": self.processes,
            "history": [asdict(r) for r in self.history],
            "updates": {"loss": self.update_loss, "active_pct": self.update_active_pct,
                        "fwd_ms": self.update_fwd_ms, "bwd_ms": self.update_bwd_ms},
            "energy": self.energy,
            "warnings": self.warnings,
            "final": self.final,
        }


#: what a run (and its exports) leaves in its folder; --overwrite clears these first
RUN_ARTEFACTS = ("config.json", "metrics.json", "checkpoint.pt", "model.onnx", "model_step.onnx", "model.nir")
LOCK_NAME = ".lzo-run.lock"
#: the files lzo-bench export writes into a run folder by default
EXPORT_NAMES = ("model.onnx", "model_step.onnx", "model.nir")


def remove_exports(out: Path) -> list[str]:
    """Remove the default exports in ``out`` (they hold an earlier epoch's weights once a resumed run
    committed a new one, issue 34, 7); the names removed."""
    removed = []
    for name in EXPORT_NAMES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    return removed


def prepare_out_dir(cfg: TrainConfig, resume: bool = False) -> Path:
    """The run folder, checked but not created (nothing is left behind if a later check fails)."""
    out = Path(cfg.out) if cfg.out else cfg.default_out()
    try:
        check_creatable_dir(out)
    except OSError as e:
        raise ConfigError("--out", f"cannot be written: {out} ({e.strerror or e}); choose another folder") from None
    if (out / "metrics.json").exists() and not (cfg.overwrite or resume):
        raise ConfigError("--out", f"already holds a run ({out / 'metrics.json'}); pass another --out or --overwrite")
    return out


class RunFolder:
    """A run folder owned by one process: created, locked (an exclusive ``flock`` held for the run's
    lifetime), cleared of a previous run's artefacts with ``overwrite``, and removed again if it was
    created here and the run ends before finishing anything."""

    def __init__(self, out: Path, overwrite: bool, resume: bool = False):
        self.out = out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                out.mkdir()
                self.created = True  # this process made it (two runs racing for one folder cannot both)
            except FileExistsError:
                self.created = False
            ensure_writable_dir(out)
        except OSError as e:
            if getattr(self, "created", False):
                shutil.rmtree(out, ignore_errors=True)
            raise ConfigError("--out", f"cannot be written: {out} ({e.strerror or e}); choose another folder") from None
        try:
            self._lock(overwrite, resume)
        except BaseException as e:  # a full disk, a signal: nothing of this run is left behind (issue 34, 12)
            lock = getattr(self, "lock", None)
            if lock is not None and not lock.closed:
                lock.close()
                (out / LOCK_NAME).unlink(missing_ok=True)
            if self.created:
                shutil.rmtree(out, ignore_errors=True)
            if isinstance(e, OSError) and not e.filename:  # a write's error names no file
                raise OSError(e.errno, e.strerror or str(e), str(out / LOCK_NAME)) from None
            raise

    def _lock(self, overwrite: bool, resume: bool) -> None:
        out = self.out
        self.lock = open(out / LOCK_NAME, "a+")
        try:
            import fcntl

            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: no lock
            pass
        except BlockingIOError:
            self.lock.seek(0)
            holder = self.lock.read().strip() or "?"
            self.lock.close()
            self.created = False  # someone else's folder: not ours to remove
            raise ConfigError("--out", f"is in use by another lzo-bench run (pid {holder}) in {out}; wait for it to "
                                       "end or choose another folder") from None
        if (out / "metrics.json").exists() and not (overwrite or resume):
            # checked again under the lock: a run that finished between prepare_out_dir and here owns it
            (out / LOCK_NAME).unlink(missing_ok=True)  # ours while we hold it: no one else's to lose
            self.lock.close()
            self.created = False
            raise ConfigError("--out", f"already holds a run ({out / 'metrics.json'}); pass another --out or --overwrite")
        fault_point("write", out / LOCK_NAME)
        self.lock.seek(0)
        self.lock.truncate()
        self.lock.write(f"{os.getpid()}\n")
        self.lock.flush()
        if overwrite:
            for name in RUN_ARTEFACTS:
                (out / name).unlink(missing_ok=True)

    def release(self, finished_anything: bool = True) -> bool:
        """Unlock; remove the folder if this run created it and finished nothing. True if removed."""
        self.lock.close()
        if self.created and not finished_anything:
            shutil.rmtree(self.out, ignore_errors=True)
            return True
        (self.out / LOCK_NAME).unlink(missing_ok=True)
        return False


def write_config(out: Path, cfg: TrainConfig, gate: GateSpec, network: NetworkSpec, info: DatasetInfo,
                 n_train: int, n_test: int, backend: Backend, environment: dict) -> None:
    """Write ``out/config.json`` (the resolved configuration, the gate, network, dataset, backend and
    environment), atomically."""
    atomic_write_json(out / "config.json", {
        "train": cfg.to_dict(),
        "gate": {"method": gate.method.value, "dist": gate.dist.name, "alpha": gate.dist.alpha,
                 "scale": gate.dist.scale, "delta": gate.delta,
                 "samples": gate.samples, "bth": gate.bth, "bth_is_expected_threshold": cfg.bth is None},
        "network": network.to_dict(),
        "dataset": asdict(info) | {"steps": cfg.steps, "n_train": n_train, "n_test": n_test},
        "backend": {"name": backend.name, "reason": backend.reason},
        "environment": environment,
    })


#: what ``--resume`` may change: the run trains on to more epochs, with or without the energy meter
RESUME_MAY_CHANGE = ("epochs", "energy")


def resume_config(run: str | Path, epochs: int | None = None, energy: bool | None = None) -> TrainConfig:
    """The configuration of the run in folder ``run`` (as its checkpoint records it), to be continued
    to ``epochs`` (default: its own) by ``train(cfg, resume=True)``."""
    run = Path(run)
    folder = run if run.is_dir() or not run.exists() else run.parent
    try:
        _, ckpt = load_checkpoint(folder)
    except CheckpointError as e:
        raise ConfigError("--resume", f"cannot continue: {e}") from None
    if "optimizer" not in ckpt:
        raise ConfigError("--resume", f"cannot continue {folder}: its checkpoint has no optimizer state (written by an "
                                      "older lzo-bench), so it cannot continue exactly; train it again")
    try:
        cfg = TrainConfig.from_dict(ckpt["train"])
    except (TypeError, KeyError) as e:
        raise ConfigError("--resume", f"cannot continue {folder}: its checkpoint's configuration is unreadable ({e})") from None
    try:  # the checkpoint's own values, named as the checkpoint's (the user typed no --lr: issue 19, D13)
        cfg.validate()
    except ConfigError as e:
        key = e.option.lstrip("-").replace("-", "_")
        raise ConfigError("--resume", f"cannot continue {folder}: its checkpoint records {key} = "
                                      f"{getattr(cfg, key, '?')!r}, which {str(e).removeprefix(e.option).strip()}; "
                                      "the checkpoint was edited or damaged") from None
    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:  # --epochs 0 used to continue to the run's own 6
        raise ConfigError("--epochs", f"must lie in [1, {MAX_EPOCHS}] (got {epochs}); with --resume it is the total "
                                      f"to train to, more than the {ckpt['epoch']} finished")
    cfg = replace(cfg, out=str(folder), overwrite=False, epochs=cfg.epochs if epochs is None else epochs,
                  energy=cfg.energy if energy is None else energy)
    if ckpt["epoch"] >= cfg.epochs and _metrics_agree(folder, ckpt["epoch"]):
        raise ConfigError("--epochs", f"{cfg.epochs}: {folder} has already finished {ckpt['epoch']} epoch(s); "
                                      f"pass --epochs N > {ckpt['epoch']} with --resume to train it further")
    return cfg


def _metrics_agree(folder: Path, epoch: int) -> bool:
    """Whether ``metrics.json`` records the run as finished at the checkpoint's ``epoch``; it does not where
    the process died between the final epoch's checkpoint and its metrics.json (then ``--resume``
    rewrites it from the checkpoint)."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        return metrics["status"] == "completed" and len(metrics["history"]) == epoch
    except (OSError, ValueError, TypeError, KeyError):
        return False


def earlier_environment(out: Path) -> dict:
    """``config.json``'s environment record of the run in ``out``, or ``{}`` where the file is gone or
    edited: it is rewritten after the next epoch, and the checkpoint, not it, holds the configuration."""
    try:
        env = json.loads((out / "config.json").read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        return {}
    return env if isinstance(env, dict) else {}


def _run_records(out: Path, ckpt: dict) -> dict:
    """The run's records as of the checkpoint's epoch: its own ``run`` (the epoch's commit), or, for a
    checkpoint written before it carried them, ``metrics.json``."""
    if "run" in ckpt:
        return ckpt["run"]
    path = out / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"not JSON: {' '.join(str(e).split())[:120]}"
        raise ConfigError("--resume", f"cannot continue {out}: {path} is unreadable ({why}); restore it or train "
                                      "the run again") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history", []), list):
        raise ConfigError("--resume", f"cannot continue {out}: {path} is not a run's metrics (a JSON object "
                                      "with a history list); restore it or train the run again")
    if len(metrics.get("history", [])) < int(ckpt["epoch"]):
        raise ConfigError("--resume", f"cannot continue {out}: metrics.json records {len(metrics.get('history', []))} "
                                      f"epoch(s) but the checkpoint {ckpt['epoch']}; the folder was edited or damaged")
    return metrics


def restore_run(out: Path, cfg: TrainConfig, model: SNN, optimizer: torch.optim.Optimizer,
                result: RunResult) -> tuple[int, int]:
    """Load the run in ``out`` (checkpoint, Adam state, finished epochs' records) into ``model``,
    ``optimizer`` and ``result``; return (epochs done, updates done). The records come from the
    checkpoint (see :func:`_run_records`): ``metrics.json`` may lag it by the epoch a death interrupted."""
    try:
        _, ckpt = load_checkpoint(out)
    except CheckpointError as e:
        raise ConfigError("--resume", f"cannot continue {out}: {e}") from None
    same = {k: v for k, v in ckpt["train"].items() if k not in RESUME_MAY_CHANGE + ("out", "overwrite")}
    now = {k: v for k, v in cfg.to_dict().items() if k in same}
    if same != now or "optimizer" not in ckpt:
        raise ConfigError("--resume", f"cannot continue {out}: its checkpoint changed since the run was read")
    done, updates = int(ckpt["epoch"]), int(ckpt["update"])
    metrics = _run_records(out, ckpt)
    where = "its checkpoint's run records are" if "run" in ckpt else f"{out / 'metrics.json'} is"
    try:  # hand-edited records: wrong types anywhere are one line, not a traceback (issue 19, D6)
        history = [EpochRecord(**r) for r in metrics["history"][:done]]
        if len(history) < done:
            raise ValueError(f"{len(history)} epoch record(s) for {done} epoch(s)")
        per_update = metrics.get("updates", {})
        lists = [list(per_update.get(k, []))[:updates] for k in ("loss", "active_pct", "fwd_ms", "bwd_ms")]
        wall_s = float((metrics.get("final") or {}).get("wall_s", 0.0))
        earlier = metrics.get("processes") or [metrics.get("process")]
        processes = [p for p in earlier if p] + [PROCESS_ID]
        warnings = [str(w) for w in metrics.get("warnings", [])]
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ConfigError("--resume", f"cannot continue {out}: {where} damaged ({type(e).__name__}: "
                                      f"{' '.join(str(e).split())[:160]}); restore it or train the run again") from None
    model.load_state_dict(ckpt["state_dict"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
        raise ConfigError("--resume", f"cannot continue {out}: its checkpoint's optimizer state is damaged "
                                      f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); the checkpoint was "
                                      "edited or damaged: train the run again") from None
    for group in optimizer.param_groups:  # one truth: the lr that trains is the one the checkpoint records (issue 34, 6)
        group["lr"] = cfg.lr
    result.history = history
    result.update_loss, result.update_active_pct, result.update_fwd_ms, result.update_bwd_ms = lists
    result.wall_s, result.processes, result.warnings = wall_s, processes, warnings
    return done, updates
