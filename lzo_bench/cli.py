"""The ``lzo-bench`` command line. Each command parses options and calls one library function."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lzo_bench import __version__
from lzo_bench.backends import BackendName
from lzo_bench.data import DATASET_INFO
from lzo_bench.gates import DIST_NAMES, Method
from lzo_bench.reproduce import Engine

app = typer.Typer(
    name="lzo-bench",
    help="Train spiking networks with LocalZO, measure the cost, export the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: extras like '.[bench]' shown literally, flags without <bool>, 80 columns
)

DistName = Enum("DistName", {n: n for n in DIST_NAMES}, type=str)  # type: ignore[misc]
DatasetName = Enum("DatasetName", {n: n for n in DATASET_INFO}, type=str)  # type: ignore[misc]

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def out_dir(path: Path, target: Path, create: bool, choose: str = "folder") -> None:
    """``--out``'s folder ``path`` made writable (``create``) or only checked to be creatable (nothing is
    made yet, so a command refused later leaves no folder); one line naming ``target`` if not."""
    from lzo_bench.fsio import check_creatable_dir, ensure_writable_dir

    try:
        (ensure_writable_dir if create else check_creatable_dir)(path)
    except OSError as e:
        raise fail(f"--out cannot be written: {target} ({e.strerror or e}); choose another {choose}") from None


def typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def parse_hidden(text: str) -> tuple[int, ...]:
    try:  # every comma-separated part must be a size: "200," is a typo, not one layer
        sizes = tuple(int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(n < 1 for n in sizes):
        raise fail(f"--hidden needs one or more positive layer sizes, e.g. 200,200 (got {text!r})")
    return sizes


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lzo-bench {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Local Zeroth Order training and benchmarking for spiking neural networks."""


@app.command()
def train(
    ctx: typer.Context,
    profile: Annotated[Optional[str], typer.Option("--profile", help="A profile TOML (profiles/): its dataset, distribution, δ, m, epochs, network; options given here override it.")] = None,
    method: Annotated[Method, typer.Option(help="Backward rule.")] = Method.LOCALZO,
    dist: Annotated[DistName, typer.Option(help="Distribution of z; the surrogate of `surrogate`/`sparsegrad` is its expected LocalZO surrogate.")] = "normal",  # type: ignore[assignment]
    k: Annotated[Optional[float], typer.Option(help="Temperature of sigmoid (default a/δ, so c = 1) or fast-sigmoid (default 100).")] = None,
    delta: Annotated[float, typer.Option(help="LocalZO δ (> 0).")] = 0.05,
    samples: Annotated[int, typer.Option("--samples", "-m", help="LocalZO samples m per neuron (≥ 1).")] = 1,
    bth: Annotated[Optional[float], typer.Option(help="SparseGrad band B_th (> 0); default δ·E[max_k|z_k|].")] = None,
    dataset: Annotated[DatasetName, typer.Option(help="Dataset: digits is embedded; nmnist, shd, fmnist are read from --data-dir.")] = "digits",  # type: ignore[assignment]
    data_dir: Annotated[Optional[str], typer.Option(help="Folder holding NMNIST/, SHD/, FashionMNIST/ (default $LZO_DATA_DIR or ./data).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download N-MNIST / SHD through tonic if missing.")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs (≥ 1).")] = 20,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size; default: the dataset's.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate; default: the dataset's.")] = None,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes, comma-separated.")] = "200,200",
    steps: Annotated[Optional[int], typer.Option(help="Time steps T; default: the dataset's.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for init, shuffling and LocalZO draws.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[BackendName, typer.Option(help="LIF layer implementation.")] = BackendName.AUTO,
    regularize: Annotated[bool, typer.Option(help="SparseGrad spike-count regularisers.")] = True,
    energy: Annotated[bool, typer.Option("--energy", help="Record GPU energy per epoch and per update (NVML) in metrics.json.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's, every core). On a shared machine give the cores that are free: two runs that each take all cores slow each other 10-40x.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder; default runs/<dataset>-<method>-<dist>-seed<seed>-<time>.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Reuse an --out folder that already holds a run.")] = False,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue the run in this folder from its last finished epoch, with its own configuration (only --epochs and --energy may be given).")] = None,
) -> None:
    """Train a feed-forward LIF network and write config.json, metrics.json and checkpoint.pt."""
    from lzo_bench.report import RichReporter, console, summary_table
    from lzo_bench.train import ConfigError, TrainConfig, TrainingDiverged, TrainingFailed, TrainingInterrupted
    from lzo_bench.train import RESUME_MAY_CHANGE, resume_config
    from lzo_bench.train import train as run_training

    cfg_kwargs = dict(
        dataset=dataset.value, data_dir=data_dir, download=download, method=method.value, dist=dist.value, k=k, delta=delta, samples=samples,
        bth=bth, epochs=epochs, batch_size=batch_size, lr=lr, hidden=parse_hidden(hidden),
        steps=steps, seed=seed, device=device, backend=backend.value, regularize=regularize, energy=energy,
        threads=threads, out=out, overwrite=overwrite,
    )
    if resume is not None:
        others = [name for name in [*cfg_kwargs, "profile"] if typed(ctx, name) and name not in RESUME_MAY_CHANGE]
        if others:
            raise fail(f"--resume continues {resume} with its own configuration; only --epochs and --energy may be "
                       f"given with it (got --{others[0].replace('_', '-')})")
        try:
            cfg = resume_config(resume, epochs if typed(ctx, "epochs") else None, energy if typed(ctx, "energy") else None)
        except ConfigError as e:
            raise fail(str(e)) from None
    elif profile:
        from lzo_bench.reproduce import ProfileError, load_profile

        try:
            prof = load_profile(profile)
        except ProfileError as e:
            raise fail(f"--profile: {e}") from None
        explicit = {name for name in cfg_kwargs if typed(ctx, name)}
        if not typed(ctx, "method"):
            cfg_kwargs["method"] = prof.methods[-1]
        cfg_kwargs.update({k: v for k, v in prof.train_kwargs(cfg_kwargs["method"]).items() if k not in explicit})
    if resume is None:
        cfg = TrainConfig(**cfg_kwargs)
    try:
        result = run_training(cfg, RichReporter(console), resume=resume is not None)
    except ConfigError as e:
        raise fail(str(e)) from None
    except (TrainingDiverged, TrainingFailed) as e:
        raise fail(str(e), 1) from None
    except OSError as e:  # the run folder's first files could not be written (a full disk, say): lock released
        raise fail(f"cannot write the run folder: {e.filename or ''} ({e.strerror or e}); free space or choose "
                   "another --out", 1) from None
    except TrainingInterrupted as e:
        raise fail(str(e), 128 + e.signum) from None  # 130 for Ctrl-C, 143 for SIGTERM
    console.print(summary_table(result))
    typer.echo(f"run folder: {result.out}")  # whole, on its own line, to copy (the table may cut it at 80 columns)


class ExportFormat(str, Enum):
    ONNX = "onnx"
    ONNX_STEP = "onnx-step"
    NIR = "nir"


DEFAULT_EXPORT_NAME = {ExportFormat.ONNX: "model.onnx", ExportFormat.ONNX_STEP: "model_step.onnx", ExportFormat.NIR: "model.nir"}


class WeightDtype(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"


@app.command()
def export(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run folder (or its checkpoint.pt) written by `lzo-bench train`.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="onnx: Scan over time; onnx-step: one time bin per call; nir.")] = ExportFormat.ONNX,
    out: Annotated[Optional[str], typer.Option(help="Output file; default <run>/model.onnx, model_step.onnx or model.nir.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (13..21); the file gets the lowest IR version for it.")] = 17,
    dtype: Annotated[WeightDtype, typer.Option(help="ONNX weight storage; float16 weights are cast to float32 in the graph.")] = WeightDtype.FLOAT32,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Check parity in onnxruntime (ONNX) or simulate the graph (NIR) after export.")] = True,
    samples: Annotated[int, typer.Option(help="Test samples for the parity check (≥ 1).")] = 512,
    threads: Annotated[int, typer.Option(help="CPU threads for every latency measurement: torch.set_num_threads and onnxruntime's intra_op_num_threads (≥ 1).")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the parity and latency report as JSON.")] = False,
) -> None:
    """Export a trained network as ONNX (dynamic time and batch) or NIR, and check it."""
    import warnings

    from lzo_bench import export as ex
    from lzo_bench.checkpoint import CheckpointError, load_checkpoint
    from lzo_bench.threads import threads_problem

    if samples < 1:
        raise fail(f"--samples must be ≥ 1 (got {samples})")
    problem = threads_problem(threads)  # far beyond the CPUs, onnxruntime's thread pool crashed (100000: a segfault)
    if problem:
        raise fail(f"--threads {problem}")
    suffix = Path(DEFAULT_EXPORT_NAME[format]).suffix
    if out and Path(out).suffix != suffix:
        raise fail(f"--out {out} does not match --format {format.value}: name the file *{suffix}")
    if out and Path(out).is_dir():
        raise fail(f"--out {out} is a folder; name a file inside it, e.g. {Path(out) / DEFAULT_EXPORT_NAME[format]}")
    if format is ExportFormat.NIR and dtype is not WeightDtype.FLOAT32:
        raise fail(f"--dtype {dtype.value} applies to the ONNX formats; NIR stores float32")
    if format is ExportFormat.NIR and typed(ctx, "opset"):
        raise fail(f"--opset {opset} applies to the ONNX formats; NIR has no opset")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        model, ckpt = load_checkpoint(run)
        src = ex.ExportSource.from_checkpoint(ckpt, ex.recorded_test_acc(run_dir, ckpt.get("epoch")))
    except CheckpointError as e:
        raise fail(str(e)) from None
    target = Path(out) if out else run_dir / DEFAULT_EXPORT_NAME[format]
    out_dir(target.parent, target, False, "path")  # created only once there is a file to write (issue 19, D10)
    try:
        if format is ExportFormat.NIR:
            graph = ex.nir_graph(src)
            out_dir(target.parent, target, True, "path")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex.write_nir(graph, target)
            typer.echo(f"warning: {ex.NIR_RESET_NOTE}", err=True)
            report = _check_nir(target, model, src, samples) if check else None
        else:
            build = ex.sequence_model if format is ExportFormat.ONNX else ex.step_model
            onnx_model = build(src, opset, dtype.value)
            out_dir(target.parent, target, True, "path")
            ex.write_onnx(onnx_model, target)
            report = _check_onnx(format, onnx_model, model, src, opset, samples, dtype.value, threads) if check else None
    except ex.ExportError as e:
        raise fail(str(e)) from None
    except OSError as e:  # a full disk, say: the atomic write left no partial file
        raise fail(f"cannot write {target} ({e.strerror or e}); free space or choose another --out", 1) from None
    if json_out:
        _print_json({"file": str(target), "format": format.value, "check": _plain(report)})
    else:
        typer.echo(f"wrote {target}")
        if report is not None:
            _print_export_report(format, report)
    if report is not None and not report["passed"]:
        raise fail(f"parity check failed; the exported file is kept at {target} for inspection", 1)


def _plain(obj: object) -> object:
    """Dataclasses (also inside lists and dicts) as dicts, for JSON."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _check_nir(target, model, src, samples: int) -> dict:
    """Parameters read back, and the graph simulated with NIR's reset next to the trained network."""
    from lzo_bench import export as ex
    from lzo_bench import export_check as chk

    report = ex.check_nir(target, src)
    cost = chk.nir_reset_cost(target, model, src, samples)
    if not cost.subtractive_sim_matches:
        report["problems"].append("the NIR graph simulated with lzo-bench's subtractive reset does not reproduce the network")
    return report | {"reset_cost": cost, "passed": not report["problems"]}


def _check_onnx(format, onnx_model, model, src, opset, samples, dtype: str, threads: int) -> dict:
    from lzo_bench import export as ex
    from lzo_bench import export_check as chk

    seq_bytes = (onnx_model if format is ExportFormat.ONNX else ex.sequence_model(src, opset, dtype)).SerializeToString()
    steps_list = sorted({1, 7, src.steps, 3 * src.steps})
    card = {"nodes": ex.node_count(onnx_model), "ir_version": onnx_model.ir_version, "opset": opset, "dtype": dtype}
    if format is ExportFormat.ONNX_STEP:
        rows = [chk.step_parity(onnx_model.SerializeToString(), seq_bytes, src, t, min(samples, 64)) for t in steps_list]
        return {"parity": rows, "latency": [], "passed": all(r.passed for r in rows)} | card
    reference = model if dtype == "float32" else chk.rounded_copy(model, dtype)
    try:
        rows = chk.parity(seq_bytes, reference, src, steps_list, samples, float32_model=None if dtype == "float32" else model)
        lat = chk.latency(seq_bytes, model, src, threads=threads)
    except chk.ProviderFallback as e:
        raise fail(str(e), 1) from None
    import onnxruntime as ort

    return {"parity": rows, "latency": lat, "threads": threads, "passed": all(r.passed for r in rows)} | card | {
        "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}


def _print_export_report(format, report: dict) -> None:
    import math

    from rich.table import Table

    from lzo_bench.report import console

    fmt = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.2f}"  # noqa: E731
    if format is ExportFormat.NIR:
        console.print(f"NIR read back: {len(report['nodes'])} nodes ({', '.join(report['nodes'])}); "
                      + ("parameters and weights match" if report["passed"] else "; ".join(report["problems"])),
                      highlight=False)
        c = report["reset_cost"]
        cost = Table(title=f"NIR reset cost: {c.samples} samples of the {c.inputs}, T = {c.steps}, simulated through nirtorch")
        for col in ("network", "reset", "accuracy %", "spikes / sample per layer"):
            cost.add_column(col, justify="left" if col in ("network", "reset") else "right")
        cost.add_row("lzo-bench (trained)", "subtract θ", fmt(c.acc_subtractive), " / ".join(f"{v:.1f}" for v in c.spikes_subtractive))
        cost.add_row("NIR graph", "to 0", fmt(c.acc_nir), " / ".join(f"{v:.1f}" for v in c.spikes_nir))
        console.print(cost)
        console.print(f"predictions unchanged by the reset: {c.agreement_pct:.2f} %; the same simulation with the "
                      f"subtractive reset {'reproduces' if c.subtractive_sim_matches else 'DIFFERS from'} the network (spike "
                      f"counts, and logits to {c.max_dlogit:.2g} against a rounding bound of {c.dlogit_bound:.2g})",
                      highlight=False)
        return
    f16 = report["dtype"] != "float32"
    table = Table(title=f"ONNX parity ({report['nodes']} nodes, independent of T; opset {report['opset']}, IR {report['ir_version']}"
                        + (f"; {report['dtype']} weights vs the network with weights rounded alike" if f16 else "")
                        + "; Δlogit: max |ORT − torch|, spikes ≠: entries that differ)")
    cols = ["provider", "T", "batch", "Δlogit", "spikes ≠", "ORT acc", "torch acc"]  # short: 80 columns
    cols += ["≠ float32", "Δacc f32"] if f16 else []
    for col in (*cols, "result"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for r in report["parity"]:
        extra = [f"{100 * r.spike_flips_vs_float32:.4f} %", f"{r.ort_acc - r.float32_acc:+.2f}"] if f16 and r.float32_acc is not None else []
        table.add_row(r.provider.replace("ExecutionProvider", ""), str(r.steps), str(r.batch), f"{r.max_abs_dlogit:.2e}", f"{100 * r.spike_mismatch:.4f} %",
                      fmt(r.ort_acc), fmt(r.torch_acc), *extra, "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    console.print(table)
    if report["latency"]:
        lat = Table(title=f"Latency per sample, medians (ms), {report['threads']} thread(s) each (torch.set_num_threads = "
                          "onnxruntime intra_op_num_threads); lzo: our backend (cpp on the CPU, cuda on a GPU); "
                          "ORT × lzo: onnxruntime's time in multiples of ours")
        for col in ("provider", "batch", "thr", "ORT ms", "lzo ms", "torch ms", "ORT × lzo"):
            lat.add_column(col, justify="left" if col == "provider" else "right")
        for r in report["latency"]:  # ORT's time as a multiple of our backend's: no "speed-up" below 1
            ours = "n/a" if r.backend_ms_per_sample is None else f"{r.backend_ms_per_sample:.3f}"
            ratio = "n/a" if r.backend_ms_per_sample is None else f"{r.ort_ms_per_sample / r.backend_ms_per_sample:.2f}×"
            lat.add_row(r.provider.replace("ExecutionProvider", ""), str(r.batch), str(r.threads), f"{r.ort_ms_per_sample:.3f}",
                        ours, f"{r.torch_ms_per_sample:.3f}", ratio)
        console.print(lat)
        for note in sorted({r.backend_note for r in report["latency"] if r.backend_note}):
            console.print(f"lzo backend not timed: {note}", highlight=False)
    import onnxruntime as ort

    used = sorted({r.session_providers for r in report["parity"] if r.session_providers})
    console.print(f"onnxruntime {ort.__version__}: available providers {', '.join(ort.get_available_providers())}; "
                  f"sessions ran on {' / '.join(used) or 'n/a'}", highlight=False)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        console.print("CUDA: not checked — this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu; README).",
                      highlight=False)


@app.command()
def evaluate(
    run: Annotated[str, typer.Argument(help="Run folder (or its checkpoint.pt) written by `lzo-bench train`.")],
    data_dir: Annotated[Optional[str], typer.Option(help="Folder holding the dataset (default: the run's own, else $LZO_DATA_DIR or ./data).")] = None,
    batch_size: Annotated[int, typer.Option(help="Test samples per forward (≥ 1); the metrics do not depend on it.")] = 256,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """NeuroBench metrics of a trained network on its run's test set: accuracy, activation sparsity
    (total and per layer), synaptic operations, membrane updates, parameters, footprint, connection sparsity."""
    from lzo_bench.checkpoint import CheckpointError
    from lzo_bench.data import DatasetError, DatasetMissing
    from lzo_bench.evaluate import evaluate_run
    from lzo_bench.report import console, evaluate_table

    if batch_size < 1:
        raise fail(f"--batch-size must be ≥ 1 (got {batch_size})")
    try:
        report = evaluate_run(run, data_dir, batch_size)
    except CheckpointError as e:
        raise fail(str(e)) from None
    except DatasetMissing as e:
        raise fail(f"the run's test set is not there: {e}") from None
    except DatasetError as e:
        raise fail(f"the run's test set is damaged: {e}") from None
    if json_out:
        return _print_json(report)
    console.print(evaluate_table(report))


@app.command()
def profile(
    ctx: typer.Context,
    workload: Annotated[str, typer.Option(help="digits, nmnist, shd or fmnist (real data when on disk, else synthetic spikes of its shape).")] = "digits",
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
    import json as _json
    from datetime import datetime

    from rich.progress import Progress

    from lzo_bench.backends import BackendUnavailable
    from lzo_bench.checkpoint import CheckpointError, load_checkpoint
    from lzo_bench.data import DatasetError
    from lzo_bench.profile import WORKLOADS, EnergyConfig, ProfileConfig, run_profile, write_report
    from lzo_bench.report import console, peers_table, profile_table, progress_columns
    from lzo_bench.rng import MAX_SAMPLES
    from lzo_bench.train import ConfigError, check_device_option, check_float32_positive

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    valid = {m.value for m in Method}
    if not names or any(m not in valid for m in names):
        raise fail(f"--methods must be a comma-separated subset of {', '.join(sorted(valid))} (got {methods!r})")
    if len(set(names)) != len(names):
        raise fail(f"--methods names a method twice ({methods!r}); list each once")
    if workload not in WORKLOADS:
        raise fail(f"--workload must be one of: {', '.join(WORKLOADS)} (got {workload!r})")
    if run is not None and typed(ctx, "workload"):
        raise fail("--workload and --run exclude each other: a run is profiled on the dataset it trained on")
    if run is not None:
        try:
            workload = load_checkpoint(run)[1]["dataset"]["name"]
        except CheckpointError as e:
            raise fail(f"--run: {e}") from None
    if updates < 3:
        raise fail(f"--updates must be ≥ 3 (got {updates})")
    if warmup < 0:
        raise fail(f"--warmup must be ≥ 0 (got {warmup})")
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
                        energy_cfg=EnergyConfig(min_seconds=energy_seconds), peers=peers, run=run)
    with Progress(*progress_columns(), console=console, transient=True, disable=json_out) as bar:
        task = bar.add_task("loading data and backends", total=None)
        try:
            report = run_profile(cfg, lambda what, done, total: bar.update(task, description=what, completed=done, total=total))
        except BackendUnavailable as e:
            raise fail(f"--backend {backend.value} is unavailable: {e}") from None
        except DatasetError as e:
            raise fail(f"--data-dir holds a damaged {workload} dataset: {e}; fix it, or move it away to profile "
                       "synthetic spikes of its shape") from None
    out_dir(target, target, True)
    try:
        write_report(report, target)
    except OSError as e:  # a full disk, say: each file is written atomically, none is left half-written
        raise fail(f"cannot write the profile into {target} ({e.strerror or e}); free space or choose another --out", 1) from None
    if json_out:
        typer.echo(_json.dumps(report, indent=2))
        return
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


@app.command()
def reproduce(
    profile: Annotated[str, typer.Argument(help="A profile TOML, e.g. profiles/table2-normal-m1.toml or profiles/digits-quick.toml.")],
    out: Annotated[Optional[str], typer.Option(help="Grid folder; default runs/reproduce-<profile name>. Rerunning resumes it.")] = None,
    jobs: Annotated[int, typer.Option(help="Trials trained in parallel processes (one GPU each when several are visible); "
                                           "--engine ray on CPUs: trials at once per machine.")] = 1,
    trials: Annotated[Optional[int], typer.Option(help="Override the profile's trial count.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override the profile's epochs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    backend: Annotated[BackendName, typer.Option(help="LIF layer implementation.")] = BackendName.AUTO,
    data_dir: Annotated[Optional[str], typer.Option(help="Folder holding the datasets (default $LZO_DATA_DIR or ./data).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download N-MNIST / SHD through tonic if missing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    engine: Annotated[Engine, typer.Option(help="local: this machine's processes; ray: every trial a Ray task "
                                                "(one GPU each when the cluster has GPUs).")] = Engine.LOCAL,
    address: Annotated[Optional[str], typer.Option(envvar="RAY_ADDRESS", help="--engine ray: the cluster to use, e.g. "
                                                   "10.0.0.1:6379; default a Ray started on this machine, else a new local one.")] = None,
    retries: Annotated[int, typer.Option(help="--engine ray: times a trial whose worker died is run again.")] = 2,
) -> None:
    """Train every method × trial of a profile and print the paper-style table next to the paper's numbers."""

    from rich.progress import Progress

    from lzo_bench.data import DatasetError, DatasetMissing, load_dataset
    from lzo_bench.plots import PlotUnavailable
    from lzo_bench.reproduce import (EngineUnavailable, ProfileError, figures, load_profile, run_grid, summarize,
                                     with_overrides, write_outputs)
    from lzo_bench.report import console, progress_columns, reproduce_table
    from lzo_bench.train import ConfigError

    if jobs < 1 or (trials is not None and trials < 1) or (epochs is not None and epochs < 1):
        raise fail("--jobs, --trials and --epochs must be ≥ 1")
    if retries < 0:
        raise fail("--retries must be ≥ 0")
    try:
        prof = with_overrides(load_profile(profile), epochs=epochs, trials=trials)
    except ProfileError as e:
        raise fail(str(e)) from None
    target = Path(out) if out else Path("runs") / f"reproduce-{prof.name}"
    out_dir(target, target, False)
    if prof.dataset != "digits" and engine is Engine.LOCAL:  # a cluster's workers may hold data this machine lacks
        try:
            load_dataset(prof.dataset, prof.steps or 1, data_dir, download)  # fail fast, with the file list
        except DatasetMissing as e:
            raise fail(f"--data-dir does not hold the dataset: {e}") from None
        except DatasetError as e:
            raise fail(f"--data-dir holds a damaged dataset: {e}") from None
    out_dir(target, target, True)  # created only once the data is known to be there (issue 19, D10)
    with Progress(*progress_columns(), console=console, transient=True, disable=json_out) as bar:
        task = bar.add_task(f"{prof.name}: trials", total=None)
        try:
            counts = run_grid(prof, target, jobs, device, backend.value, data_dir, download,
                              lambda n, total, _: bar.update(task, completed=n, total=total), engine, address, retries)
        except (ConfigError, EngineUnavailable) as e:
            raise fail(str(e)) from None
    summary = summarize(prof, target)
    summary["grid"] = counts | {"jobs": jobs, "engine": engine.value, "out": str(target)}
    if counts["interrupted"]:  # Ctrl-C or SIGTERM: the table of what finished, then 128 + the signal
        if not json_out:
            console.print(reproduce_table(summary))
            _print_placement(summary)
        raise fail(f"interrupted after {counts['trained']} trained run(s); finished trials are kept in {target} "
                   "and a rerun resumes", 128 + counts["interrupted"])
    try:
        files = write_outputs(summary, target)
        try:
            files += figures(prof, target)
            figure_note = None
        except PlotUnavailable as e:
            figure_note = str(e)
    except OSError as e:  # a full disk, say: the trials are kept, a rerun writes the table again
        raise fail(f"cannot write the summary into {target} ({e.strerror or e}); the finished trials are kept there: "
                   "free space and run again to write it", 1) from None
    if json_out:
        return _print_json(summary)
    console.print(reproduce_table(summary))
    console.print(f"trained {counts['trained']} run(s), reused {counts['skipped']} finished; speed-ups are from the "
                  "training runs' own timings, paired only within one process" + (" (runs shared the machine: use lzo-bench profile for clean ratios)" if jobs > 1 else ""),
                  highlight=False)
    for r in summary["rows"]:
        if r["diverged"] or r["failed"] or r["unfinished"] or r["speedup_note"]:
            console.print(f"{r['method']}: {r['trials']} trial(s) completed, {r['diverged']} diverged, {r['failed']} failed, "
                          f"{r['unfinished']} unfinished" + (f"; {r['speedup_note']}" if r["speedup_note"] else ""),
                          highlight=False)
    for lost in counts["lost"]:
        console.print(f"never finished (worker lost): {lost}", highlight=False)
    _print_placement(summary)
    if figure_note:
        console.print(f"figures skipped: {figure_note}", highlight=False)
    console.print("wrote " + ", ".join(str(f) for f in files), highlight=False)


def _print_placement(summary: dict) -> None:
    """One line per machine and device: the trials it ran."""
    from lzo_bench.report import console

    places: dict[str, list[str]] = {}
    for t in summary["trials"]:
        if t["host"] or t["device"]:
            where = f"{t['host'] or '?'} · {t['device_name'] or '?'} ({t['device']})"
            places.setdefault(where, []).append(f"{t['method']}-seed{t['seed']}")
    for where, names in places.items():
        console.print(f"ran on {where}: {', '.join(names)}", highlight=False)


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False) -> None:
    """What works on this machine and why not where not: torch, the C++ and CUDA ops (with the CUDA
    self-check), GPU, NVML energy and power, RAPL, onnxruntime and its providers, the optional extras."""
    from lzo_bench.doctor import as_json, run_checks
    from lzo_bench.report import console, doctor_table

    checks = run_checks()
    if json_out:
        return _print_json(as_json(checks))
    console.print(doctor_table(checks))


theory_app = typer.Typer(help="The paper's theory, executable: Table 1, Monte-Carlo checks, figures.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(theory_app, name="theory")


def _print_json(obj: object) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2))


@theory_app.command("table1")
def theory_table1(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Table 1 (B_th/δ) and the sigmoid / fast-sigmoid values, computed next to the paper's."""
    from rich.table import Table

    from lzo_bench.report import console
    from lzo_bench.theory_checks import as_dicts, table1

    rows = table1()
    if json_out:
        return _print_json(as_dicts(rows))
    table = Table(title="Expected back-propagation thresholds (paper §4.5, §4.6, Table 1)")
    for col in ("quantity", "computed", "paper", "agrees"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    notes = []
    for r in rows:
        mark = ""
        if r.note:
            notes.append(r.note)
            mark = f" [{len(notes)}]"
        table.add_row(r.quantity, f"{r.computed:.5f}", f"{r.paper:g}", ("yes" if r.agrees else "[red]no[/]") + mark)
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", highlight=False)


@theory_app.command("check")
def theory_check(
    delta: Annotated[float, typer.Option(help="δ (> 0).")] = 0.05,
    draws: Annotated[int, typer.Option(help="Draws per grid point (≥ 100).")] = 20_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Monte-Carlo check that c·E[G²] reproduces every built-in surrogate; exit 1 if one fails."""
    from rich.table import Table

    from lzo_bench.report import console
    from lzo_bench.theory_checks import as_dicts, check

    if not delta > 0:
        raise fail(f"--delta must be > 0 (got {delta})")
    if draws < 100:
        raise fail(f"--draws must be ≥ 100 (got {draws})")
    rows = check(delta=delta, draws=draws)
    if json_out:
        _print_json(as_dicts(rows))
    else:
        table = Table(title=f"LocalZO Monte-Carlo check, δ = {delta:g}, u ∈ [−4δ, 4δ]")
        for col in ("target", "α", "c", "max err", "of peak", "worst/tol", "eq.9 err", "trunc.", "result"):
            table.add_column(col, justify="left" if col == "target" else "right")
        for r in rows:
            table.add_row(r.target, str(r.alpha), f"{r.c:.4g}", f"{r.max_abs_error:.4f}", f"{100 * r.relative_error:.2f} %",
                          f"{r.worst_ratio:.2f}", f"{r.quadrature_error:.1e}", f"{r.truncation:.1e}",
                          "[green]pass[/]" if r.passed else "[red]FAIL[/]")
        console.print(table)
        console.print(f"{rows[0].draws_per_point} draws at each of {rows[0].points} points. max err: Monte Carlo vs the "
                      "target. worst/tol: at the worst point, |Monte Carlo − eq. 9 of the sampled law| over that point's "
                      "tolerance, 5 standard errors (≤ 1 is a pass). eq.9 err: eq. 9 vs the target, within "
                      "the truncation g(δ·z_max) of a finite sampling table.", highlight=False)
    if not all(r.passed for r in rows):
        raise typer.Exit(1)


@theory_app.command("plot")
def theory_plot(
    out: Annotated[str, typer.Option(help="Folder for the PNG files.")] = "theory-plots",
    surrogate: Annotated[DistName, typer.Option(help="Distribution or surrogate for the sampling figure.")] = "sigmoid",  # type: ignore[assignment]
    k: Annotated[Optional[float], typer.Option(help="Temperature of sigmoid / fast-sigmoid.")] = None,
    delta: Annotated[float, typer.Option(help="δ (> 0).")] = 0.05,
    json_out: Annotated[bool, typer.Option("--json", help="Print the written paths as JSON.")] = False,
) -> None:
    """Figure 1 of the paper and, for one surrogate, sampled z against λ(z) and MC E[G²] against g."""

    from lzo_bench.plots import PlotUnavailable, theory_plots

    if not delta > 0:
        raise fail(f"--delta must be > 0 (got {delta})")
    try:
        paths = theory_plots(Path(out), surrogate.value, delta, k)
    except PlotUnavailable as e:
        raise fail(str(e), 1) from None
    except ValueError as e:
        raise fail(str(e)) from None
    if json_out:
        return _print_json({"files": [str(p) for p in paths]})
    for p in paths:
        typer.echo(f"wrote {p}")


def main() -> None:
    """Console-script entry point (``lzo_bench.entry.main`` installs the signal handling first)."""
    from lzo_bench.entry import main as entry_main

    entry_main()
