"""Energy meters: the :class:`Meter` protocol they share, the GPU's NVML counter, a null meter that says
why there is none, RAPL, :func:`open_meter` that picks one, the power sampler and the counter's arithmetic
(the windows measured with them: :mod:`lzo_bench.measure.energy_windows`).

Units are in the names: ``_mj`` millijoules, ``_mw`` milliwatts, ``_us`` microseconds, ``_j``, ``_w``.
Nothing here ever reports 0 for "could not measure": an unavailable meter carries its reason and
its readings are ``None`` (docs/ARCHITECTURE.md §7).

* :class:`NvmlMeter` — ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded) and
  the instantaneous power field ``NVML_FI_DEV_POWER_INSTANT`` with the driver's timestamps.
  The torch device is mapped to its NVML handle by UUID, which respects ``CUDA_VISIBLE_DEVICES``.
  A MIG slice cannot be metered: NVML reports the whole GPU.
* :class:`RaplMeter` — CPU package energy from ``/sys/class/powercap/intel-rapl:N/energy_uj``,
  wrapping at ``max_energy_range_uj``.
"""

from __future__ import annotations

import bisect
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch


class MeterUnavailable(RuntimeError):
    """No energy reading here; ``str()`` is the reason shown to the user."""


def nvml_reason(err: BaseException, nvml: Any) -> str:
    """A sentence for a pynvml error (its classes are generated per NVML return code)."""
    table = [
        ("NVMLError_LibraryNotFound", "the NVML library (libnvidia-ml.so) was not found: no NVIDIA driver here"),
        ("NVMLError_DriverNotLoaded", "the NVIDIA driver is not loaded"),
        ("NVMLError_NoPermission", "no permission to read the GPU's energy counter"),
        ("NVMLError_NotSupported", "this GPU does not support the total-energy counter (needs Volta or newer)"),
        ("NVMLError_GpuIsLost", "the GPU fell off the bus"),
        ("NVMLError_NotFound", "no NVML device has this GPU's UUID"),
    ]
    for name, text in table:
        cls = getattr(nvml, name, None)
        if cls is not None and isinstance(err, cls):
            return text
    return f"NVML error: {err}"


@dataclass
class GpuInfo:
    name: str
    driver: str
    uuid: str
    power_limit_w: float | None
    temperature_c: float | None


class Meter(Protocol):
    """What train, profile and the power sampler use of a meter: :class:`NvmlMeter`, :class:`RaplMeter`,
    :class:`NullMeter` (``available`` False, ``reason`` why; every reading ``None``)."""

    available: bool
    reason: str | None

    def energy_mj(self) -> int | None: ...
    def power_sample(self) -> tuple[int, int] | None: ...
    def temperature_c(self) -> float | None: ...
    def info(self) -> GpuInfo | None: ...


class NullMeter:
    """A meter that measures nothing and says why."""

    available = False

    def __init__(self, reason: str):
        self.reason = reason

    def energy_mj(self) -> int | None:
        return None

    def power_sample(self) -> tuple[int, int] | None:
        return None

    def temperature_c(self) -> float | None:
        return None

    def info(self) -> GpuInfo | None:
        return None


class NvmlMeter:
    """NVML energy counter and instantaneous power of the GPU behind ``device``.

    ``nvml`` is the ``pynvml`` module (nvidia-ml-py), injectable for tests.
    """

    available = True
    reason = None

    def __init__(self, device: torch.device, nvml: Any = None, uuid: str | None = None):
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except ImportError:
                raise MeterUnavailable("nvidia-ml-py is not installed") from None
        self.nvml = nvml
        try:
            nvml.nvmlInit()
            self.uuid = uuid or torch_device_uuid(device)
            try:
                self.handle = nvml.nvmlDeviceGetHandleByUUID(self.uuid)
            except nvml.NVMLError_NotFound:
                if self.uuid.startswith("MIG-") or "MIG-" in os.environ.get("CUDA_VISIBLE_DEVICES", ""):
                    raise MeterUnavailable("the device is a MIG slice: NVML cannot meter the energy of a slice") from None
                raise
            if nvml.nvmlDeviceIsMigDeviceHandle(self.handle):
                raise MeterUnavailable("the device is a MIG slice: NVML cannot meter the energy of a slice")
            try:
                current, _pending = nvml.nvmlDeviceGetMigMode(self.handle)
            except nvml.NVMLError_NotSupported:
                current = 0
            if current:
                raise MeterUnavailable("MIG is enabled on this GPU: NVML cannot meter the energy of a slice")
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except nvml.NVMLError as e:
            raise MeterUnavailable(nvml_reason(e, nvml)) from None

    def energy_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def power_sample(self) -> tuple[int, int] | None:
        """``(timestamp_us, power_mw)`` of the driver's latest instantaneous power reading."""
        (value,) = self.nvml.nvmlDeviceGetFieldValues(self.handle, [self.nvml.NVML_FI_DEV_POWER_INSTANT])
        if value.nvmlReturn != 0:
            return None
        return int(value.timestamp), int(value.value.uiVal)

    def temperature_c(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTemperature(self.handle, self.nvml.NVML_TEMPERATURE_GPU))
        except self.nvml.NVMLError:
            return None

    def info(self) -> GpuInfo:
        nv = self.nvml
        name = nv.nvmlDeviceGetName(self.handle)
        driver = nv.nvmlSystemGetDriverVersion()
        try:
            limit = nv.nvmlDeviceGetPowerManagementLimit(self.handle) / 1000.0
        except nv.NVMLError:
            limit = None
        return GpuInfo(name if isinstance(name, str) else name.decode(),
                       driver if isinstance(driver, str) else driver.decode(), self.uuid, limit, self.temperature_c())


def torch_device_uuid(device: torch.device) -> str:
    """NVML's UUID string (``GPU-…``) of a torch CUDA device."""
    props = torch.cuda.get_device_properties(device)
    uuid = str(props.uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def open_meter(device: torch.device | str, requested: bool = True, *, cpu_rapl: bool = False, nvml: Any = None) -> Meter:
    """The meter of ``device``: a :class:`NullMeter` saying why when energy was not ``requested`` or cannot
    be read; the NVML meter on CUDA; on the CPU, with ``cpu_rapl`` (profile), the package's RAPL counters."""
    if not requested:
        return NullMeter("not requested (pass --energy)")
    device = torch.device(device)
    if device.type != "cuda":
        reason = "the run is on the CPU: GPU energy needs --device cuda"
        if not (cpu_rapl and device.type == "cpu"):
            return NullMeter(reason)
        try:
            return RaplMeter()
        except MeterUnavailable as err:
            return NullMeter(f"{reason}; CPU package energy (RAPL): {err}")
    try:
        return NvmlMeter(device, nvml)
    except MeterUnavailable as err:
        return NullMeter(str(err))


def counter_delta_mj(start_mj: int, end_mj: int, wrap_mj: int | None = None) -> int | None:
    """Energy between two counter readings. A counter with a range (RAPL's ``max_energy_range_uj``)
    wraps once; one without (NVML's mJ since the driver loaded, 64 bits: no wrap in practice) that
    went down was reset — a driver reload — and the difference is ``None``: that window is lost."""
    if end_mj >= start_mj:
        return end_mj - start_mj
    return None if wrap_mj is None else end_mj + wrap_mj - start_mj


def counter_period_ms(meter: Meter, seconds: float = 1.0) -> float | None:
    """Median time between changes of the energy counter, polled every 1 ms."""
    changes, last, t_end = [], meter.energy_mj(), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        v = meter.energy_mj()
        if v != last:
            changes.append(time.perf_counter())
            last = v
        time.sleep(0.001)
    gaps = [1e3 * (b - a) for a, b in zip(changes, changes[1:])]
    return statistics.median(gaps) if gaps else None


def integrate_power_j(samples: list[tuple[int, int]], t0_us: int, t1_us: int) -> float | None:
    """``∫ P dt`` over ``[t0, t1]`` (µs) from ``(timestamp_us, power_mw)`` samples, trapezoids,
    held constant before the first and after the last sample; ``None`` without samples.
    O(n log n) for the sort (O(n) on a trace already in time order), O(log n + k) per window."""
    pts = sorted(samples)
    if not pts or t1_us <= t0_us:
        return None
    ts = [t for t, _ in pts]

    def p_at(t: int) -> float:
        i = bisect.bisect_right(ts, t)
        if i == 0:
            return float(pts[0][1])
        if i == len(pts):
            return float(pts[-1][1])
        (ta, pa), (tb, pb) = pts[i - 1], pts[i]
        return pa + (pb - pa) * (t - ta) / (tb - ta) if tb > ta else float(pb)

    lo, hi = bisect.bisect_right(ts, t0_us), bisect.bisect_left(ts, t1_us)
    knots = [(t0_us, p_at(t0_us))] + [(t, float(p)) for t, p in pts[lo:hi]] + [(t1_us, p_at(t1_us))]
    total_mw_us = sum(0.5 * (pa + pb) * (tb - ta) for (ta, pa), (tb, pb) in zip(knots, knots[1:]))
    return total_mw_us * 1e-9  # mW·µs → J


@dataclass
class PowerSampler:
    """Background thread polling ``meter.power_sample()``.

    NVML's timestamp is the host time of the query, so every poll looks new: repeats are dropped by
    value — of a run of equal readings the first and the last are kept, so the trace keeps its
    steps. It only reads NVML (no CUDA calls), so it does not synchronise the device; its own cost
    is measured (``poll_us``: mean time per poll, ``duty``: share of the sampling time spent
    polling). An error while sampling stops the thread and is kept in ``error`` — never raised
    into the measurement. ``marks`` records ``(host_time_us, label)`` phase boundaries.
    """

    meter: Meter
    interval_s: float = 0.002
    samples: list[tuple[int, int]] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None
    polls: int = 0
    poll_s: float = 0.0
    running_s: float = 0.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        pending = None  # the latest reading equal to the last kept one
        started = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                s = self.meter.power_sample()
            except Exception as e:  # an NVMLError mid-run (GPU lost, driver reset): report, stop
                self.error = f"power sampling stopped: {type(e).__name__}: {e}"
                break
            finally:
                self.poll_s += time.perf_counter() - t0
                self.polls += 1
            if s is not None:
                if self.samples and s[1] == self.samples[-1][1]:
                    pending = s
                else:
                    if pending is not None and pending != self.samples[-1]:
                        self.samples.append(pending)
                    self.samples.append(s)
                    pending = None
            time.sleep(self.interval_s)
        if pending is not None and self.samples and pending != self.samples[-1]:
            self.samples.append(pending)
        self.running_s = time.perf_counter() - started

    @property
    def poll_us(self) -> float | None:
        return 1e6 * self.poll_s / self.polls if self.polls else None

    @property
    def duty(self) -> float | None:
        return self.poll_s / self.running_s if self.running_s > 0 else None

    def start(self) -> "PowerSampler":
        if self.meter.available:
            self._thread = threading.Thread(target=self._run, name="lzo-power-sampler", daemon=True)
            self._thread.start()
        return self

    def mark(self, label: str, clock_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.marks.append((clock_us(), label))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def write_csv(self, path: Path) -> Path:
        from lzo_bench.runtime.fsio import atomic_write_text

        lines = ["kind,timestamp_us,value"]
        lines += [f"power_mw,{t},{p}" for t, p in self.samples]
        lines += [f"mark,{t},{label}" for t, label in self.marks]
        return atomic_write_text(path, "\n".join(lines) + "\n")


class RaplMeter:
    """CPU package energy from the powercap interface (``energy_uj`` of each ``intel-rapl:N``).

    ``energy_mj()`` is monotonic: each read adds every domain's difference since the previous
    read, across one wrap, so windows are measured like the NVML counter's.
    """

    available = True
    reason = None

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        self.root = Path(root)
        self.domains = sorted(p for p in self.root.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not self.domains:
            raise MeterUnavailable(f"no RAPL package domains under {self.root}")
        try:
            self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]
            self._last = self.read_uj()
            self._total_uj = 0
        except PermissionError:
            raise MeterUnavailable(f"no permission to read {self.domains[0] / 'energy_uj'} (root only on most systems)") from None
        except (OSError, ValueError) as e:
            raise MeterUnavailable(f"cannot read RAPL counters: {e}") from None

    def read_uj(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def delta_j(self, start: list[int], end: list[int]) -> float:
        """Package energy between two readings, each domain across one wrap."""
        return sum(counter_delta_mj(a, b, r) for a, b, r in zip(start, end, self.ranges)) * 1e-6

    def energy_mj(self) -> int:
        now = self.read_uj()
        self._total_uj += sum(counter_delta_mj(a, b, r) for a, b, r in zip(self._last, now, self.ranges))
        self._last = now
        return self._total_uj // 1000

    def power_sample(self) -> None:
        return None

    def temperature_c(self) -> None:
        return None

    def info(self) -> None:
        return None


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
