"""``lzo-bench profile``: what a training update costs with each backward rule, side by side.

Every method trains its own copy of the same initial network on the same batches; after a
warm-up the methods take turns (one update each per round, rotating the order), with the device
synchronised at phase edges — forward (incl. loss), backward, optimizer — and CUDA events on
GPU. Times are medians over rounds with the interquartile range; speedups are ratios of medians
against ``surrogate`` (the fused dense op when the extension runs) and the plain autograd loop.

Memory per update: on CUDA the allocator's peak above what was allocated before the update; on
the CPU the bytes of tensors saved for the backward (exact, saved-tensor hooks), which is the
memory an update holds between forward and backward.

Energy (``--energy``): see :func:`measure_energy`.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from lzo_bench import __version__
from lzo_bench.ops.backends import AUTOGRAD_LOOP, Backend, select_backend
from lzo_bench.training.checkpoint import checkpoint_steps, load_checkpoint
from lzo_bench.data import DatasetMissing, load_dataset
from lzo_bench.measure.energy import (
    EnergyEstimate, MeterUnavailable, NullMeter, NvmlMeter, PowerSampler, RaplMeter, Window, counter_period_ms,
    difference, estimate, integrate_power_j, open_meter,
)
from lzo_bench.runtime.fsio import atomic_write_json, atomic_write_text
from lzo_bench.core.gates import GateSpec
from lzo_bench.runtime.memory import saved_bytes
from lzo_bench.ops.event_network import as_events
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.model import SNN, Forward, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.measure.nbmetrics import NeuroBenchTally, layer_names, static_metrics
from lzo_bench.core.rng import DrawKey
from lzo_bench.measure.stats import median_iqr
from lzo_bench.measure.timing import PhaseClock
from lzo_bench.runtime.devices import cpu_facts, sync_device
from lzo_bench.measure.workloads import WORKLOADS, Workload, calibrate_deeper_layers, calibrate_gain, conv_workload

BASELINE = "autograd-loop"




def workload_batches(w: Workload, updates: int, seed: int, data_dir: str | None = None
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """``updates`` batches ``(x [T, B, n_in] bool, y)``: the real training set when it is on disk, else
    synthetic Bernoulli spikes at the workload's stated rate with random labels. Bool, a quarter of
    float32's bytes (the N-MNIST shape: 89 against 355 MB a batch): the event-driven backends read them
    as they are, the dense ones get a float copy per round (issue 21: less memory first touched). A dataset that is
    there but damaged raises :class:`~lzo_bench.data.DatasetUnreadable`: profiling synthetic spikes
    instead would pass them off silently as the real workload (issue 19, D13)."""
    g = torch.Generator().manual_seed(seed)
    try:
        train, _ = load_dataset(w.name, w.steps, data_dir, channels=bool(w.conv))
        idx = torch.randint(len(train), (updates, w.batch), generator=g)
        out = [(train.dense(i).transpose(0, 1).contiguous(), train.labels[i]) for i in idx]
        return out, f"{w.name} training set"
    except DatasetMissing:
        out = [((torch.rand(w.steps, w.batch, w.n_in, generator=g) < w.synthetic_rate),
                torch.randint(w.n_out, (w.batch,), generator=g)) for _ in range(min(updates, 8))]
        return [out[i % len(out)] for i in range(updates)], f"synthetic spikes at {w.synthetic_rate:.1%} per (step, input)"


def once_per_batch(batches: list[tuple[torch.Tensor, torch.Tensor]],
                   convert: Callable[[torch.Tensor], Any]) -> list[Any]:
    """``convert(x)`` for every batch, made once per distinct tensor (the synthetic batches repeat)."""
    done: dict[int, Any] = {}
    for x, _ in batches:
        if id(x) not in done:
            done[id(x)] = convert(x)
    return [done[id(x)] for x, _ in batches]


@dataclass
class Runner:
    """One method's network, optimiser and backend."""

    name: str
    spec: GateSpec
    backend: Backend
    model: SNN
    optimizer: torch.optim.Optimizer
    regularizer: SpikeRegularizer
    fwd: list[float] = field(default_factory=list)
    bwd: list[float] = field(default_factory=list)
    opt: list[float] = field(default_factory=list)
    active: list[list[float]] = field(default_factory=list)
    peak: list[float] = field(default_factory=list)
    last_out: Forward | None = None

    def forward_loss(self, x: torch.Tensor | SpikeEvents, y: torch.Tensor, update: int):
        out = self.model(x, self.spec, DrawKey(0, update), self.backend)
        return out, classification_loss(out.logits, y) + self.regularizer(out.counts)


def timed_update(r: Runner, x: torch.Tensor | SpikeEvents, y: torch.Tensor, update: int, clock: PhaseClock) -> None:
    device = clock.device
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = clock.mark()
    (out, loss), saved = saved_bytes(lambda: r.forward_loss(x, y, update))
    t1 = clock.mark()
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = clock.mark()
    r.optimizer.step()
    t3 = clock.mark()
    r.fwd.append(clock.ms(t0, t1))
    r.bwd.append(clock.ms(t1, t2))
    r.opt.append(clock.ms(t2, t3))
    steps, batch = x.shape[0], x.shape[1]
    r.active.append([100.0 * a / (steps * batch * c.shape[1]) for a, c in zip(out.active, out.counts)])
    r.peak.append((torch.cuda.max_memory_allocated(device) - base) / 2**20 if clock.cuda else saved / 2**20)
    r.last_out = out


def neurobench(model: SNN, x: torch.Tensor, spikes: list[torch.Tensor]) -> dict[str, Any]:
    """NeuroBench 2.3 metrics of one batch ``x [T, B, n_in]`` with its hidden ``spikes``, per
    sample (:mod:`lzo_bench.measure.nbmetrics`): activation sparsity (total and per layer), synaptic
    operations, membrane updates, and the network's parameter count, footprint and connection
    sparsity."""
    tally = NeuroBenchTally(layer_names(model))
    tally.add(model, x, spikes)
    result = tally.result()
    del result["ClassificationAccuracy"]  # a training batch, mid-training: not a test accuracy
    return result | static_metrics(model)


@dataclass
class EnergyConfig:
    min_seconds: float = 5.0
    min_updates: int = 32
    repeats: int = 4
    idle_seconds: float = 5.0   # each of the two idle windows
    settle_seconds: float = 2.0  # quiet time before each idle window (clocks and power settle)


@dataclass
class IdlePower:
    """GPU power at rest, measured before and after the timed phases, each after a settle period."""

    before_w: float | None
    after_w: float | None

    @property
    def w(self) -> float | None:
        """The mean of the two (the one measured if only one is); what net energy subtracts."""
        vals = [v for v in (self.before_w, self.after_w) if v is not None]
        return statistics.fmean(vals) if vals else None


@dataclass
class MethodEnergy:
    full: EnergyEstimate      # forward, loss, backward, optimizer step
    forward: EnergyEstimate   # forward and loss only
    fwd_bwd: EnergyEstimate   # forward, loss and backward, no optimizer step
    sampled_gap_pct: float | None  # (∫P dt − counter) / counter over all windows

    def split(self) -> dict[str, float]:
        """J per update of each phase ± std: backward = fwd_bwd − forward, optimizer = full − fwd_bwd."""
        bwd, bwd_std = difference(self.fwd_bwd, self.forward)
        opt, opt_std = difference(self.full, self.fwd_bwd)
        return {"fwd_j": self.forward.j_per_update, "fwd_j_std": self.forward.j_per_update_std,
                "bwd_j": bwd, "bwd_j_std": bwd_std, "opt_j": opt, "opt_j_std": opt_std}


def _window(meter, run_one: Callable[[int], None], cfg: EnergyConfig, sync: Callable[[], None],
            sampler: PowerSampler | None, label: str, clock: Callable[[], float]) -> tuple[Window, float | None]:
    sync()
    if sampler:
        sampler.mark(f"{label} start")
    t0_us = time.time_ns() // 1000
    start, t0 = meter.energy_mj(), clock()
    n = 0
    while n < cfg.min_updates or clock() - t0 < cfg.min_seconds:
        run_one(n)
        n += 1
    sync()
    end, t1 = meter.energy_mj(), clock()
    t1_us = time.time_ns() // 1000
    if sampler:
        sampler.mark(f"{label} end")
    sampled = integrate_power_j(sampler.samples, t0_us, t1_us) if sampler else None
    return Window(start, end, t1 - t0, n), sampled


Step = Callable[[int], None]


def _idle_w(meter, cfg: EnergyConfig, sync: Callable[[], None], clock: Callable[[], float],
            sleep: Callable[[float], None]) -> float | None:
    """Mean power over ``idle_seconds`` after ``settle_seconds`` of rest; ``None`` if the counter
    did not move or was reset."""
    sync()
    sleep(cfg.settle_seconds)
    s0, t0 = meter.energy_mj(), clock()
    sleep(cfg.idle_seconds)
    w = Window(s0, meter.energy_mj(), clock() - t0, 1)
    return w.energy_j / w.seconds if w.end_mj > w.start_mj and w.seconds > 0 else None


def measure_energy(
    meter, methods: dict[str, tuple[Step, Step, Step]], cfg: EnergyConfig, sync: Callable[[], None],
    sampler: PowerSampler | None = None, clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[IdlePower, dict[str, MethodEnergy]]:
    """Idle power (before and after), and per method windows of ≥ ``min_seconds`` and ≥
    ``min_updates`` updates of ``methods[name] = (full_update, forward_only, forward_backward)``,
    repeated ``repeats`` times, methods interleaved.

    Energy per update is the counter difference over a window divided by its updates (the
    counter moves in steps of ~100 ms, so short windows cannot be split); the phase split comes from
    windows of the three kinds (forward = forward-only, backward = forward+backward − forward,
    optimizer = full − forward+backward, stds propagated), never from a split by time share.
    """
    idle_before = _idle_w(meter, cfg, sync, clock, sleep)
    names = list(methods)
    kinds = ("full", "forward", "fwd_bwd")
    windows: dict[str, dict[str, list[Window]]] = {n: {k: [] for k in kinds} for n in names}
    sampled: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rep in range(cfg.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            for kind, fn in zip(kinds, methods[name]):
                w, s = _window(meter, fn, cfg, sync, sampler, f"{name} {kind} {rep}", clock)
                windows[name][kind].append(w)
                if s is not None and w.energy_j is not None:
                    sampled[name].append((s, w.energy_j))
    idle = IdlePower(idle_before, _idle_w(meter, cfg, sync, clock, sleep))
    out = {}
    for name in names:
        pairs = sampled[name]
        counted = sum(c for _, c in pairs)
        gap = 100.0 * (sum(s for s, _ in pairs) - counted) / counted if pairs and counted > 0 else None
        out[name] = MethodEnergy(*(estimate(windows[name][k], idle.w) for k in kinds), gap)
    return idle, out


def update_steps(r: Runner, batch_for: Callable[[int], tuple[Any, torch.Tensor]]) -> tuple[Step, Step, Step]:
    """``(full_update, forward_only, forward_backward)`` of one method for :func:`measure_energy`."""
    def full_update(i: int) -> None:
        forward_backward(i)
        r.optimizer.step()

    def forward_only(i: int) -> None:
        x, y = batch_for(i)
        r.forward_loss(x, y, i)

    def forward_backward(i: int) -> None:
        x, y = batch_for(i)
        _, loss = r.forward_loss(x, y, i)
        r.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    return full_update, forward_only, forward_backward


@dataclass
class ProfileConfig:
    workload: str = "digits"
    updates: int = 30
    warmup: int = 5
    methods: tuple[str, ...] = ("surrogate", "sparsegrad", "localzo")
    dist: str = "normal"
    delta: float = 0.05
    samples: int = 1
    device: str = "auto"
    backend: str = "auto"
    energy: bool = False
    out: str | None = None
    seed: int = 0
    data_dir: str | None = None
    energy_cfg: EnergyConfig = field(default_factory=EnergyConfig)
    peers: bool = False
    run: str | None = None  # a run folder: profile its trained network on its dataset instead
    arch: str = "fc"  # "conv": the dataset's conv network (lzo_bench.measure.workloads.conv_workload)


def run_profile(cfg: ProfileConfig, progress: Callable[[str, int, int], None] | None = None,
                nvml: Any = None) -> dict[str, Any]:
    """Measure every method of ``cfg``; returns the report written to ``profile.json``."""
    progress = progress or (lambda *_: None)
    facts = cpu_facts()  # the load before this run adds its own
    trained = None
    if cfg.run is not None:  # the run's network, dataset, T and data folder
        trained, ckpt = load_checkpoint(cfg.run)
        s = trained.spec
        w = replace(WORKLOADS[ckpt["dataset"]["name"]], steps=checkpoint_steps(ckpt), hidden=s.hidden, conv=s.conv,
                    frame=s.frame, n_in=s.n_in)
        cfg = replace(cfg, workload=w.name, data_dir=cfg.data_dir or ckpt["train"].get("data_dir"))
    elif cfg.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {cfg.workload!r}; choose one of: {', '.join(WORKLOADS)}")
    else:
        w = conv_workload(cfg.workload) if cfg.arch == "conv" else WORKLOADS[cfg.workload]
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    batches, source = workload_batches(w, cfg.warmup + cfg.updates, cfg.seed, cfg.data_dir)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    if trained is not None:
        net, init = trained.spec, trained.state_dict()
        init_note = f"trained: {cfg.run} after epoch {ckpt.get('epoch')} ({ckpt['train'].get('method')})"
    else:
        net = w.network()
        init_note = f"{w.init} init, gain {w.init_gain:g} (the paper's / the dataset default)"
        if source.startswith("synthetic"):
            gain, rate = calibrate_gain(net, batches[0][0].float())
            net = w.network("normal", gain)
            init_note = (f"N(0, g·(1−β)/√fan_in) with g = {gain:.3g}, calibrated so hidden layer 1 fires at "
                         f"{rate:.2%} per (step, neuron) on the synthetic input, as a trained network would")
        model = SNN(net, torch.Generator().manual_seed(cfg.seed))
        if source.startswith("synthetic") and net.conv:
            rates = calibrate_deeper_layers(model, batches[0][0].float())
            init_note += "; each deeper layer scaled to the same rate (" + " / ".join(f"{r:.2%}" for r in rates) + ")"
        init = model.state_dict()

    def runner(name: str, method: str, backend: Backend | None) -> Runner:
        spec = GateSpec.build(method, cfg.dist, cfg.delta, cfg.samples)
        model = SNN(net).to(device)
        model.load_state_dict(init)
        return Runner(name, spec, backend or select_backend(cfg.backend, device, spec), model,
                      torch.optim.Adam(model.parameters(), lr=2e-4), SpikeRegularizer(f_up=1.0))

    runners = [runner(BASELINE, "surrogate", AUTOGRAD_LOOP)] + [runner(m, m, None) for m in cfg.methods]
    clock = PhaseClock(device)
    total = len(runners) * (cfg.warmup + cfg.updates)
    done = 0
    progress("timing", 0, total)  # the whole count from the start, not "0/?"
    # event-driven backends get the batch as events, as the training loader hands it
    events = once_per_batch(batches, as_events) if any(r.backend.network for r in runners) else []
    for rnd in range(cfg.warmup + cfg.updates):
        x, y = batches[rnd]
        dense = x.float() if not all(r.backend.network for r in runners) else None  # outside the timed phases
        for r in runners[rnd % len(runners):] + runners[:rnd % len(runners)]:
            timed_update(r, events[rnd] if r.backend.network else dense, y, rnd, clock)
            if rnd < cfg.warmup:
                for lst in (r.fwd, r.bwd, r.opt, r.active, r.peak):
                    lst.pop()
            done += 1
            progress("timing", done, total)

    meter = open_meter(device, nvml) if cfg.energy else NullMeter("not requested (pass --energy)")
    if cfg.energy and device.type == "cpu":
        try:
            meter = RaplMeter()
        except MeterUnavailable as e:
            meter = NullMeter(f"{meter.reason}; CPU package energy (RAPL): {e}")
    energy: dict[str, MethodEnergy] = {}
    idle = IdlePower(None, None)
    period = None
    info = meter.info() if meter.available else None
    temp_before = meter.temperature_c() if meter.available else None
    sampler = None
    if meter.available:
        period = counter_period_ms(meter) if isinstance(meter, NvmlMeter) else None
        sampler = PowerSampler(meter).start() if meter.power_sample() is not None else None
        sync = functools.partial(sync_device, device)
        try:
            # float copies for the dense backends, made before any window
            dense_batches = (once_per_batch(batches, torch.Tensor.float)
                             if not all(r.backend.network for r in runners) else [])

            def batch_for(r: Runner) -> Callable[[int], tuple[torch.Tensor | SpikeEvents, torch.Tensor]]:
                def one(i: int):
                    _, y = batches[i % len(batches)]
                    return (events if r.backend.network else dense_batches)[i % len(batches)], y
                return one

            steps = {r.name: update_steps(r, batch_for(r)) for r in runners}
            idle, energy = measure_energy(meter, steps, cfg.energy_cfg, sync, sampler)
        except MeterUnavailable as e:
            meter = NullMeter(str(e))
        finally:
            if sampler:
                sampler.stop()
    temp_after = meter.temperature_c() if meter.available else None

    peers = measure_peers(w, net, init, (batches[0][0].float(), batches[0][1]), cfg, progress) if cfg.peers else None

    by = {r.name: r for r in runners}
    ref_name = "surrogate" if "surrogate" in by else BASELINE
    med = {r.name: {k: median_iqr(getattr(r, k)) for k in ("fwd", "bwd", "opt")} for r in runners}
    x_last = batches[-1][0].float()
    rows = []
    for r in runners:
        m = med[r.name]
        e = energy.get(r.name)
        ref_e = energy.get(ref_name)
        row = {
            "method": r.name,
            "backend": r.backend.name,
            "fwd_ms": m["fwd"][0], "fwd_iqr_ms": m["fwd"][1],
            "bwd_ms": m["bwd"][0], "bwd_iqr_ms": m["bwd"][1],
            "opt_ms": m["opt"][0], "opt_iqr_ms": m["opt"][1],
            "bwd_speedup_vs_surrogate": med[ref_name]["bwd"][0] / m["bwd"][0],
            "overall_speedup_vs_surrogate": (med[ref_name]["fwd"][0] + med[ref_name]["bwd"][0]) / (m["fwd"][0] + m["bwd"][0]),
            "bwd_speedup_vs_autograd_loop": med[BASELINE]["bwd"][0] / m["bwd"][0],
            "overall_speedup_vs_autograd_loop": (med[BASELINE]["fwd"][0] + med[BASELINE]["bwd"][0]) / (m["fwd"][0] + m["bwd"][0]),
            "active_pct": [statistics.fmean(a[i] for a in r.active) for i in range(len(net.layer_sizes))],
            "peak_mib": max(r.peak),
            "neurobench": neurobench(r.model, x_last, [s.detach() for s in r.last_out.spikes] if r.last_out else []),
            "avg_w": e.full.avg_w if e else None,
            "j_per_update": e.full.j_per_update if e else None,
            "j_per_update_std": e.full.j_per_update_std if e else None,
            "net_j_per_update": e.full.net_j_per_update if e else None,
            **(e.split() if e else dict.fromkeys(("fwd_j", "fwd_j_std", "bwd_j", "bwd_j_std", "opt_j", "opt_j_std"))),
            "energy_ratio_vs_surrogate": (e.full.j_per_update / ref_e.full.j_per_update) if e and ref_e else None,
            "j_per_sample": (e.full.j_per_update / w.batch) if e else None,
            "sampled_vs_counter_gap_pct": e.sampled_gap_pct if e else None,
            "energy_windows": e.full.windows if e else 0,
            "energy_reset_windows": sum(x.reset_windows for x in (e.full, e.forward, e.fwd_bwd)) if e else 0,
        }
        rows.append(row)
    reason = None if energy else (meter.reason if not meter.available else "no window could be measured")
    return {
        "lzo_bench_version": __version__,
        "workload": asdict(w) | {"source": source, "hidden": list(net.hidden), "weights": init_note,
                                 "arch": net.arch, "conv": [c.to_dict() for c in net.conv_shapes()]},
        "config": {k: v for k, v in asdict(cfg).items() if k != "energy_cfg"} | {"energy_cfg": asdict(cfg.energy_cfg)},
        "device": str(device),
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": asdict(info) if info else None} | facts,
        "memory_measure": "CUDA allocator peak above the update's start" if device.type == "cuda"
        else "bytes of tensors saved for the backward (CPU)",
        "energy": {
            "available": bool(energy),
            "reason": reason,
            "meter": type(meter).__name__,
            "idle_w": idle.w,
            "idle_before_w": idle.before_w,
            "idle_after_w": idle.after_w,
            "counter_period_ms": period,
            "temperature_c_before": temp_before,
            "temperature_c_after": temp_after,
            "power_samples": len(sampler.samples) if sampler else 0,
            "power_sampler_error": sampler.error if sampler else None,
            "power_sampler_poll_us": sampler.poll_us if sampler else None,
            "power_sampler_duty": sampler.duty if sampler else None,
        },
        "rows": rows,
        "peers": peers,
        "_sampler": sampler,
    }


def measure_peers(w: Workload, net: NetworkSpec, init: dict[str, torch.Tensor],
                  batch: tuple[torch.Tensor, torch.Tensor], cfg: ProfileConfig,
                  progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """One full update of the same network in snnTorch, SpikingJelly and Norse (:mod:`lzo_bench.measure.peers`),
    interleaved with ours (localzo) on the first batch and the same initial weights, on the CPU."""
    from lzo_bench.measure import peers

    x, y = batch
    if x.device.type != "cpu":
        return {"available": False, "reason": "the peers are compared on the CPU; run with --device cpu", "rows": []}
    weights = [init[f"weights.{i}"].detach().clone() for i in range(len(net.layer_sizes) + 1)]
    missing: list[str] = []
    progress("peers", 0, 1)
    names = peers.CONV_PEERS if net.conv else peers.PEERS
    rows = peers.run_contenders([*names, peers.REFERENCE], x, y, weights, w, repeats=cfg.updates,
                                warmup=cfg.warmup, backend=cfg.backend, log=missing.append)
    found = [r for r in rows if r["library"] != "lzo-bench"]
    reason = None if found else f"no peer library could run: {'; '.join(missing)}"
    return {"available": bool(found), "reason": reason, "skipped": missing, "rows": rows,
            "note": "one full update (forward, loss, backward, Adam) per library, interleaved with lzo localzo; "
                    "x_vs_localzo = total time / localzo's"}


CSV_COLUMNS = ("method", "backend", "fwd_ms", "bwd_ms", "opt_ms", "bwd_speedup_vs_surrogate",
               "overall_speedup_vs_surrogate", "bwd_speedup_vs_autograd_loop", "overall_speedup_vs_autograd_loop",
               "peak_mib", "avg_w", "j_per_update", "j_per_update_std", "net_j_per_update", "fwd_j", "fwd_j_std", "bwd_j",
               "bwd_j_std", "opt_j", "opt_j_std",
               "energy_ratio_vs_surrogate", "j_per_sample", "sampled_vs_counter_gap_pct")


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``profile.json``, ``profile.csv`` and, with a power trace, ``power.csv`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    sampler = report.pop("_sampler", None)
    paths = [atomic_write_json(out / "profile.json", report)]
    n_layers = len(report["rows"][0]["active_pct"]) if report["rows"] else 0
    header = list(CSV_COLUMNS) + [f"active_pct_l{i + 1}" for i in range(n_layers)]
    lines = [",".join(header)]
    for r in report["rows"]:
        vals = [r[c] for c in CSV_COLUMNS] + r["active_pct"]
        lines.append(",".join("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in vals))
    paths.append(atomic_write_text(out / "profile.csv", "\n".join(lines) + "\n"))
    if sampler is not None and sampler.samples:
        paths.append(sampler.write_csv(out / "power.csv"))
    return paths
