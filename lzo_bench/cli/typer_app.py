"""The typer app with every command registered: importing a command module registers its command on
:data:`lzo_bench.cli.common.app`, in this order (``--help``'s)."""

from __future__ import annotations

import sys

from lzo_bench.cli.common import app

from lzo_bench.cli import train, export, evaluate, profile, reproduce, doctor, theory  # isort: skip

#: the command modules, in ``--help``'s order
COMMANDS = (train, export, evaluate, profile, reproduce, doctor, theory)

__all__ = ["app", "main"]


def main() -> None:
    """Run the app as the console script does (:func:`lzo_bench.cli.entry.main`: SIGTERM as Ctrl-C, exit
    128 + signal); this module is imported already, so only the signal handling is left to install."""
    from lzo_bench.runtime import memory, signals

    signals.install()
    memory.keep_freed_memory()
    sys.exit(app())
