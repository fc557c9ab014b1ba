"""``lzo-bench profile``: what a training update costs with each backward rule, side by side.

Every method trains its own copy of the same initial network on the same batches; after a
warm-up the methods take turns (one update each per round, rotating the order), with the device
synchronised at phase edges — forward (incl. loss), backward, optimizer — and CUDA events on
GPU. Times are medians over rounds with the interquartile range; speedups are ratios of medians
against ``surrogate`` (the fused dense op when the extension runs) and the plain autograd loop.

Memory per update: on CUDA the allocator's peak above what was allocated before the update; on
the CPU the bytes of tensors saved for the backward (exact, saved-tensor hooks), which is the
memory an update holds between forward and backward.

Energy (``--energy``): see :func:`lzo_bench.measure.energy_windows.measure_energy`.

This module holds the batches, the :class:`Runner` of each method, the NeuroBench metrics of a batch,
:func:`run_profile` (timing, then energy, then the peers), its rows (:func:`profile_rows`) and the files
(:func:`write_report`); the live power sampler comes back beside the report (:class:`ProfileRun`).
"""

from __future__ import annotations

import functools
import platform
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from lzo_bench import __version__
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, Forward, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey
from lzo_bench.data import DatasetMissing, load_dataset
from lzo_bench.measure.energy import MeterUnavailable, NullMeter, NvmlMeter, PowerSampler, counter_period_ms, open_meter
from lzo_bench.measure.energy_windows import EnergyConfig, EnergyRun, MethodEnergy, Step, measure_energy
from lzo_bench.measure.nbmetrics import NeuroBenchTally, layer_names, static_metrics
from lzo_bench.measure.stats import median_iqr
from lzo_bench.measure.timing import PhaseClock
from lzo_bench.measure.timing import timed_update as phase_timed_update
from lzo_bench.measure.workloads import WORKLOADS, Workload, calibrate_deeper_layers, calibrate_gain, conv_workload
from lzo_bench.ops.backends import AUTOGRAD_LOOP, Backend, select_backend
from lzo_bench.ops.event_network import as_events
from lzo_bench.runtime.devices import cpu_facts, sync_device
from lzo_bench.runtime.fsio import atomic_write_json, atomic_write_text
from lzo_bench.runtime.memory import saved_bytes
from lzo_bench.training.checkpoint import checkpoint_steps, load_checkpoint

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
    """One update of ``r`` on ``clock`` (:func:`lzo_bench.measure.timing.timed_update`): its phase times, the
    active % per layer, and its memory (the CUDA allocator's peak above the update's start, else the bytes
    saved for the backward)."""
    device = clock.device
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)

    def forward():
        (out, loss), saved = saved_bytes(lambda: r.forward_loss(x, y, update))
        return (out, saved), loss

    (out, saved), t = phase_timed_update(clock, forward, r.optimizer)
    r.fwd.append(t.fwd_ms)
    r.bwd.append(t.bwd_ms)
    r.opt.append(t.opt_ms)
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


@dataclass
class ProfileRun:
    """What :func:`run_profile` returns: the report written to ``profile.json``, and the power sampler whose
    trace :func:`write_report` writes to ``power.csv`` (``None`` without one)."""

    report: dict[str, Any]
    sampler: PowerSampler | None = None


def run_profile(cfg: ProfileConfig, progress: Callable[[str, int, int], None] | None = None,
                nvml: Any = None) -> ProfileRun:
    """Measure every method of ``cfg``: timing, then energy, then the peers; the report and the sampler."""
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
    events = time_runners(runners, batches, cfg.warmup, PhaseClock(device), progress)
    en = run_energy(cfg, device, runners, batches, events, nvml)
    peers = measure_peers(w, net, init, (batches[0][0].float(), batches[0][1]), cfg, progress) if cfg.peers else None
    rows = profile_rows(runners, en.energy, len(net.layer_sizes), w.batch, batches[-1][0].float())
    report = {
        "lzo_bench_version": __version__,
        "workload": asdict(w) | {"source": source, "hidden": list(net.hidden), "weights": init_note,
                                 "arch": net.arch, "conv": [c.to_dict() for c in net.conv_shapes()]},
        "config": {k: v for k, v in asdict(cfg).items() if k != "energy_cfg"} | {"energy_cfg": asdict(cfg.energy_cfg)},
        "device": str(device),
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": asdict(en.info) if en.info else None} | facts,
        "memory_measure": "CUDA allocator peak above the update's start" if device.type == "cuda"
        else "bytes of tensors saved for the backward (CPU)",
        "energy": en.section(),
        "rows": rows,
        "peers": peers,
    }
    return ProfileRun(report, en.sampler)


def time_runners(runners: list[Runner], batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int,
                 clock: PhaseClock, progress: Callable[[str, int, int], None]) -> list[SpikeEvents]:
    """Every runner one :func:`timed_update` per batch, the order rotating per round; the first ``warmup``
    rounds are not kept. Returns the batches as events (empty without an event-driven backend)."""
    total = len(runners) * len(batches)
    done = 0
    progress("timing", 0, total)  # the whole count from the start, not "0/?"
    # event-driven backends get the batch as events, as the training loader hands it
    events = once_per_batch(batches, as_events) if any(r.backend.network for r in runners) else []
    for rnd in range(len(batches)):
        x, y = batches[rnd]
        dense = x.float() if not all(r.backend.network for r in runners) else None  # outside the timed phases
        for r in runners[rnd % len(runners):] + runners[:rnd % len(runners)]:
            timed_update(r, events[rnd] if r.backend.network else dense, y, rnd, clock)
            if rnd < warmup:
                for lst in (r.fwd, r.bwd, r.opt, r.active, r.peak):
                    lst.pop()
            done += 1
            progress("timing", done, total)
    return events


def run_energy(cfg: ProfileConfig, device: torch.device, runners: list[Runner],
               batches: list[tuple[torch.Tensor, torch.Tensor]], events: list[SpikeEvents], nvml: Any = None) -> EnergyRun:
    """With ``--energy``, the meter of ``device`` (NVML, RAPL on the CPU) and the windows of every runner
    (:func:`~lzo_bench.measure.energy_windows.measure_energy`); else a :class:`NullMeter` saying why."""
    run = EnergyRun(open_meter(device, cfg.energy, cpu_rapl=True, nvml=nvml))
    meter = run.meter
    run.info = meter.info() if meter.available else None
    run.temp_before = meter.temperature_c() if meter.available else None
    if meter.available:
        run.period_ms = counter_period_ms(meter) if isinstance(meter, NvmlMeter) else None
        sampler = run.sampler = PowerSampler(meter).start() if meter.power_sample() is not None else None
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
            run.idle, run.energy = measure_energy(meter, steps, cfg.energy_cfg, sync, sampler)
        except MeterUnavailable as e:
            run.meter = NullMeter(str(e))
        finally:
            if sampler:
                sampler.stop()
    run.temp_after = run.meter.temperature_c() if run.meter.available else None
    return run


def profile_rows(runners: list[Runner], energy: dict[str, MethodEnergy], n_layers: int, batch: int,
                 x_last: torch.Tensor) -> list[dict[str, Any]]:
    """One row per runner: medians and IQRs of its phases, speedups as ratios of medians against
    ``surrogate`` (the autograd loop without it) and the autograd loop, active %, memory, the NeuroBench
    metrics of the last batch ``x_last`` and, where measured, energy per update."""
    by = {r.name: r for r in runners}
    ref_name = "surrogate" if "surrogate" in by else BASELINE
    med = {r.name: {k: median_iqr(getattr(r, k)) for k in ("fwd", "bwd", "opt")} for r in runners}
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
            "active_pct": [statistics.fmean(a[i] for a in r.active) for i in range(n_layers)],
            "peak_mib": max(r.peak),
            "neurobench": neurobench(r.model, x_last, [s.detach() for s in r.last_out.spikes] if r.last_out else []),
            "avg_w": e.full.avg_w if e else None,
            "j_per_update": e.full.j_per_update if e else None,
            "j_per_update_std": e.full.j_per_update_std if e else None,
            "net_j_per_update": e.full.net_j_per_update if e else None,
            **(e.split() if e else dict.fromkeys(("fwd_j", "fwd_j_std", "bwd_j", "bwd_j_std", "opt_j", "opt_j_std"))),
            "energy_ratio_vs_surrogate": (e.full.j_per_update / ref_e.full.j_per_update) if e and ref_e else None,
            "j_per_sample": (e.full.j_per_update / batch) if e else None,
            "sampled_vs_counter_gap_pct": e.sampled_gap_pct if e else None,
            "energy_windows": e.full.windows if e else 0,
            "energy_reset_windows": sum(x.reset_windows for x in (e.full, e.forward, e.fwd_bwd)) if e else 0,
        }
        rows.append(row)
    return rows


def measure_peers(w: Workload, net: NetworkSpec, init: dict[str, torch.Tensor],
                  batch: tuple[torch.Tensor, torch.Tensor], cfg: ProfileConfig,
                  progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """One full update of the same network in snnTorch, SpikingJelly and Norse (:mod:`lzo_bench.measure.peers`),
    interleaved with ours (localzo) on the first batch and the same initial weights, on the CPU."""
    from lzo_bench.measure import peer_models, peers

    x, y = batch
    if x.device.type != "cpu":
        return {"available": False, "reason": "the peers are compared on the CPU; run with --device cpu", "rows": []}
    weights = [init[f"weights.{i}"].detach().clone() for i in range(len(net.layer_sizes) + 1)]
    missing: list[str] = []
    progress("peers", 0, 1)
    names = peer_models.CONV_PEERS if net.conv else peer_models.PEERS
    rows = peers.run_contenders([*names, peer_models.REFERENCE], x, y, weights, w, repeats=cfg.updates,
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


def write_report(report: dict[str, Any], out: Path, sampler: PowerSampler | None = None) -> list[Path]:
    """``profile.json``, ``profile.csv`` and, with a power trace (``sampler``), ``power.csv`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
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
