"""SIGTERM handled like Ctrl-C, from the first line of the command line to the last.

:func:`install` makes SIGTERM raise :class:`Terminated` (a ``KeyboardInterrupt`` that remembers its
signal), so every place that keeps what it finished on Ctrl-C does so on SIGTERM too, and a signal
during start-up (imports, option checks, the run folder's first files) ends in one line and exit
128 + signal instead of a default-action death that leaves a stale lock (issue 19, D5). A leaf module:
importing it costs nothing, so the entry point installs it before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run keeps what it finished and says it was interrupted."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated()


def install() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread from here on."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def signum_of(e: BaseException) -> int:
    """The signal behind an interrupt: SIGTERM for :class:`Terminated`, else SIGINT."""
    return int(getattr(e, "signum", signal.SIGINT))


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated` (main thread only, where Python can
    install handlers); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: signals caught by :func:`deferred` and not acted on yet
_caught: list[int] = []

#: the environment variable a test sets to a :func:`pause_point`'s name to hold the process there
PAUSE_ENV = "LZO_BENCH_PAUSE_AT"


def pause_point(name: str) -> None:
    """A test's deterministic moment: with ``$LZO_BENCH_PAUSE_AT`` = ``name``, say ``paused at <name>`` on
    stderr and wait there for a signal (its handler raises out of the wait, or :func:`deferred` records
    it and the wait ends); nothing otherwise."""
    import os
    import sys
    import time

    if os.environ.get(PAUSE_ENV) != name:
        return
    print(f"paused at {name}", file=sys.stderr, flush=True)
    seen = len(_caught)
    while len(_caught) == seen:
        time.sleep(0.01)


@contextlib.contextmanager
def deferred():
    """Within the block Ctrl-C and SIGTERM are recorded, not raised, so what the block writes is written
    whole (``reproduce``'s results: the table files and figures, issue 34, 15); yields the list of the
    signals that came, for the caller to act on after. Main thread only; elsewhere a plain block."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    came: list[int] = []

    def handler(signum, frame):
        came.append(int(signum))
        _caught.append(int(signum))

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield came
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
