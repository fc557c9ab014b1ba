"""``lzo-bench profile``: options checked, then :func:`lzo_bench.measure.profile.run_profile` and its tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from lzo_bench.cli.common import ArchName, DistName, app, fail, interruptible, out_dir, print_json, typed
from lzo_bench.core.gates import Method
from lzo_bench.ops.backends import BackendName


@app.command()
@interruptible("no report was written")
def profile(
    ctx: typer.Context,
    workload: Annotated[str, typer.Option(help="digits, nmnist, shd or fmnist (real data when on disk, else synthetic spikes of its shape).")] = "digits",
    arch: Annotated[ArchName, typer.Option(help="fc: the paper's 2×200 network; conv: the dataset's conv network on its frames (digits, fmnist, nmnist), flattened into the readout, batch ≤ 32.")] = "fc",  # type: ignore[assignment]
    updates: Annotated[int, typer.Option(help="Measured updates per method (≥ 3).")] = 30,
    warmup: Annotated[int, typer.Option(help="Warm-up updates per method, not measured.")] = 5,
    methods: Annotated[str, typer.Option(help="Comma-separated methods; the plain autograd loop is always added as the baseline.")] = "surrogate,sparsegrad,localzo",
    dist: Annotated[DistName, typer.Option(help="Distribution of z (and its expected surrogate).")] = "normal",  # type: ignore[assignment]
    delta: Annotated[float, typer.Option(help="LocalZO δ (> 0).")] = 0.05,
    samples: Annotated[int, typer.Option("--samples", "-m", help="LocalZO samples m (≥ 1).")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[BackendName, typer.Option(help="LIF layer implementation.")] = BackendName.AUTO,
    data_dir: Annotated[Optional[str], typer.Option(help="Folder holding the datasets (default $LZO_DATA_DIR or ./data).")] = None,
    energy: Annotated[bool, typer.Option("--energy", help="Measure energy per update (NVML on GPU, RAPL on CPU).")] = False,
    energy_seconds: Annotated[float, typer.Option(help="Minimum seconds per energy window (≥ 5 recommended).")] = 5.0,
    out: Annotated[Optional[str], typer.Option(help="Folder for profile.json, profile.csv, power.csv; default runs/profile-<workload>-<time>.")] = None,
    peers: Annotated[bool, typer.Option("--peers", help="Also time the same update in snnTorch, SpikingJelly and Norse (pip install -e '.[bench]'), on the CPU.")] = False,
    run: Annotated[Optional[str], typer.Option("--run", help="Profile this run's trained network (its dataset, T and hidden sizes) instead of a freshly initialised one.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Time per phase, speedups, active %, memory and energy per update — all methods in one run."""
    from datetime import datetime

    from rich.progress import Progress

    from lzo_bench.cli.report import console, peers_table, profile_table, progress_columns
    from lzo_bench.core.rng import MAX_SAMPLES
    from lzo_bench.data import DatasetError
    from lzo_bench.measure.profile import WORKLOADS, EnergyConfig, ProfileConfig, run_profile, write_report
    from lzo_bench.ops.backends import BackendUnavailable
    from lzo_bench.runtime.devices import cpu_header
    from lzo_bench.training.checkpoint import CheckpointError, load_checkpoint
    from lzo_bench.training.config import ConfigError, check_device_option, check_float32_positive

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    valid = {m.value for m in Method}
    if not names or any(m not in valid for m in names):
        raise fail(f"--methods must be a comma-separated subset of {', '.join(sorted(valid))} (got {methods!r})")
    if len(set(names)) != len(names):
        raise fail(f"--methods names a method twice ({methods!r}); list each once")
    if workload not in WORKLOADS:
        raise fail(f"--workload must be one of: {', '.join(WORKLOADS)} (got {workload!r})")
    if arch.value == "conv" and run is None:
        from lzo_bench.core.conv import CONV_NETWORKS

        if workload not in CONV_NETWORKS:
            raise fail(f"--arch conv needs a workload with frames ({', '.join(CONV_NETWORKS)}); {workload} has none")
    if run is not None and typed(ctx, "arch"):
        raise fail("--arch and --run exclude each other: a run is profiled with the network it trained")
    if run is not None and typed(ctx, "workload"):
        raise fail("--workload and --run exclude each other: a run is profiled on the dataset it trained on")
    if run is not None:
        try:
            workload = load_checkpoint(run)[1]["dataset"]["name"]
        except CheckpointError as e:
            raise fail(f"--run: {e}") from None
    from lzo_bench.training.limits import LIMIT_WHY, MAX_PROFILE_UPDATES

    if updates < 3:
        raise fail(f"--updates must be ≥ 3 (got {updates})")
    if warmup < 0:
        raise fail(f"--warmup must be ≥ 0 (got {warmup})")
    for option, value in (("--updates", updates), ("--warmup", warmup)):  # 10^12: an allocator traceback (issue 34, 14)
        if value > MAX_PROFILE_UPDATES:
            raise fail(f"{option} must be ≤ {MAX_PROFILE_UPDATES} (got {value}): {LIMIT_WHY['--updates']}")
    if not (math.isfinite(energy_seconds) and energy_seconds > 0):
        raise fail(f"--energy-seconds must be > 0 and finite (got {energy_seconds})")
    if not 1 <= samples < MAX_SAMPLES:
        raise fail(f"--samples must lie in [1, {MAX_SAMPLES - 1}] (got {samples})")
    try:
        check_float32_positive("--delta", delta, "0.05")
        check_device_option(device)
    except ConfigError as e:
        raise fail(str(e)) from None
    target = Path(out) if out else Path("runs") / f"profile-{workload}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_dir(target, target, False)  # created once there is a report to write (issue 19, D10)
    cfg = ProfileConfig(workload=workload, updates=updates, warmup=warmup, methods=names, dist=dist.value, delta=delta,
                        samples=samples, device=device, backend=backend.value, energy=energy, out=str(target), data_dir=data_dir,
                        energy_cfg=EnergyConfig(min_seconds=energy_seconds), peers=peers, run=run,
                        arch=arch.value)
    with Progress(*progress_columns(), console=console, transient=True, disable=json_out) as bar:
        task = bar.add_task("loading data and backends", total=None)
        try:
            profiled = run_profile(cfg, lambda what, done, total: bar.update(task, description=what, completed=done, total=total))
        except BackendUnavailable as e:
            raise fail(f"--backend {backend.value} is unavailable: {e}") from None
        except DatasetError as e:
            raise fail(f"--data-dir holds a damaged {workload} dataset: {e}; fix it, or move it away to profile "
                       "synthetic spikes of its shape") from None
    out_dir(target, target, True)
    report = profiled.report
    try:
        write_report(report, target, profiled.sampler)
    except OSError as e:  # a full disk, say: each file is written atomically, none is left half-written
        raise fail(f"cannot write the profile into {target} ({e.strerror or e}); free space or choose another --out", 1) from None
    if json_out:
        return print_json(report)
    console.print(cpu_header(report["machine"]), highlight=False)
    console.print(profile_table(report))
    console.print(f"weights: {report['workload']['weights']}", highlight=False)
    e = report["energy"]
    console.print(f"energy: {'measured' if e['available'] else 'n/a — ' + str(e['reason'])}", highlight=False)
    p = report["peers"]
    if p is not None:
        if p["available"]:
            console.print(peers_table(p))
        console.print(f"peers: {'; '.join(p['skipped']) or 'all ran'}" if p["available"] else f"peers: n/a — {p['reason']}",
                      highlight=False)
    console.print(f"wrote {target / 'profile.json'}, {target / 'profile.csv'}", highlight=False)
