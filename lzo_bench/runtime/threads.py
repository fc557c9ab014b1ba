"""CPU threads: the one place that checks a thread count and sets torch's for a block.

Two processes that each use every core of a small machine slow each other 10–40× (OpenMP threads
spin for cores the other holds), so ``train --threads`` and ``export --threads`` let a user give a
run the cores that are free.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch


def max_threads() -> int:
    """The logical CPUs here."""
    return os.cpu_count() or 1


def threads_problem(n: int) -> str | None:
    """Why ``n`` is no thread count for this machine, or ``None``."""
    top = max_threads()
    return None if 1 <= n <= top else f"must lie in [1, {top}], the logical CPUs here (got {n})"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, restored after; ``None`` leaves torch's own."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
