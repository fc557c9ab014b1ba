"""What every ``lzo-bench`` command shares: the typer app, the option enums, exit codes and the
small helpers that turn a bad option into one ``error:`` line (:func:`fail`)."""

from __future__ import annotations

import functools
import json
import signal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from lzo_bench import __version__
from lzo_bench.core.conv import ARCHS
from lzo_bench.core.gates import DIST_NAMES
from lzo_bench.data import DATASET_INFO

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
ArchName = Enum("ArchName", {n: n for n in ARCHS}, type=str)  # type: ignore[misc]

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def interruptible(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command whose Ctrl-C or SIGTERM (:mod:`lzo_bench.runtime.signals`) ends in one line naming the signal
    and ``what`` was kept, and exit 128 + signal — not click's ``Aborted!`` and exit 1 (issue 19, D5).
    The commands write their files atomically, so an interrupt leaves none half-written."""

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)  # typer reads the options from the wrapped signature
        def run(*args: Any, **kwargs: Any) -> Any:
            from lzo_bench.runtime.signals import signum_of

            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt as e:
                n = signum_of(e)
                raise fail(f"interrupted ({signal.Signals(n).name}); {what}", 128 + n) from None

        return run

    return wrap


def out_dir(path: Path, target: Path, create: bool, choose: str = "folder") -> None:
    """``--out``'s folder ``path`` made writable (``create``) or only checked to be creatable (nothing is
    made yet, so a command refused later leaves no folder); one line naming ``target`` if not."""
    from lzo_bench.runtime.fsio import check_creatable_dir, ensure_writable_dir

    try:
        (ensure_writable_dir if create else check_creatable_dir)(path)
    except OSError as e:
        raise fail(f"--out cannot be written: {target} ({e.strerror or e}); choose another {choose}") from None


def typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def parse_hidden(text: str) -> tuple[int, ...]:
    """``--hidden 200,200`` as layer sizes; one line naming the option if a part is not a positive size."""
    try:  # every comma-separated part must be a size: "200," is a typo, not one layer
        sizes = tuple(int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(n < 1 for n in sizes):
        raise fail(f"--hidden needs one or more positive layer sizes, e.g. 200,200 (got {text!r})")
    return sizes



def print_json(obj: object) -> None:
    """``obj`` as indented JSON on stdout (every command's ``--json``)."""
    typer.echo(json.dumps(obj, indent=2))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lzo-bench {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Local Zeroth Order training and benchmarking for spiking neural networks."""
