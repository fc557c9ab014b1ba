"""Training: the update loop, :func:`train`, over a :class:`~lzo_bench.training.config.TrainConfig`,
writing the run folder (:mod:`lzo_bench.training.run_folder`) after every finished epoch; the ways a run ends
early (:class:`TrainingDiverged`, :class:`TrainingInterrupted`, :class:`TrainingFailed`) and the
:class:`~lzo_bench.training.reporter.Reporter` it tells its progress (re-exported here).

The configuration, run-folder, device and energy names it used to define are re-exported here
(``__all__``), so ``from lzo_bench.training.train import TrainConfig`` goes on working.
"""

from __future__ import annotations

import math
import platform
import signal
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from lzo_bench import __version__
from lzo_bench.core.conv import CONV_NETWORKS
from lzo_bench.core.gates import GateSpec, Method
from lzo_bench.core.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import MAX_SEED, DrawKey
from lzo_bench.data import DATASET_INFO, DatasetError, DatasetMissing, SpikeDataset, batches, load_dataset
from lzo_bench.data.encoding import TooLarge
from lzo_bench.measure.energy import Meter, counter_period_ms, epoch_energy_j, open_meter
from lzo_bench.measure.timing import PhaseClock, timed_update
from lzo_bench.ops.backends import Backend, BackendUnavailable, select_backend
from lzo_bench.runtime.devices import device_name, sync_device
from lzo_bench.runtime.signals import pause_point, signum_of, sigterm_as_interrupt
from lzo_bench.runtime.threads import torch_threads
from lzo_bench.training.checkpoint import save_checkpoint
from lzo_bench.training.config import ConfigError, TrainConfig, check_device_option, check_float32_positive
from lzo_bench.training.reporter import Reporter
from lzo_bench.training.run_folder import (
    LOCK_NAME,
    PROCESS_ID,
    RESUME_MAY_CHANGE,
    RUN_ARTEFACTS,
    EpochRecord,
    RunFolder,
    RunResult,
    earlier_environment,
    prepare_out_dir,
    remove_exports,
    restore_run,
    resume_config,
    write_config,
)

__all__ = [
    # the loop
    "train", "Reporter", "TrainingDiverged", "TrainingInterrupted", "TrainingFailed",
    "evaluate", "build_network", "build_gate", "run_backend", "run_datasets", "run_environment", "open_run_meter",
    "finite_model", "silent_layers_warning",
    # re-exported: lzo_bench.training.config
    "ConfigError", "TrainConfig", "check_device_option", "check_float32_positive",
    # re-exported: lzo_bench.training.run_folder
    "EpochRecord", "RunResult", "RunFolder", "PROCESS_ID", "RUN_ARTEFACTS", "LOCK_NAME", "RESUME_MAY_CHANGE",
    "prepare_out_dir", "resume_config", "restore_run", "earlier_environment",
    # re-exported: lzo_bench.runtime.devices, lzo_bench.measure.energy, lzo_bench.runtime.signals
    "device_name", "sync_device", "epoch_energy_j", "sigterm_as_interrupt",
]


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


def finite_model(model: torch.nn.Module) -> bool:
    """Every parameter and gradient finite (one device sync)."""
    checks = [torch.isfinite(t).all() for p in model.parameters() for t in (p, p.grad) if t is not None]
    return bool(torch.stack(checks).all())


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


def build_network(cfg: TrainConfig, n_in: int, n_out: int) -> NetworkSpec:
    """The network ``cfg`` names: ``--hidden`` layers, after the dataset's conv layers for ``--arch conv``."""
    info = DATASET_INFO[cfg.dataset]
    conv = CONV_NETWORKS[cfg.dataset] if cfg.arch == "conv" else ()
    return NetworkSpec(
        conv=conv,
        frame=info.frame if conv else None,
        n_in=n_in,
        hidden=tuple(cfg.hidden),
        n_out=n_out,
        beta=math.exp(-info.dt_ms / info.tau_mem_ms),
        beta_out=math.exp(-info.dt_ms / info.tau_out_ms),
        reduce=info.reduce,
        init=info.init,
        init_gain=info.init_gain,
    )


def train(cfg: TrainConfig, reporter: Reporter | None = None, resume: bool = False) -> RunResult:
    """Train per ``cfg``; raises :class:`ConfigError`, :class:`TrainingDiverged`, :class:`TrainingInterrupted`.

    ``resume``: continue the run in ``cfg.out`` from its last finished epoch (``cfg`` from
    :func:`resume_config`); the result equals an uninterrupted run's on the same backend, bit for bit.
    ``cfg.threads`` sets torch's CPU threads for the run, restored after.
    """
    cfg.validate()
    with torch_threads(cfg.threads):
        return _train(cfg, reporter, resume)


def build_gate(cfg: TrainConfig) -> GateSpec:
    """The rule ``cfg`` names; a distribution that cannot be built is the option that made it."""
    try:
        return GateSpec.build(cfg.method, cfg.dist, cfg.delta, cfg.samples, cfg.bth, cfg.k)
    except ValueError as e:  # the distribution Theorem 3 builds from g: with a --k given, k is what made it fail
        if cfg.k is not None:
            raise ConfigError("--k", f"{cfg.k:g} gives no usable distribution for --dist {cfg.dist}: {e}; "
                                     f"choose k around 100") from None
        raise ConfigError("--dist", str(e)) from None


def run_backend(cfg: TrainConfig, device: torch.device, gate: GateSpec) -> Backend:
    """The backend ``cfg.backend`` names, or :class:`ConfigError` saying why it is unavailable."""
    try:
        return select_backend(cfg.backend, device, gate)
    except BackendUnavailable as e:
        raise ConfigError("--backend", f"{cfg.backend} is unavailable: {e}") from None


def run_datasets(cfg: TrainConfig) -> tuple[SpikeDataset, SpikeDataset]:
    """The training and test sets; a missing, damaged or too large dataset is the option at fault."""
    try:
        return load_dataset(cfg.dataset, cfg.steps, cfg.data_dir, cfg.download, channels=cfg.arch == "conv")
    except DatasetMissing as e:
        raise ConfigError("--data-dir", f"does not hold the dataset: {e}") from None
    except DatasetError as e:
        raise ConfigError("--data-dir", f"holds a damaged dataset: {e}") from None
    except TooLarge as e:
        raise ConfigError("--steps", f"{cfg.steps} is too many for this machine: {e}; choose fewer --steps") from None


def run_environment(device: torch.device) -> dict:
    """config.json's ``environment``: versions, device, host, threads and when the run was created."""
    return {"lzo_bench": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": device_name(device), "host": platform.node(),
            "threads": torch.get_num_threads(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def open_run_meter(cfg: TrainConfig, device: torch.device, result: RunResult) -> tuple[Meter, float | None]:
    """The energy meter (a :class:`NullMeter` without ``--energy``) and its counter's period; records
    in ``result.energy`` what was asked for and how it is measured."""
    meter = open_meter(device, cfg.energy)
    period_ms = counter_period_ms(meter) if cfg.energy and meter.available else None
    if cfg.energy:
        result.energy = {"requested": True, "available": meter.available, "reason": meter.reason,
                         "method": "NVML total-energy counter read at epoch edges (one device sync per epoch); an "
                                   "epoch shorter than 10 counter periods is not measured",
                         "counter_period_ms": period_ms}
    return meter, period_ms


def _train(cfg: TrainConfig, reporter: Reporter | None, resume: bool) -> RunResult:
    reporter = reporter or Reporter()
    cfg = cfg.resolved()
    gate = build_gate(cfg)
    out = prepare_out_dir(cfg, resume)
    cfg = replace(cfg, out=str(out))
    device = torch.device(cfg.device)
    pause_point("train-setup")  # a test's moment (runtime.signals): before the folder, during the backend's load
    backend = run_backend(cfg, device, gate)
    train_set, test_set = run_datasets(cfg)
    info = DATASET_INFO[cfg.dataset]
    net_spec = build_network(cfg, train_set.n_units, train_set.n_classes)
    torch.manual_seed(cfg.seed)
    model = SNN(net_spec, torch.Generator().manual_seed(cfg.seed)).to(device)
    sizes = net_spec.layer_sizes
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    regularizer = SpikeRegularizer(f_up=info.f_up, enabled=cfg.regularize)

    result = RunResult(out, cfg, gate, backend)
    folder = RunFolder(out, cfg.overwrite, resume)
    try:  # from the folder's creation on: a signal or an error in the setup keeps no stale lock (D4, D5)
        done, update = 0, 0
        environment = run_environment(device)
        if resume:
            done, update = restore_run(out, cfg, model, optimizer, result)
            before = earlier_environment(out)
            resumed = before.get("resumed") if isinstance(before.get("resumed"), list) else []
            environment |= {"created": before.get("created"), "resumed": resumed + [environment["created"]]}
        meter, period_ms = open_run_meter(cfg, device, result)
        write_config(out, cfg, gate, net_spec, info, len(train_set), len(test_set), backend, environment)

        n_batches = math.ceil(len(train_set) / cfg.batch_size)
        reporter.start(result, n_batches)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (lzo_bench.runtime.signals) before the first update
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
            result.write_metrics()
        kept = not folder.release(bool(result.history))
        return TrainingDiverged(epoch, update, out, what, kept)

    clock = PhaseClock(device)  # phase edges: CUDA events on a GPU, perf_counter elsewhere
    with sigterm_as_interrupt():
        try:
            for epoch in range(done + 1, cfg.epochs + 1):
                sync_device(device)
                epoch_start = time.perf_counter()
                energy_start = meter.energy_mj()
                shuffle = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) % MAX_SEED)
                loss_sum = correct = seen = 0.0
                active = [0] * len(sizes)
                entries = 0
                fwd = bwd = opt = 0.0  # ms
                loss_value = math.nan
                loader = batches(train_set, cfg.batch_size, device, shuffle, reuse_buffer=True,
                                 events=backend.network is not None)
                for i, (x, y) in enumerate(loader):
                    def forward():
                        out = model(x, gate, DrawKey(cfg.seed, update), backend)
                        return out, classification_loss(out.logits, y) + regularizer(out.counts)

                    def check_loss(_, loss):  # timed with the backward, as the loss is read before it
                        nonlocal loss_value
                        loss_value = float(loss.detach())
                        if not math.isfinite(loss_value):
                            raise diverged(epoch, update, "loss")

                    out_fw, t = timed_update(clock, forward, optimizer, check_loss)
                    if not finite_model(model):
                        raise diverged(epoch, update, "the model's parameters or gradients")
                    fwd, bwd, opt = fwd + t.fwd_ms, bwd + t.bwd_ms, opt + t.opt_ms

                    steps, b = x.shape[0], x.shape[1]
                    batch_pct = [100.0 * a / (steps * b * n) for a, n in zip(out_fw.active, sizes)]
                    active = [a + c for a, c in zip(active, out_fw.active)]
                    entries += steps * b
                    loss_sum += loss_value * b
                    correct += float((out_fw.logits.argmax(1) == y).sum())
                    seen += b
                    update += 1
                    result.update_loss.append(loss_value)
                    result.update_active_pct.append(batch_pct)
                    result.update_fwd_ms.append(t.fwd_ms)
                    result.update_bwd_ms.append(t.bwd_ms)
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
                    active_pct=[100.0 * a / (entries * n) for a, n in zip(active, sizes)],
                    fwd_ms=fwd / n_upd,
                    bwd_ms=bwd / n_upd,
                    opt_ms=opt / n_upd,
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
                # the epoch's commit: the checkpoint (carrying the records) first, metrics.json after (rebuilt
                # from it on --resume), so a death between the two renames keeps the epoch (issue 34, 1)
                save_checkpoint(out / "checkpoint.pt", model, net_spec, info, cfg, epoch, optimizer, update,
                                run=result.metrics())
                saved = epoch  # this epoch's checkpoint is on disk: from here on it counts as finished
                result.write_metrics()
                if resume and epoch == done + 1:  # the exports hold the epoch resumed from: no longer this run's
                    for name in remove_exports(out):
                        reporter.warn(f"removed {name}: it held epoch {done}'s weights and the run is past it; "
                                      "export again")
                reporter.epoch(record)
            if done >= cfg.epochs:  # died between the final epoch's checkpoint and metrics.json: rebuilt from it
                result.status = "completed"
                result.write_metrics()
        except KeyboardInterrupt as e:
            result.status = "interrupted"
            result.wall_s = time.perf_counter() - started
            del result.history[saved:]  # a signal between an epoch's record and its checkpoint: not finished
            result.write_metrics()
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
                    result.write_metrics(failure=reason)
                except OSError:
                    pass  # the folder itself may be what failed (a full disk): the last epoch's files stand
            kept = not folder.release(saved > done or resume)
            raise TrainingFailed(reason, saved, out, kept) from e
        finally:
            reporter.stop()
            if not folder.lock.closed:
                folder.release()
    return result
