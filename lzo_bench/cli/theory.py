"""``lzo-bench theory table1|check|plot``: the paper's theory (:mod:`lzo_bench.experiments.theory_checks`,
:func:`lzo_bench.experiments.plots.theory_plots`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from lzo_bench.cli.common import DistName, app, fail, interruptible, print_json

theory_app = typer.Typer(help="The paper's theory, executable: Table 1, Monte-Carlo checks, figures.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(theory_app, name="theory")

#: δ that check and plot accept, and why (issue 34, 14: 1e30 was an InvalidSurrogate traceback, 1e-300 an
#: OverflowError): below 0.01 the sigmoid's default temperature k = a/δ (> 150) makes its Theorem-3 law's
#: integral diverge in float64; above 1000 fast-sigmoid's (k = 100) normalisation c diverges
THEORY_DELTA = (0.01, 1000.0)
#: draws per grid point: check holds draws × 41 points of gates at once, about 1 KB a draw (10^6: ~1 GB)
MAX_THEORY_DRAWS = 1_000_000


def _check_delta(delta: float) -> None:
    low, high = THEORY_DELTA
    if not (math.isfinite(delta) and delta > 0):
        raise fail(f"--delta must be > 0 (got {delta})")
    if not low <= delta <= high:
        raise fail(f"--delta must lie in [{low:g}, {high:g}] (got {delta:g}): below, the sigmoid's default k = a/δ "
                   "makes its sampling law's integral diverge in float64; above, fast-sigmoid's normalisation c diverges")



@theory_app.command("table1")
def theory_table1(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Table 1 (B_th/δ) and the sigmoid / fast-sigmoid values, computed next to the paper's."""
    from rich.table import Table

    from lzo_bench.cli.report import console
    from lzo_bench.experiments.theory_checks import as_dicts, table1

    rows = table1()
    if json_out:
        return print_json(as_dicts(rows))
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
@interruptible("nothing was written")
def theory_check(
    delta: Annotated[float, typer.Option(help="δ (> 0).")] = 0.05,
    draws: Annotated[int, typer.Option(help="Draws per grid point (≥ 100).")] = 20_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Monte-Carlo check that c·E[G²] reproduces every built-in surrogate; exit 1 if one fails."""
    from rich.table import Table

    from lzo_bench.cli.report import console
    from lzo_bench.experiments.theory_checks import as_dicts, check

    _check_delta(delta)
    if draws < 100:
        raise fail(f"--draws must be ≥ 100 (got {draws})")
    if draws > MAX_THEORY_DRAWS:
        raise fail(f"--draws must be ≤ {MAX_THEORY_DRAWS} (got {draws}): the draws × 41 points are held in "
                   "memory at once, about 1 KB a draw")
    rows = check(delta=delta, draws=draws)
    if json_out:
        print_json(as_dicts(rows))
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
@interruptible("nothing was written")
def theory_plot(
    out: Annotated[str, typer.Option(help="Folder for the PNG files.")] = "theory-plots",
    surrogate: Annotated[DistName, typer.Option(help="Distribution or surrogate for the sampling figure.")] = "sigmoid",  # type: ignore[assignment]
    k: Annotated[Optional[float], typer.Option(help="Temperature of sigmoid / fast-sigmoid.")] = None,
    delta: Annotated[float, typer.Option(help="δ (> 0).")] = 0.05,
    json_out: Annotated[bool, typer.Option("--json", help="Print the written paths as JSON.")] = False,
) -> None:
    """Figure 1 of the paper and, for one surrogate, sampled z against λ(z) and MC E[G²] against g."""

    from lzo_bench.cli.common import out_dir
    from lzo_bench.experiments.plots import PlotUnavailable, theory_plots

    _check_delta(delta)
    out_dir(Path(out), Path(out), True)  # an existing file or a read-only place: one line (issue 34, 14)
    try:
        paths = theory_plots(Path(out), surrogate.value, delta, k)
    except PlotUnavailable as e:
        raise fail(str(e), 1) from None
    except ValueError as e:
        raise fail(str(e)) from None
    except OSError as e:  # a full disk, say
        raise fail(f"cannot write the figures into {out} ({e.strerror or e}); free space or choose another --out", 1) from None
    if json_out:
        return print_json({"files": [str(p) for p in paths]})
    for p in paths:
        typer.echo(f"wrote {p}")
