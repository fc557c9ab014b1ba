"""Energy arithmetic against an NVML-shaped fake device (mJ counter, mW power, µs timestamps)."""

import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest
import torch

from lzo_bench.measure import energy
from lzo_bench.measure.energy import (
    MeterUnavailable,
    NullMeter,
    NvmlMeter,
    PowerSampler,
    RaplMeter,
    counter_delta_mj,
    epoch_energy_j,
    integrate_power_j,
    open_meter,
)
from lzo_bench.measure.energy_windows import EnergyConfig, Window, difference, estimate, measure_energy


class FakeDevice:
    """A GPU whose counter integrates power exactly: idle_w always, plus each update's joules."""

    def __init__(self, idle_w=60.0, start_mj=10_000, period_s=0.0):
        self.t = 0.0
        self.mj = float(start_mj)
        self.idle_w = idle_w
        self.period_s = period_s  # the counter only moves every period_s (0: continuously)

    def clock(self):
        return self.t

    def advance(self, seconds, extra_j=0.0):
        self.t += seconds
        self.mj += 1000.0 * (self.idle_w * seconds + extra_j)

    def energy_mj(self):
        if self.period_s:
            return int(self.mj_at(math.floor(self.t / self.period_s) * self.period_s))
        return int(round(self.mj))

    def mj_at(self, t):  # only for the coarse counter: linear history approximated by current rate
        return self.mj - 1000.0 * self.idle_w * (self.t - t)


def fake_nvml(errors=None, mig=False, counter=lambda: 5_000):
    """A module shaped like pynvml, with pynvml's real error classes."""
    errors = errors or {}

    def maybe_raise(name):
        if name in errors:
            raise errors[name]

    def field_values(handle, fields):
        assert fields == [pynvml.NVML_FI_DEV_POWER_INSTANT]
        return [SimpleNamespace(nvmlReturn=0, timestamp=1_000_000, value=SimpleNamespace(uiVal=250_000))]

    ns = SimpleNamespace(
        NVMLError=pynvml.NVMLError, NVML_FI_DEV_POWER_INSTANT=pynvml.NVML_FI_DEV_POWER_INSTANT,
        NVML_TEMPERATURE_GPU=pynvml.NVML_TEMPERATURE_GPU,
        nvmlInit=lambda: maybe_raise("init"),
        nvmlDeviceGetHandleByUUID=lambda uuid: (maybe_raise("handle"), "h")[1],
        nvmlDeviceIsMigDeviceHandle=lambda h: mig,
        nvmlDeviceGetMigMode=lambda h: (0, 0),
        nvmlDeviceGetTotalEnergyConsumption=lambda h: (maybe_raise("energy"), counter())[1],
        nvmlDeviceGetFieldValues=field_values,
        nvmlDeviceGetTemperature=lambda h, kind: 41,
        nvmlDeviceGetName=lambda h: "Fake H200",
        nvmlSystemGetDriverVersion=lambda: "999.1",
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
    )
    for name in dir(pynvml):
        if name.startswith("NVMLError_"):
            setattr(ns, name, getattr(pynvml, name))
    return ns


def test_counter_delta_wrap_and_reset():
    assert counter_delta_mj(1_000, 4_500) == 3_500
    assert counter_delta_mj(7, 7) == 0
    assert counter_delta_mj(900, 100, wrap_mj=1_000) == 200   # RAPL: wraps at its range
    assert counter_delta_mj(2**64 - 100, 50) is None          # NVML: went down = driver reset, not a wrap
    assert Window(5_000, 1_000, 1.0, 3).energy_j is None


def test_epoch_energy_needs_ten_counter_periods_and_no_reset():
    assert epoch_energy_j(1_000, 31_000, 2.0, 100.0) == (30.0, None)
    j, why = epoch_energy_j(1_000, 1_000, 0.5, 100.0)  # a digits epoch: the counter may not even move
    assert j is None and "shorter than 10 periods of the energy counter (100 ms)" in why
    j, why = epoch_energy_j(9_000, 1_000, 3.0, 100.0)
    assert j is None and "went down" in why
    assert epoch_energy_j(None, None, 3.0, None) == (None, None)


def test_estimate_mean_std_idle_and_zero_delta_windows():
    windows = [Window(0, 10_000, 2.0, 10), Window(10_000, 22_000, 2.0, 10), Window(22_000, 22_000, 0.05, 1),
               Window(22_000, 36_000, 2.0, 10)]
    e = estimate(windows, idle_w=1.5)
    per = [1.0, 1.2, 1.4]  # J per update in the three windows whose counter moved
    assert e.j_per_update == pytest.approx(statistics.fmean(per))
    assert e.j_per_update_std == pytest.approx(statistics.stdev(per))
    assert e.net_j_per_update == pytest.approx(statistics.fmean(p - 1.5 * 2.0 / 10 for p in per))
    assert e.avg_w == pytest.approx(36.0 / 6.0)
    assert (e.windows, e.zero_delta_windows, e.reset_windows) == (3, 1, 0)
    with pytest.raises(MeterUnavailable, match="did not advance"):
        estimate([Window(5, 5, 0.01, 1)], None)
    reset = estimate(windows + [Window(40_000, 3_000, 2.0, 10)], idle_w=None)  # the driver reset the counter
    assert reset.j_per_update == pytest.approx(e.j_per_update) and reset.reset_windows == 1


def test_difference_propagates_std():
    a = estimate([Window(0, 10_000, 1.0, 10), Window(0, 12_000, 1.0, 10)], None)   # 1.0, 1.2 J
    b = estimate([Window(0, 4_000, 1.0, 10), Window(0, 7_000, 1.0, 10)], None)     # 0.4, 0.7 J
    mean, std = difference(a, b)
    assert mean == pytest.approx(1.1 - 0.55)
    assert std == pytest.approx(math.sqrt(statistics.stdev([1.0, 1.2]) ** 2 + statistics.stdev([0.4, 0.7]) ** 2))


def test_power_integration():
    const = [(0, 100_000), (1_000_000, 100_000), (2_000_000, 100_000)]
    assert integrate_power_j(const, 0, 2_000_000) == pytest.approx(200.0)
    ramp = [(0, 0), (1_000_000, 200_000)]  # 0 → 200 W over 1 s: 100 J
    assert integrate_power_j(ramp, 0, 1_000_000) == pytest.approx(100.0)
    assert integrate_power_j(ramp, 500_000, 1_000_000) == pytest.approx(75.0)
    assert integrate_power_j(ramp, 0, 2_000_000) == pytest.approx(300.0)  # held after the last sample
    assert integrate_power_j([], 0, 10) is None


def test_power_integration_matches_an_independent_trapezoid_on_a_long_trace():
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.cumsum(rng.integers(1_000, 20_000, size=20_000))
    p = rng.integers(50_000, 700_000, size=t.size)
    samples = list(zip(t.tolist(), p.tolist()))
    for t0, t1 in ((int(t[10]) - 500, int(t[15_000]) + 777), (int(t[0]) - 10_000, int(t[-1]) + 10_000)):
        grid = np.unique(np.concatenate([[t0, t1], t[(t > t0) & (t < t1)]]))
        expected = np.trapezoid(np.interp(grid, t, p), grid) * 1e-9
        assert integrate_power_j(samples, t0, t1) == pytest.approx(expected, rel=1e-9)


def test_measure_energy_split_idle_and_power_cross_check():
    dev = FakeDevice(idle_w=50.0)
    # per update (s, dynamic J): full, forward only, forward + backward
    costs = {"surrogate": ((0.020, 3.0), (0.008, 1.0), (0.019, 2.8)),
             "localzo": ((0.010, 0.6), (0.006, 0.4), (0.009, 0.5))}
    methods = {name: tuple(lambda i, k=k: dev.advance(*k) for k in c) for name, c in costs.items()}
    cfg = EnergyConfig(min_seconds=1.0, min_updates=32, repeats=4, idle_seconds=5.0, settle_seconds=2.0)
    slept = []
    idle, out = measure_energy(dev, methods, cfg, sync=lambda: None, sampler=None, clock=dev.clock,
                               sleep=lambda s: (slept.append(s), dev.advance(s)))
    assert slept == [2.0, 5.0, 2.0, 5.0]           # settle, idle before; settle, idle after
    assert idle.before_w == pytest.approx(50.0) and idle.after_w == pytest.approx(50.0) and idle.w == pytest.approx(50.0)
    for name, ((tf, jf), (tw, jw), (tb, jb)) in costs.items():
        e = out[name]
        assert e.full.windows == e.forward.windows == e.fwd_bwd.windows == 4
        assert e.full.j_per_update == pytest.approx(50.0 * tf + jf, rel=1e-3)
        assert e.full.net_j_per_update == pytest.approx(jf, rel=1e-2)
        split = e.split()
        assert split["fwd_j"] == pytest.approx(50.0 * tw + jw, rel=1e-3)
        assert split["bwd_j"] == pytest.approx(50.0 * (tb - tw) + (jb - jw), rel=1e-2)
        assert split["opt_j"] == pytest.approx(50.0 * (tf - tb) + (jf - jb), rel=5e-2)
        assert split["opt_j_std"] < 1e-3 and e.full.j_per_update_std < 1e-3
    ratio = out["localzo"].full.j_per_update / out["surrogate"].full.j_per_update
    assert ratio == pytest.approx((50 * 0.010 + 0.6) / (50 * 0.020 + 3.0), rel=1e-3)


def test_windows_respect_minimum_seconds_and_updates():
    dev = FakeDevice()
    calls = []
    methods = {"m": (lambda i: (calls.append("f"), dev.advance(0.5, 1.0)), lambda i: (calls.append("w"), dev.advance(2**-10)),
                     lambda i: (calls.append("b"), dev.advance(0.25)))}
    measure_energy(dev, methods, EnergyConfig(min_seconds=5.0, min_updates=3, repeats=1, idle_seconds=1.0),
                   lambda: None, clock=dev.clock, sleep=lambda s: dev.advance(s))
    assert calls.count("f") == 10           # 5 s at 0.5 s per update
    assert calls.count("w") == 5 * 1024     # 5 s at 2⁻¹⁰ s per forward-only update (exact in binary)
    assert calls.count("b") == 20


def test_nvml_meter_reads_the_fake_driver():
    ticks = iter(range(5_000, 10_000_000, 137))
    meter = NvmlMeter(torch.device("cuda", 0), nvml=fake_nvml(counter=lambda: next(ticks)), uuid="GPU-1234")
    assert meter.available and meter.energy_mj() > 5_000
    assert meter.power_sample() == (1_000_000, 250_000)
    info = meter.info()
    assert (info.name, info.driver, info.power_limit_w, info.temperature_c) == ("Fake H200", "999.1", 700.0, 41.0)


@pytest.mark.parametrize("stage,error,reason", [
    ("init", pynvml.NVMLError_LibraryNotFound(), r"NVML library \(libnvidia-ml.so\) was not found"),
    ("init", pynvml.NVMLError_DriverNotLoaded(), "driver is not loaded"),
    ("energy", pynvml.NVMLError_NoPermission(), "no permission"),
    ("energy", pynvml.NVMLError_NotSupported(), "does not support the total-energy counter"),
    ("handle", pynvml.NVMLError_NotFound(), "no NVML device has this GPU's UUID"),
])
def test_nvml_unavailability_reasons(stage, error, reason):
    with pytest.raises(MeterUnavailable, match=reason):
        NvmlMeter(torch.device("cuda", 0), nvml=fake_nvml({stage: error}), uuid="GPU-1")


def test_mig_slice_is_refused():
    with pytest.raises(MeterUnavailable, match="MIG slice"):
        NvmlMeter(torch.device("cuda", 0), nvml=fake_nvml(mig=True), uuid="MIG-1")
    # a MIG instance's UUID that NVML does not resolve is named as a MIG slice, not "no device"
    with pytest.raises(MeterUnavailable, match="the device is a MIG slice"):
        NvmlMeter(torch.device("cuda", 0), nvml=fake_nvml({"handle": pynvml.NVMLError_NotFound()}), uuid="MIG-5f2a")


def test_cpu_device_gets_a_null_meter_with_a_reason():
    m = open_meter("cpu")
    assert isinstance(m, NullMeter) and not m.available and "CPU" in m.reason
    assert m.energy_mj() is None and m.power_sample() is None


def test_open_meter_not_requested_and_the_rapl_fallback(monkeypatch, tmp_path):
    """One open_meter for train and profile: not requested says so on any device; on the CPU, profile's
    cpu_rapl reads RAPL, or says why both GPU energy and RAPL are out."""
    assert open_meter("cuda", False).reason == "not requested (pass --energy)"
    assert open_meter("cpu", False).reason == "not requested (pass --energy)"
    assert open_meter("cpu", True).reason == "the run is on the CPU: GPU energy needs --device cuda"  # train: no RAPL

    def no_rapl():
        raise MeterUnavailable("no RAPL package domains under /x")

    monkeypatch.setattr(energy, "RaplMeter", no_rapl)
    m = open_meter("cpu", True, cpu_rapl=True)
    assert not m.available and m.reason == ("the run is on the CPU: GPU energy needs --device cuda; "
                                            "CPU package energy (RAPL): no RAPL package domains under /x")
    d = tmp_path / "intel-rapl:0"
    d.mkdir()
    (d / "energy_uj").write_text("5000000\n")
    (d / "max_energy_range_uj").write_text("262143328850\n")
    monkeypatch.setattr(energy, "RaplMeter", lambda: RaplMeter(tmp_path))
    m = open_meter("cpu", True, cpu_rapl=True)
    assert isinstance(m, RaplMeter) and m.available and m.energy_mj() == 0


def test_power_sampler_keeps_new_driver_readings(tmp_path):
    readings = iter([(10, 100_000), (10, 100_000), (20, 120_000), (30, 110_000)] + [(30, 110_000)] * 10_000)

    class Meter:
        available = True

        def power_sample(self):
            return next(readings)

    sampler = PowerSampler(Meter(), interval_s=0.0005).start()
    sampler.mark("window start", clock_us=lambda: 15)
    import time

    time.sleep(0.05)
    sampler.stop()
    assert sampler.samples == [(10, 100_000), (20, 120_000), (30, 110_000)]
    text = sampler.write_csv(tmp_path / "power.csv").read_text()
    assert text.splitlines()[0] == "kind,timestamp_us,value" and "mark,15,window start" in text
    assert sampler.polls > 3 and sampler.poll_us > 0 and 0 < sampler.duty < 1 and sampler.error is None


def test_power_sampler_drops_repeats_by_value_keeping_the_steps():
    # NVML stamps each query with the host time: equal values arrive with new timestamps
    readings = iter([(10, 100), (11, 100), (12, 100), (20, 120), (21, 120), (30, 110)])

    class Meter:
        available = True

        def power_sample(self):
            return next(readings, (40, 110))

    sampler = PowerSampler(Meter(), interval_s=0.0).start()
    import time

    time.sleep(0.02)
    sampler.stop()
    assert sampler.samples == [(10, 100), (12, 100), (20, 120), (21, 120), (30, 110), (40, 110)]


def test_power_sampler_reports_an_nvml_error_instead_of_raising():
    calls = iter([(10, 100), (20, 120)])

    class Meter:
        available = True

        def power_sample(self):
            try:
                return next(calls)
            except StopIteration:
                raise pynvml.NVMLError_GpuIsLost() from None

    sampler = PowerSampler(Meter(), interval_s=0.0).start()
    sampler.stop() if sampler._thread is None else sampler._thread.join(timeout=2)
    assert sampler.samples == [(10, 100), (20, 120)]
    assert sampler.error.startswith("power sampling stopped: NVMLError_GpuIsLost")


def rapl_tree(root: Path, energy_uj: int, max_uj: int = 1_000_000):
    d = root / "intel-rapl:0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text("package-0\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # a sub-domain (core): not a package, ignored
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5\n")
    return d


def test_rapl_reads_and_wraps(tmp_path):
    d = rapl_tree(tmp_path, 900_000)
    meter = RaplMeter(tmp_path)
    assert [p.name for p in meter.domains] == ["intel-rapl:0"]
    start = meter.energy_mj()
    (d / "energy_uj").write_text("950000\n")
    assert meter.energy_mj() - start == 50
    (d / "energy_uj").write_text("30000\n")  # wrapped at 1 000 000 µJ: +80 000 µJ
    assert meter.energy_mj() - start == 130
    assert meter.delta_j([900_000], [30_000]) == pytest.approx(0.13)


def test_rapl_without_permission_or_domains(tmp_path, monkeypatch):
    with pytest.raises(MeterUnavailable, match="no RAPL package domains"):
        RaplMeter(tmp_path / "nothing")
    rapl_tree(tmp_path, 1)
    real = Path.read_text

    def denied(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(MeterUnavailable, match="no permission to read"):
        RaplMeter(tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
def test_real_nvml_counter_advances_under_load():
    meter = open_meter("cuda")
    if not meter.available:
        pytest.fail(f"NVML unavailable on a GPU machine: {meter.reason}")
    a = torch.randn(8192, 8192, device="cuda")
    start = meter.energy_mj()
    import time

    t_end = time.time() + 1.0
    while time.time() < t_end:
        a = a @ a.T / 8192
    torch.cuda.synchronize()
    assert meter.energy_mj() > start
