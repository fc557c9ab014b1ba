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
