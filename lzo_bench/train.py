"""Training: configuration, the update loop, and the run folder it leaves behind.

A run folder holds ``config.json`` (the resolved configuration), ``metrics.json`` (``status``,
per-epoch ``history``, per-update ``updates``, ``final``) and ``checkpoint.pt`` (state dict +
network spec, loadable without this module). Each is rewritten atomically after every finished
epoch, so an interrupted or diverged run keeps everything it finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import torch

from lzo_bench import __version__
from lzo_bench.backends import Backend, BackendName, BackendUnavailable, select_backend
from lzo_bench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lzo_bench.data import DATASET_INFO, DatasetError, DatasetMissing, SpikeDataset, batches, load_dataset
from lzo_bench.data.encoding import TooLarge
from lzo_bench.energy import NullMeter, counter_delta_mj, counter_period_ms, open_meter
from lzo_bench.fsio import atomic_write_json, check_creatable_dir, ensure_writable_dir
from lzo_bench.gates import DIST_NAMES, SURROGATE_DISTRIBUTIONS, GateSpec, Method
from lzo_bench.limits import FLOAT32_MAX, FLOAT32_TINY, LIMIT_WHY, MAX_EPOCHS, MAX_NEURONS, MAX_STEPS
from lzo_bench.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.rng import MAX_SAMPLES, MAX_SEED, DrawKey
from lzo_bench.signals import Terminated, signum_of
from lzo_bench.threads import threads_problem, torch_threads


#: this process, as recorded in every run's metrics: speed-ups are only taken between runs timed by one process
PROCESS_ID = f"{platform.node()}:{os.getpid()}:{time.time_ns()}"


class ConfigError(ValueError):
    """A bad option value; ``option`` names the command-line option at fault."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(f"{option} {message}")


class TrainingDiverged(RuntimeError):
    def __init__(self, epoch: int, update: int, out: Path, what: str = "loss", kept: bool = True):
        self.epoch, self.update, self.out = epoch, update, out
        where = (f"The last good checkpoint is kept in {out}." if kept
                 else f"No epoch finished: nothing to keep, removed {out}.")
        super().__init__(f"{what} became NaN/inf at epoch {epoch}, update {update}; stopped. {where} Try a smaller --lr.")


class TrainingInterrupted(Exception):
    def __init__(self, epochs_done: int, out: Path, signum: int = signal.SIGINT, kept: bool = True):
        self.epochs_done, self.out, self.signum = epochs_done, out, int(signum)
        name = signal.Signals(signum).name
        where = f"kept in {out}" if kept else f"nothing to keep: removed {out}"
        super().__init__(f"interrupted after {epochs_done} finished epoch(s) ({name}); {where}")


class TrainingFailed(RuntimeError):
    """Anything else that stopped a run (a write error, a kernel error); metrics.json says "failed"."""

    def __init__(self, reason: str, epochs_done: int, out: Path, kept: bool = True):
        self.reason, self.epochs_done, self.out = reason, epochs_done, out
        where = f"what finished is kept in {out}" if kept else f"nothing finished: removed {out}"
        if kept and epochs_done == 0:
            where = f"no epoch finished; {out} is left as it was"
        super().__init__(f"training failed after {epochs_done} finished epoch(s): {reason}; {where}")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated` (main thread only, where Python can
    install handlers); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def finite_model(model: torch.nn.Module) -> bool:
    """Every parameter and gradient finite (one device sync)."""
    checks = [torch.isfinite(t).all() for p in model.parameters() for t in (p, p.grad) if t is not None]
    return bool(torch.stack(checks).all())




def check_float32_positive(option: str, value: float, usual: str) -> None:
    """``value`` > 0, finite and inside float32's normal range, in which training computes (one check
    for train, profile and reproduce: ``profile --delta 1e-300`` used to pass where train refused it)."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(option, f"must be > 0 (got {value})")
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:
        raise ConfigError(option, f"{value:g} does not fit float32, in which training computes; choose a value around {usual}")


def check_device_option(device: str, option: str = "--device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and CUDA only where a GPU is visible."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(option, f"must be auto, cpu, cuda or cuda:N (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(option, "is cuda but no CUDA device is available here; use --device cpu")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``lzo-bench train`` takes. ``None`` means: the dataset's default."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    method: str = "localzo"
    dist: str = "normal"
    k: float | None = None
    delta: float = 0.05
    samples: int = 1
    bth: float | None = None
    epochs: int = 20
    batch_size: int | None = None
    lr: float | None = None
    hidden: tuple[int, ...] = (200, 200)
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    regularize: bool = True
    energy: bool = False
    threads: int | None = None  # torch's CPU threads for the run (None: torch's own, every core)
    out: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        if self.dataset not in DATASET_INFO:
            raise ConfigError("--dataset", f"must be one of: {', '.join(DATASET_INFO)} (got {self.dataset!r})")
        if self.method not in {m.value for m in Method}:
            raise ConfigError("--method", f"must be one of: {', '.join(m.value for m in Method)} (got {self.method!r})")
        if self.dist not in DIST_NAMES:
            raise ConfigError("--dist", f"must be one of: {', '.join(DIST_NAMES)} (got {self.dist!r})")
        if self.bth is not None and self.method != Method.SPARSEGRAD.value:
            raise ConfigError("--bth", f"applies to --method sparsegrad only (got --method {self.method}); "
                                       "LocalZO's band comes from δ and the draws")
        if self.k is not None and self.dist not in SURROGATE_DISTRIBUTIONS:
            raise ConfigError("--k", f"applies to --dist {' or '.join(SURROGATE_DISTRIBUTIONS)} only (got --dist {self.dist})")
        for option, value, usual in (("--delta", self.delta, "0.05"), ("--bth", self.bth, "0.05"),
                                     ("--lr", self.lr, "1e-3"), ("--k", self.k, "100")):
            if value is not None:
                check_float32_positive(option, value, usual)
        for option, value, top in (("--samples", self.samples, MAX_SAMPLES - 1), ("--epochs", self.epochs, MAX_EPOCHS),
                                   ("--batch-size", self.batch_size, None), ("--steps", self.steps, MAX_STEPS)):
            if value is not None and value < 1:
                raise ConfigError(option, f"must be ≥ 1 (got {value})")
            if value is not None and top is not None and value > top:
                raise ConfigError(option, f"must be ≤ {top} (got {value}): {LIMIT_WHY[option]}")
        if not self.hidden or any(n < 1 for n in self.hidden):
            raise ConfigError("--hidden", f"needs one or more positive layer sizes, e.g. 200,200 (got {list(self.hidden)})")
        if any(n > MAX_NEURONS for n in self.hidden):
            raise ConfigError("--hidden", f"layer sizes must be ≤ {MAX_NEURONS} (got {list(self.hidden)})")
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError("--seed", f"must lie in [0, 2^64) (got {self.seed})")
        check_device_option(self.device)
        BackendName(self.backend)
        if self.threads is not None and threads_problem(self.threads):
            raise ConfigError("--threads", threads_problem(self.threads))

    def resolved(self) -> "TrainConfig":
        """A copy with every dataset default filled in and the device made concrete."""
        info = DATASET_INFO[self.dataset]
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return replace(
            self,
            batch_size=self.batch_size or info.batch_size,
            lr=self.lr or info.lr,
            steps=self.steps or info.default_steps,
            device=device,
        )

    def default_out(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{self.dataset}-{self.method}-{self.dist}-seed{self.seed}-{stamp}"

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (``hidden`` a list): a checkpoint's and config.json's ``train``."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The configuration :meth:`to_dict` wrote (``hidden`` as a list or tuple), or any dict of its
        fields; the one way a ``TrainConfig`` is rebuilt from a dict (a checkpoint's ``train``, a
        reproduce trial's arguments). An unknown field raises ``TypeError``, a missing ``hidden``
        ``KeyError``; the values are not validated (:meth:`validate`)."""
        return cls(**{**d, "hidden": tuple(d["hidden"])})


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


class Reporter(Protocol):
    def start(self, result: RunResult, n_batches: int) -> None: ...
    def batch(self, epoch: int, index: int, loss: float, acc: float, active_pct: list[float]) -> None: ...
    def epoch(self, record: EpochRecord) -> None: ...
    def warn(self, message: str) -> None: ...
    def stop(self) -> None: ...


class NullReporter:
    def start(self, result: RunResult, n_batches: int) -> None: ...
    def batch(self, epoch: int, index: int, loss: float, acc: float, active_pct: list[float]) -> None: ...
    def epoch(self, record: EpochRecord) -> None: ...
    def warn(self, message: str) -> None: ...
    def stop(self) -> None: ...


def silent_layers_warning(gate: GateSpec, record: EpochRecord) -> str | None:
    """A sparse rule whose band held no neuron of a layer for a whole epoch: that layer (and all
    below it) got no gradient from the loss."""
    silent = [i + 1 for i, p in enumerate(record.active_pct) if p == 0.0]
    if gate.method is Method.SURROGATE or not silent:
        return None
    band = f"δ = {gate.delta:g}" if gate.method is Method.LOCALZO else f"B_th = {gate.bth:g}"
    layers = f"layer{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))}"
    return (f"no neuron of {layers} was active in epoch {record.epoch} ({band}): no "
            "gradient reaches it; a δ around 0.05 (or a wider --bth) gives the paper's ~1 % active")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``, else the platform's word for it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or platform.machine()


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(
    model: SNN, data: SpikeDataset, batch_size: int, device: torch.device, backend: Backend | None = None
) -> float:
    """Test accuracy in percent (inference forward: no gates)."""
    correct = 0
    events = backend is not None and backend.network is not None
    for x, y in batches(data, batch_size, device, events=events):
        correct += int((model(x, backend=backend).logits.argmax(1) == y).sum())
    return 100.0 * correct / len(data)


#: what a run (and its exports) leaves in its folder; --overwrite clears these first
RUN_ARTEFACTS = ("config.json", "metrics.json", "checkpoint.pt", "model.onnx", "model_step.onnx", "model.nir")
LOCK_NAME = ".lzo-run.lock"


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
            raise ConfigError("--out", f"cannot be written: {out} ({e.strerror or e}); choose another folder") from None
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
            raise ConfigError("--out", f"is in use by another lzo-bench run (pid {holder}) in {out}; wait for it to "
                                       "end or choose another folder") from None
        if (out / "metrics.json").exists() and not (overwrite or resume):
            # checked again under the lock: a run that finished between prepare_out_dir and here owns it
            (out / LOCK_NAME).unlink(missing_ok=True)  # ours while we hold it: no one else's to lose
            self.lock.close()
            raise ConfigError("--out", f"already holds a run ({out / 'metrics.json'}); pass another --out or --overwrite")
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


def build_network(cfg: TrainConfig, n_in: int, n_out: int) -> NetworkSpec:
    info = DATASET_INFO[cfg.dataset]
    return NetworkSpec(
        n_in=n_in,
        hidden=tuple(cfg.hidden),
        n_out=n_out,
        beta=math.exp(-info.dt_ms / info.tau_mem_ms),
        beta_out=math.exp(-info.dt_ms / info.tau_out_ms),
        reduce=info.reduce,
        init=info.init,
        init_gain=info.init_gain,
    )


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
    cfg = replace(cfg, out=str(folder), overwrite=False, epochs=epochs or cfg.epochs,
                  energy=cfg.energy if energy is None else energy)
    if ckpt["epoch"] >= cfg.epochs:
        raise ConfigError("--epochs", f"{cfg.epochs}: {folder} has already finished {ckpt['epoch']} epoch(s); "
                                      f"pass --epochs N > {ckpt['epoch']} with --resume to train it further")
    return cfg


def earlier_environment(out: Path) -> dict:
    """``config.json``'s environment record of the run in ``out``, or ``{}`` where the file is gone or
    edited: it is rewritten after the next epoch, and the checkpoint, not it, holds the configuration."""
    try:
        env = json.loads((out / "config.json").read_text()).get("environment")
    except (OSError, ValueError, AttributeError):
        return {}
    return env if isinstance(env, dict) else {}


def restore_run(out: Path, cfg: TrainConfig, model: SNN, optimizer: torch.optim.Optimizer,
                result: RunResult) -> tuple[int, int]:
    """Load the run in ``out`` (checkpoint, Adam state, finished epochs' records) into ``model``,
    ``optimizer`` and ``result``; return (epochs done, updates done)."""
    try:
        _, ckpt = load_checkpoint(out)
        metrics = json.loads((out / "metrics.json").read_text())
    except (CheckpointError, OSError, ValueError) as e:
        raise ConfigError("--resume", f"cannot continue {out}: {e}") from None
    same = {k: v for k, v in ckpt["train"].items() if k not in RESUME_MAY_CHANGE + ("out", "overwrite")}
    now = {k: v for k, v in cfg.to_dict().items() if k in same}
    if same != now or "optimizer" not in ckpt:
        raise ConfigError("--resume", f"cannot continue {out}: its checkpoint changed since the run was read")
    done, updates = int(ckpt["epoch"]), int(ckpt["update"])
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history", []), list):
        raise ConfigError("--resume", f"cannot continue {out}: its metrics.json is not a run's metrics (a JSON object "
                                      "with a history list); restore it or train the run again")
    if len(metrics.get("history", [])) < done:
        raise ConfigError("--resume", f"cannot continue {out}: metrics.json records {len(metrics.get('history', []))} "
                                      f"epoch(s) but the checkpoint {done}; the folder was edited or damaged")
    try:  # a hand-edited metrics.json: wrong types anywhere are one line, not a traceback (issue 19, D6)
        history = [EpochRecord(**r) for r in metrics["history"][:done]]
        per_update = metrics.get("updates", {})
        lists = [list(per_update.get(k, []))[:updates] for k in ("loss", "active_pct", "fwd_ms", "bwd_ms")]
        wall_s = float((metrics.get("final") or {}).get("wall_s", 0.0))
        earlier = metrics.get("processes") or [metrics.get("process")]
        processes = [p for p in earlier if p] + [PROCESS_ID]
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ConfigError("--resume", f"cannot continue {out}: its metrics.json is damaged ({type(e).__name__}: "
                                      f"{' '.join(str(e).split())[:160]}); restore it or train the run again") from None
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    result.history = history
    result.update_loss, result.update_active_pct, result.update_fwd_ms, result.update_bwd_ms = lists
    result.wall_s, result.processes = wall_s, processes
    return done, updates


def epoch_energy_j(start_mj: int | None, end_mj: int | None, seconds: float,
                   period_ms: float | None) -> tuple[float | None, str | None]:
    """An epoch's energy from the counter at its edges, or ``None`` and why: the counter moves in
    steps of one period (~100 ms on NVML), so a window shorter than 10 periods is off by up to 10 %
    or reads 0 J; a counter that went down was reset by the driver."""
    if start_mj is None or end_mj is None:
        return None, None
    if period_ms is not None and seconds < 10 * period_ms / 1000.0:
        return None, (f"the epoch ({seconds:.2f} s) is shorter than 10 periods of the energy counter "
                      f"({period_ms:.0f} ms): too short to measure")
    delta = counter_delta_mj(start_mj, end_mj)
    if delta is None:
        return None, "the energy counter went down during the epoch (a driver reset): not measured"
    return delta / 1000.0, None


def train(cfg: TrainConfig, reporter: Reporter | None = None, resume: bool = False) -> RunResult:
    """Train per ``cfg``; raises :class:`ConfigError`, :class:`TrainingDiverged`, :class:`TrainingInterrupted`.

    ``resume``: continue the run in ``cfg.out`` from its last finished epoch (``cfg`` from
    :func:`resume_config`); the result equals an uninterrupted run's on the same backend, bit for bit.
    ``cfg.threads`` sets torch's CPU threads for the run, restored after.
    """
    cfg.validate()
    with torch_threads(cfg.threads):
        return _train(cfg, reporter, resume)


def _train(cfg: TrainConfig, reporter: Reporter | None, resume: bool) -> RunResult:
    reporter = reporter or NullReporter()
    cfg = cfg.resolved()
    try:
        gate = GateSpec.build(cfg.method, cfg.dist, cfg.delta, cfg.samples, cfg.bth, cfg.k)
    except ValueError as e:  # the distribution Theorem 3 builds from g: with a --k given, k is what made it fail
        if cfg.k is not None:
            raise ConfigError("--k", f"{cfg.k:g} gives no usable distribution for --dist {cfg.dist}: {e}; "
                                     f"choose k around 100") from None
        raise ConfigError("--dist", str(e)) from None
    out = prepare_out_dir(cfg, resume)
    cfg = replace(cfg, out=str(out))
    device = torch.device(cfg.device)
    try:
        backend = select_backend(cfg.backend, device, gate)
    except BackendUnavailable as e:
        raise ConfigError("--backend", f"{cfg.backend} is unavailable: {e}") from None

    try:
        train_set, test_set = load_dataset(cfg.dataset, cfg.steps, cfg.data_dir, cfg.download)
    except DatasetMissing as e:
        raise ConfigError("--data-dir", f"does not hold the dataset: {e}") from None
    except DatasetError as e:
        raise ConfigError("--data-dir", f"holds a damaged dataset: {e}") from None
    except TooLarge as e:
        raise ConfigError("--steps", f"{cfg.steps} is too many for this machine: {e}; choose fewer --steps") from None
    info = DATASET_INFO[cfg.dataset]
    net_spec = build_network(cfg, train_set.n_units, train_set.n_classes)
    torch.manual_seed(cfg.seed)
    model = SNN(net_spec, torch.Generator().manual_seed(cfg.seed)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    regularizer = SpikeRegularizer(f_up=info.f_up, enabled=cfg.regularize)

    result = RunResult(out, cfg, gate, backend)
    folder = RunFolder(out, cfg.overwrite, resume)
    try:  # from the folder's creation on: a signal or an error in the setup keeps no stale lock (D4, D5)
        done, update = 0, 0
        environment = {"lzo_bench": __version__, "torch": torch.__version__, "python": platform.python_version(),
                       "device": str(device), "device_name": device_name(device), "host": platform.node(),
                       "threads": torch.get_num_threads(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if resume:
            done, update = restore_run(out, cfg, model, optimizer, result)
            before = earlier_environment(out)
            resumed = before.get("resumed") if isinstance(before.get("resumed"), list) else []
            environment |= {"created": before.get("created"), "resumed": resumed + [environment["created"]]}
        meter = open_meter(device) if cfg.energy else NullMeter("not requested (pass --energy)")
        period_ms = counter_period_ms(meter) if cfg.energy and meter.available else None
        if cfg.energy:
            result.energy = {"requested": True, "available": meter.available, "reason": meter.reason,
                             "method": "NVML total-energy counter read at epoch edges (one device sync per epoch); an "
                                       "epoch shorter than 10 counter periods is not measured",
                             "counter_period_ms": period_ms}
        atomic_write_json(out / "config.json", {
            "train": cfg.to_dict(),
            "gate": {"method": gate.method.value, "dist": gate.dist.name, "alpha": gate.dist.alpha,
                     "scale": gate.dist.scale, "delta": gate.delta,
                     "samples": gate.samples, "bth": gate.bth, "bth_is_expected_threshold": cfg.bth is None},
            "network": net_spec.to_dict(),
            "dataset": asdict(info) | {"steps": cfg.steps, "n_train": len(train_set), "n_test": len(test_set)},
            "backend": {"name": backend.name, "reason": backend.reason},
            "environment": environment,
        })

        n_batches = math.ceil(len(train_set) / cfg.batch_size)
        reporter.start(result, n_batches)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (lzo_bench.signals) before the first update
        kept = not folder.release(bool(result.history))
        raise TrainingInterrupted(len(result.history), out, signum_of(e), kept=kept) from None
    except BaseException:
        if not folder.lock.closed:
            folder.release(bool(result.history) or resume)
        raise
    started = time.perf_counter() - result.wall_s  # a resumed run's wall time goes on from its own
    saved = done  # epochs whose checkpoint is on disk

    def diverged(epoch: int, update: int, what: str) -> TrainingDiverged:
        """Stop on a non-finite value: keep what finished (the last finite checkpoint), or, if no epoch
        did, remove the folder this run made, as any run that finishes nothing (README: no debris)."""
        result.status = "diverged"
        result.wall_s = time.perf_counter() - started
        if result.history:
            atomic_write_json(out / "metrics.json", result.metrics())
        kept = not folder.release(bool(result.history))
        return TrainingDiverged(epoch, update, out, what, kept)

    with sigterm_as_interrupt():
        try:
            for epoch in range(done + 1, cfg.epochs + 1):
                sync_device(device)
                epoch_start = time.perf_counter()
                energy_start = meter.energy_mj()
                shuffle = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) % MAX_SEED)
                loss_sum = correct = seen = 0.0
                active = [0] * len(cfg.hidden)
                entries = 0
                fwd = bwd = opt = 0.0
                loader = batches(train_set, cfg.batch_size, device, shuffle, reuse_buffer=True,
                                 events=backend.network is not None)
                for i, (x, y) in enumerate(loader):
                    t0 = time.perf_counter()
                    out_fw = model(x, gate, DrawKey(cfg.seed, update), backend)
                    loss = classification_loss(out_fw.logits, y) + regularizer(out_fw.counts)
                    sync_device(device)
                    t1 = time.perf_counter()
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise diverged(epoch, update, "loss")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    sync_device(device)
                    t2 = time.perf_counter()
                    optimizer.step()
                    sync_device(device)
                    t3 = time.perf_counter()
                    if not finite_model(model):
                        raise diverged(epoch, update, "the model's parameters or gradients")
                    fwd, bwd, opt = fwd + t1 - t0, bwd + t2 - t1, opt + t3 - t2

                    steps, b = x.shape[0], x.shape[1]
                    batch_pct = [100.0 * a / (steps * b * n) for a, n in zip(out_fw.active, cfg.hidden)]
                    active = [a + c for a, c in zip(active, out_fw.active)]
                    entries += steps * b
                    loss_sum += loss_value * b
                    correct += float((out_fw.logits.argmax(1) == y).sum())
                    seen += b
                    update += 1
                    result.update_loss.append(loss_value)
                    result.update_active_pct.append(batch_pct)
                    result.update_fwd_ms.append(1e3 * (t1 - t0))
                    result.update_bwd_ms.append(1e3 * (t2 - t1))
                    reporter.batch(epoch, i + 1, loss_value, 100.0 * correct / seen, batch_pct)

                n_upd = i + 1
                sync_device(device)
                energy_end = meter.energy_mj()
                epoch_s = time.perf_counter() - epoch_start
                epoch_j, energy_note = epoch_energy_j(energy_start, energy_end, epoch_s, period_ms)
                record = EpochRecord(
                    epoch=epoch,
                    train_loss=loss_sum / seen,
                    train_acc=100.0 * correct / seen,
                    test_acc=evaluate(model, test_set, max(cfg.batch_size, 256), device, backend),
                    active_pct=[100.0 * a / (entries * n) for a, n in zip(active, cfg.hidden)],
                    fwd_ms=1e3 * fwd / n_upd,
                    bwd_ms=1e3 * bwd / n_upd,
                    opt_ms=1e3 * opt / n_upd,
                    updates=n_upd,
                    wall_s=time.perf_counter() - epoch_start,
                    energy_j=epoch_j,
                    j_per_update=None if epoch_j is None else epoch_j / n_upd,
                    energy_note=energy_note,
                )
                result.history.append(record)
                warning = silent_layers_warning(gate, record)
                if warning and not result.warnings:  # once a run: the next epochs would repeat it
                    result.warnings.append(warning)
                    reporter.warn(warning)
                result.wall_s = time.perf_counter() - started
                result.status = "completed" if epoch == cfg.epochs else "running"
                save_checkpoint(out / "checkpoint.pt", model, net_spec, info, cfg, epoch, optimizer, update)
                atomic_write_json(out / "metrics.json", result.metrics())
                saved = epoch  # checkpoint and metrics of this epoch are on disk
                reporter.epoch(record)
        except KeyboardInterrupt as e:
            result.status = "interrupted"
            result.wall_s = time.perf_counter() - started
            atomic_write_json(out / "metrics.json", result.metrics())
            raise TrainingInterrupted(len(result.history), out, getattr(e, "signum", signal.SIGINT),
                                      kept=not folder.release(bool(result.history))) from None
        except (TrainingDiverged, ConfigError):
            raise
        except Exception as e:
            result.status = "failed"
            result.wall_s = time.perf_counter() - started
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            del result.history[saved:]  # an epoch whose checkpoint did not reach the disk did not finish (D4)
            if saved:
                try:
                    atomic_write_json(out / "metrics.json", result.metrics() | {"failure": reason})
                except OSError:
                    pass  # the folder itself may be what failed (a full disk): the last epoch's files stand
            kept = not folder.release(saved > done or resume)
            raise TrainingFailed(reason, saved, out, kept) from e
        finally:
            reporter.stop()
            if not folder.lock.closed:
                folder.release()
    return result
