"""The ``lzo-bench`` console script: signals handled before the first heavy import (torch, typer).

A Ctrl-C or SIGTERM while the command starts up is one line and exit 128 + signal, never a
``KeyboardInterrupt`` traceback (issue 19, D5); from then on SIGTERM is a Ctrl-C
(:mod:`lzo_bench.runtime.signals`), so train and reproduce keep what they finished on either.
"""

from __future__ import annotations

import signal
import sys

from lzo_bench.runtime import memory, signals


def main() -> None:
    signals.install()
    memory.keep_freed_memory()
    try:
        from lzo_bench.cli import app
    except KeyboardInterrupt as e:
        n = signals.signum_of(e)
        print(f"error: interrupted while starting ({signal.Signals(n).name}); nothing was done", file=sys.stderr)
        sys.exit(128 + n)
    sys.exit(app())
