"""The ``lzo-bench`` command line. Each command parses options and calls one library function."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from lzo_bench import __version__
from lzo_bench.backends import BackendName
from lzo_bench.data import DATASET_INFO
from lzo_bench.gates import DIST_NAMES, Method

app = typer.Typer(
    name="lzo-bench",
    help="Train spiking networks with LocalZO, measure the cost, export the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DistName = Enum("DistName", {n: n for n in DIST_NAMES}, type=str)  # type: ignore[misc]
DatasetName = Enum("DatasetName", {n: n for n in DATASET_INFO}, type=str)  # type: ignore[misc]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
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
    method: Annotated[Method, typer.Option(help="Backward rule.")] = Method.LOCALZO,
    dist: Annotated[DistName, typer.Option(help="Distribution of z; the surrogate of `surrogate`/`sparsegrad` is its expected LocalZO surrogate.")] = "normal",  # type: ignore[assignment]
    k: Annotated[Optional[float], typer.Option(help="Temperature of sigmoid (default a/δ, so c = 1) or fast-sigmoid (default 100).")] = None,
    delta: Annotated[float, typer.Option(help="LocalZO δ (> 0).")] = 0.05,
    samples: Annotated[int, typer.Option("--samples", "-m", help="LocalZO samples m per neuron (≥ 1).")] = 1,
    bth: Annotated[Optional[float], typer.Option(help="SparseGrad band B_th (> 0); default δ·E[max_k|z_k|].")] = None,
    dataset: Annotated[DatasetName, typer.Option(help="Dataset.")] = "digits",  # type: ignore[assignment]
    epochs: Annotated[int, typer.Option(help="Epochs (≥ 1).")] = 20,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size; default: the dataset's.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate; default: the dataset's.")] = None,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes, comma-separated.")] = "200,200",
    steps: Annotated[Optional[int], typer.Option(help="Time steps T; default: the dataset's.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for init, shuffling and LocalZO draws.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[BackendName, typer.Option(help="LIF layer implementation.")] = BackendName.AUTO,
    regularize: Annotated[bool, typer.Option(help="SparseGrad spike-count regularisers.")] = True,
    out: Annotated[Optional[str], typer.Option(help="Run folder; default runs/<dataset>-<method>-<dist>-seed<seed>-<time>.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Reuse an --out folder that already holds a run.")] = False,
) -> None:
    """Train a feed-forward LIF network and write config.json, metrics.json and checkpoint.pt."""
    from lzo_bench.report import RichReporter, console, summary_table
    from lzo_bench.train import ConfigError, TrainConfig, TrainingDiverged, TrainingInterrupted
    from lzo_bench.train import train as run_training

    cfg = TrainConfig(
        dataset=dataset.value, method=method.value, dist=dist.value, k=k, delta=delta, samples=samples,
        bth=bth, epochs=epochs, batch_size=batch_size, lr=lr, hidden=parse_hidden(hidden),
        steps=steps, seed=seed, device=device, backend=backend.value, regularize=regularize,
        out=out, overwrite=overwrite,
    )
    try:
        result = run_training(cfg, RichReporter(console))
    except ConfigError as e:
        raise fail(str(e)) from None
    except TrainingDiverged as e:
        raise fail(str(e), 1) from None
    except TrainingInterrupted as e:
        raise fail(str(e), EXIT_INTERRUPTED) from None
    console.print(summary_table(result))


theory_app = typer.Typer(help="The paper's theory, executable: Table 1, Monte-Carlo checks, figures.", no_args_is_help=True)
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
        for col in ("target", "α", "c", "max err", "of peak", "tol.", "eq.9 err", "result"):
            table.add_column(col, justify="left" if col == "target" else "right")
        for r in rows:
            table.add_row(r.target, str(r.alpha), f"{r.c:.4g}", f"{r.max_abs_error:.4f}", f"{100 * r.relative_error:.2f} %",
                          f"{r.tolerance:.4f}", f"{r.quadrature_error:.1e}", "[green]pass[/]" if r.passed else "[red]FAIL[/]")
        console.print(table)
        console.print(f"{rows[0].draws_per_point} draws at each of {rows[0].points} points; tol. = 5 standard "
                      "errors + truncation g(δ·z_max) + 1e-3·peak; eq.9 err = quadrature of eq. 9 vs target.",
                      highlight=False)
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
    from pathlib import Path

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
    """Console-script entry point."""
    sys.exit(app())
