"""``lzo-bench reproduce``: a profile's grid of trials (:func:`lzo_bench.experiments.grid.run_grid`) and its
paper-style table (:mod:`lzo_bench.experiments.summary`, figures from :mod:`lzo_bench.experiments.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lzo_bench.cli.common import app, fail, interruptible, out_dir, print_json
from lzo_bench.experiments.grid import Engine
from lzo_bench.ops.backends import BackendName
from lzo_bench.training.reporter import Reporter


@app.command()
@interruptible("the finished trials are kept and a rerun resumes them; the summary files are written whole or not "
               "at all")
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

    from lzo_bench.cli.report import console, progress_columns, reproduce_table
    from lzo_bench.data import DatasetError, DatasetMissing, load_dataset
    from lzo_bench.experiments.grid import EngineUnavailable, run_grid
    from lzo_bench.experiments.plots import PlotUnavailable, figures
    from lzo_bench.experiments.recipe import RecipeError, load_recipe, with_overrides
    from lzo_bench.experiments.summary import summarize, write_outputs
    from lzo_bench.training.config import ConfigError

    if jobs < 1 or (trials is not None and trials < 1) or (epochs is not None and epochs < 1):
        raise fail("--jobs, --trials and --epochs must be ≥ 1")
    if retries < 0:
        raise fail("--retries must be ≥ 0")
    try:
        prof = with_overrides(load_recipe(profile), epochs=epochs, trials=trials)
    except RecipeError as e:
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
        try:
            counts = run_grid(prof, target, jobs, device, backend.value, data_dir, download,
                              GridReporter(bar, prof.name), engine, address, retries)
        except (ConfigError, EngineUnavailable) as e:
            raise fail(str(e)) from None
        except OSError as e:  # a trial's run folder on a full disk, say: it left nothing (issue 34, 12)
            raise fail(f"cannot write {e.filename or target} ({e.strerror or e}); the finished trials are kept in "
                       f"{target}: free space and run again to resume", 1) from None
    summary = summarize(prof, target)
    summary["grid"] = counts | {"jobs": jobs, "engine": engine.value, "out": str(target)}
    if counts["interrupted"]:  # Ctrl-C or SIGTERM: the table of what finished, then 128 + the signal
        if not json_out:
            console.print(reproduce_table(summary))
            _print_placement(summary)
        raise fail(f"interrupted after {counts['trained']} trained run(s); finished trials are kept in {target} "
                   "and a rerun resumes", 128 + counts["interrupted"])
    from lzo_bench.runtime.signals import deferred, pause_point

    files: list[Path] = []
    figure_note = None
    with deferred() as signals:  # a signal while the results are written waits for them to be whole (issue 34, 15)
        try:
            files += write_outputs(summary, target)
            pause_point("reproduce-outputs")  # a test's moment: the table files written, the figures not yet
            try:
                files += figures(prof, target)
            except PlotUnavailable as e:
                figure_note = str(e)
        except OSError as e:  # a full disk, say: the trials are kept, a rerun writes the table again
            written = f"; wrote {', '.join(str(f) for f in files)}" if files else ""
            raise fail(f"cannot write the summary into {target} ({e.strerror or e}){written}; the finished trials are "
                       "kept there: free space and run again to write it", 1) from None
    if signals:
        import signal

        if not json_out:
            console.print(reproduce_table(summary))
        raise fail(f"interrupted ({signal.Signals(signals[0]).name}) while writing the results; finished writing "
                   f"them first: {', '.join(str(f) for f in files)}", 128 + signals[0])
    if json_out:
        return print_json(summary)
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


class GridReporter(Reporter):
    """The grid's bars: trials done of the grid, and the running trial's epochs (0 at its start)
    where the trials run one at a time in this process."""

    def __init__(self, bar, name: str):
        self.bar = bar
        self.trials = bar.add_task(f"{name}: trials", total=None)
        self.epochs = bar.add_task("running trial: epochs", total=None, visible=False)

    def grid_progress(self, done: int, total: int, out: str) -> None:
        self.bar.update(self.trials, completed=done, total=total)

    def start(self, result, n_batches: int) -> None:
        self.trial, self.total = Path(result.out).name, result.config.epochs
        self._epochs(0)

    def epoch(self, record) -> None:
        self._epochs(record.epoch)

    def _epochs(self, done: int) -> None:
        self.bar.update(self.epochs, completed=done, total=self.total, visible=True, description=f"{self.trial}: epochs")


def _print_placement(summary: dict) -> None:
    """One line per machine and device: the trials it ran."""
    from lzo_bench.cli.report import console

    places: dict[str, list[str]] = {}
    for t in summary["trials"]:
        if t["host"] or t["device"]:
            where = f"{t['host'] or '?'} · {t['device_name'] or '?'} ({t['device']})"
            places.setdefault(where, []).append(f"{t['method']}-seed{t['seed']}")
    for where, names in places.items():
        console.print(f"ran on {where}: {', '.join(names)}", highlight=False)
