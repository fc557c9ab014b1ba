"""The ``lzo-bench`` command line: one module per command, each parsing its options and calling
library functions (:mod:`lzo_bench.cli.common` holds the app and the helpers they share).

``lzo_bench.cli:app`` is the typer app; the console script is :func:`lzo_bench.entry.main`, which
handles signals before importing this package.
"""

from __future__ import annotations

import sys

from lzo_bench.cli.common import app

from lzo_bench.cli import train, export, evaluate, profile, reproduce, doctor, theory  # isort: skip

#: the command modules; importing one registers its command on ``app``, in this order (``--help``'s)
COMMANDS = (train, export, evaluate, profile, reproduce, doctor, theory)

__all__ = ["app", "main"]


def main() -> None:
    """Run the app as the console script does (:func:`lzo_bench.entry.main`: SIGTERM as Ctrl-C, exit
    128 + signal); this package is imported already, so only the signal handling is left to install."""
    from lzo_bench import memory, signals

    signals.install()
    memory.keep_freed_memory()
    sys.exit(app())
