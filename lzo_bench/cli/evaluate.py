"""``lzo-bench evaluate``: NeuroBench metrics of a trained run (:func:`lzo_bench.measure.evaluate.evaluate_run`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lzo_bench.cli.common import app, fail, interruptible, print_json


@app.command()
@interruptible("nothing was written")
def evaluate(
    run: Annotated[str, typer.Argument(help="Run folder (or its checkpoint.pt) written by `lzo-bench train`.")],
    data_dir: Annotated[Optional[str], typer.Option(help="Folder holding the dataset (default: the run's own, else $LZO_DATA_DIR or ./data).")] = None,
    batch_size: Annotated[int, typer.Option(help="Test samples per forward (≥ 1); the metrics do not depend on it.")] = 256,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """NeuroBench metrics of a trained network on its run's test set: accuracy, activation sparsity
    (total and per layer), synaptic operations, membrane updates, parameters, footprint, connection sparsity."""
    from lzo_bench.cli.report import console, evaluate_table
    from lzo_bench.data import DatasetError, DatasetMissing
    from lzo_bench.measure.evaluate import evaluate_run
    from lzo_bench.training.checkpoint import CheckpointError

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
    _warn_stale_exports(run)
    if json_out:
        return print_json(report)
    console.print(evaluate_table(report))


def _warn_stale_exports(run: str) -> None:
    """One warning line per exported file beside the checkpoint that holds older weights (issue 34, 7)."""
    from pathlib import Path

    from lzo_bench.export.source import stale_exports
    from lzo_bench.training.checkpoint import CheckpointError, load_checkpoint

    try:
        _, ckpt = load_checkpoint(run)
    except CheckpointError:
        return
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    for line in stale_exports(run_dir, ckpt):
        typer.echo(f"warning: {line}", err=True)
