"""Energy meters: the GPU's NVML counter, a null meter that says why there is none, and RAPL.

Units are in the names: ``_mj`` millijoules, ``_mw`` milliwatts, ``_us`` microseconds, ``_j``, ``_w``.
Nothing here ever reports 0 for "could not measure": an unavailable meter carries its reason and
its readings are ``None`` (DESIGN.md §7).

* :class:`NvmlMeter` — ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded) and
  the instantaneous power field ``NVML_FI_DEV_POWER_INSTANT`` with the driver's timestamps.
  The torch device is mapped to its NVML handle by UUID, which respects ``CUDA_VISIBLE_DEVICES``.
  A MIG slice cannot be metered: NVML reports the whole GPU.
* :class:`RaplMeter` — CPU package energy from ``/sys/class/powercap/intel-rapl:N/energy_uj``,
  wrapping at ``max_energy_range_uj``.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

COUNTER_WRAP_MJ = 1 << 64  # nvmlDeviceGetTotalEnergyConsumption returns an unsigned long long


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
            self.handle = nvml.nvmlDeviceGetHandleByUUID(self.uuid)
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


def open_meter(device: torch.device | str, nvml: Any = None) -> NvmlMeter | NullMeter:
    """The NVML meter of ``device``, or a :class:`NullMeter` with the reason there is none."""
    device = torch.device(device)
    if device.type != "cuda":
        return NullMeter("the run is on the CPU: GPU energy needs --device cuda")
    try:
        return NvmlMeter(device, nvml)
    except MeterUnavailable as e:
        return NullMeter(str(e))


def counter_delta_mj(start_mj: int, end_mj: int, wrap_mj: int = COUNTER_WRAP_MJ) -> int:
    """Energy between two counter readings, across one wrap of the counter."""
    return end_mj - start_mj if end_mj >= start_mj else end_mj + wrap_mj - start_mj


@dataclass
class Window:
    """One measured window: counter readings, wall-clock span and the work done in it."""

    start_mj: int
    end_mj: int
    seconds: float
    updates: int

    @property
    def energy_j(self) -> float:
        return counter_delta_mj(self.start_mj, self.end_mj) / 1000.0


@dataclass
class EnergyEstimate:
    """Per-update energy from repeated windows: gross, and net of idle power."""

    j_per_update: float
    j_per_update_std: float
    net_j_per_update: float | None
    avg_w: float
    windows: int
    zero_delta_windows: int


def estimate(windows: list[Window], idle_w: float | None) -> EnergyEstimate:
    """Mean ± std over windows of ``E/updates``; net subtracts ``idle_w × seconds``.

    A window whose counter did not move (shorter than the counter's update period) cannot be
    measured: it is counted and left out, and if all are, :class:`MeterUnavailable` is raised.
    """
    good = [w for w in windows if w.end_mj != w.start_mj]
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
        zero_delta_windows=len(windows) - len(good),
    )


def integrate_power_j(samples: list[tuple[int, int]], t0_us: int, t1_us: int) -> float | None:
    """``∫ P dt`` over ``[t0, t1]`` (µs) from ``(timestamp_us, power_mw)`` samples, trapezoids,
    held constant before the first and after the last sample; ``None`` without samples."""
    pts = sorted(samples)
    if not pts or t1_us <= t0_us:
        return None
    def p_at(t: int) -> float:
        if t <= pts[0][0]:
            return float(pts[0][1])
        if t >= pts[-1][0]:
            return float(pts[-1][1])
        for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
            if ta <= t <= tb:
                return pa + (pb - pa) * (t - ta) / (tb - ta) if tb > ta else float(pb)
        return float(pts[-1][1])
    knots = [t0_us] + [t for t, _ in pts if t0_us < t < t1_us] + [t1_us]
    total_mw_us = sum(0.5 * (p_at(a) + p_at(b)) * (b - a) for a, b in zip(knots, knots[1:]))
    return total_mw_us * 1e-9  # mW·µs → J


@dataclass
class PowerSampler:
    """Background thread polling ``meter.power_sample()``, keeping each new driver reading.

    It only reads NVML (no CUDA calls), so it does not synchronise or slow the device's work;
    ``marks`` records ``(host_time_us, label)`` phase boundaries for the trace.
    """

    meter: Any
    interval_s: float = 0.002
    samples: list[tuple[int, int]] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            s = self.meter.power_sample()
            if s is not None and s[0] != last:
                self.samples.append(s)
                last = s[0]
            time.sleep(self.interval_s)

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
        from lzo_bench.fsio import atomic_write_text

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
