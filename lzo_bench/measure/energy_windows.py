"""The energy-window protocol: windows of repeated updates between two readings of a meter's counter,
what they estimate per update (gross, net of idle power, the forward / backward / optimizer split), and
:func:`measure_energy` that measures idle power and every method's windows, interleaved (``lzo-bench
profile --energy``); :class:`EnergyRun`, the meter and what it measured as the report's ``energy`` section.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from lzo_bench.measure.energy import Meter, MeterUnavailable, PowerSampler, counter_delta_mj, integrate_power_j


@dataclass
class Window:
    """One measured window: counter readings, wall-clock span and the work done in it."""

    start_mj: int
    end_mj: int
    seconds: float
    updates: int

    @property
    def energy_j(self) -> float | None:
        """``None`` when the counter went down (reset) over the window."""
        delta = counter_delta_mj(self.start_mj, self.end_mj)
        return None if delta is None else delta / 1000.0


@dataclass
class EnergyEstimate:
    """Per-update energy from repeated windows: gross, and net of idle power."""

    j_per_update: float
    j_per_update_std: float
    net_j_per_update: float | None
    avg_w: float
    windows: int
    zero_delta_windows: int
    reset_windows: int = 0


def estimate(windows: list[Window], idle_w: float | None) -> EnergyEstimate:
    """Mean ± std over windows of ``E/updates``; net subtracts ``idle_w × seconds``.

    A window whose counter did not move (shorter than the counter's update period) or went down
    (the driver reset it) cannot be measured: it is counted and left out, and if all are,
    :class:`MeterUnavailable` is raised.
    """
    good = [w for w in windows if w.end_mj > w.start_mj]
    if not good:
        raise MeterUnavailable("the energy counter did not advance in any window: windows too short")
    per = [w.energy_j / w.updates for w in good]
    net = [(w.energy_j - idle_w * w.seconds) / w.updates for w in good] if idle_w is not None else None
    return EnergyEstimate(
        j_per_update=statistics.fmean(per),
        j_per_update_std=statistics.stdev(per) if len(per) > 1 else 0.0,
        net_j_per_update=statistics.fmean(net) if net is not None else None,
        avg_w=sum(w.energy_j for w in good) / sum(w.seconds for w in good),
        windows=len(good),
        zero_delta_windows=sum(w.end_mj == w.start_mj for w in windows),
        reset_windows=sum(w.end_mj < w.start_mj for w in windows),
    )


def difference(a: EnergyEstimate, b: EnergyEstimate) -> tuple[float, float]:
    """``(mean, std)`` of ``a − b`` per update from independent window sets: the std propagated
    as ``√(σ_a² + σ_b²)`` (how the forward / backward / optimizer split is reported)."""
    return a.j_per_update - b.j_per_update, math.hypot(a.j_per_update_std, b.j_per_update_std)


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


def _window(meter: Meter, run_one: Callable[[int], None], cfg: EnergyConfig, sync: Callable[[], None],
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


def _idle_w(meter: Meter, cfg: EnergyConfig, sync: Callable[[], None], clock: Callable[[], float],
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
    meter: Meter, methods: dict[str, tuple[Step, Step, Step]], cfg: EnergyConfig, sync: Callable[[], None],
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


@dataclass
class EnergyRun:
    """A meter and what it measured (``lzo-bench profile``'s ``run_energy``): the report's ``energy`` section."""

    meter: Meter
    energy: dict[str, MethodEnergy] = field(default_factory=dict)
    idle: IdlePower = field(default_factory=lambda: IdlePower(None, None))
    period_ms: float | None = None
    info: Any = None
    temp_before: float | None = None
    temp_after: float | None = None
    sampler: PowerSampler | None = None

    def section(self) -> dict[str, Any]:
        m, s = self.meter, self.sampler
        return {
            "available": bool(self.energy),
            "reason": None if self.energy else (m.reason if not m.available else "no window could be measured"),
            "meter": type(m).__name__,
            "idle_w": self.idle.w,
            "idle_before_w": self.idle.before_w,
            "idle_after_w": self.idle.after_w,
            "counter_period_ms": self.period_ms,
            "temperature_c_before": self.temp_before,
            "temperature_c_after": self.temp_after,
            "power_samples": len(s.samples) if s else 0,
            "power_sampler_error": s.error if s else None,
            "power_sampler_poll_us": s.poll_us if s else None,
            "power_sampler_duty": s.duty if s else None,
        }
