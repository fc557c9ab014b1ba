"""The ``lzo-bench`` command line. Each command parses options and calls one library function."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from lzo_bench import __version__
from lzo_bench.backends import BackendName
from lzo_bench.data import DATASET_INFO
from lzo_bench.distributions import DISTRIBUTIONS
from lzo_bench.gates import Method

app = typer.Typer(
    name="lzo-bench",
    help="Train spiking networks with LocalZO, measure the cost, export the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DistName = Enum("DistName", {n: n for n in DISTRIBUTIONS}, type=str)  # type: ignore[misc]
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
        dataset=dataset.value, method=method.value, dist=dist.value, delta=delta, samples=samples,
        bth=bth, epochs=epochs, batch_size=batch_size, lr=lr, hidden=parse_hidden(hidden),
        steps=steps, seed=seed, device=device, backend=backend.value, regularize=regularize,
        out=out, overwrite=overwrite,
    )
    try:
        cfg.validate()
        from lzo_bench.backends import select_backend

        console.print(select_backend(cfg.backend).describe())
        result = run_training(cfg, RichReporter(console))
    except ConfigError as e:
        raise fail(str(e)) from None
    except TrainingDiverged as e:
        raise fail(str(e), 1) from None
    except TrainingInterrupted as e:
        raise fail(str(e), EXIT_INTERRUPTED) from None
    console.print(summary_table(result))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
