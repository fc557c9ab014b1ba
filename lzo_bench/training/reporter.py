"""The one :class:`Reporter`: the hooks a training run and a reproduce grid call to tell their
progress, each a no-op here (a callback base in Lightning's style). ``Reporter()`` is the reporter
that says nothing; the terminal's implement the hooks they show (``lzo_bench.cli.report.RichReporter``
for ``train``, the reproduce command's grid bars).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lzo_bench.training.run_folder import EpochRecord, RunResult


class Reporter:
    """No-op hooks. :func:`lzo_bench.training.train.train` calls ``start``, then ``batch`` for every
    update and ``epoch`` (and ``warn``) for every finished epoch, then ``stop``;
    :func:`lzo_bench.experiments.grid.run_grid` calls ``grid_progress`` and hands the reporter to
    the trials it trains in its own process (local engine, one job)."""

    def start(self, result: RunResult, n_batches: int) -> None:
        """A run's setup is done: ``result`` so far (a resumed run's history), ``n_batches`` per epoch."""

    def batch(self, epoch: int, index: int, loss: float, acc: float, active_pct: list[float]) -> None:
        """Update ``index`` (from 1) of ``epoch``: its loss, the epoch's accuracy so far and active % per layer."""

    def epoch(self, record: EpochRecord) -> None:
        """An epoch finished and its checkpoint is written."""

    def warn(self, message: str) -> None:
        """Something the user should know about the run (recorded in ``metrics.json`` too)."""

    def stop(self) -> None:
        """The run ended, finished or not."""

    def grid_progress(self, done: int, total: int, out: str) -> None:
        """A grid's trials: ``done`` of ``total`` to train, ``out`` the run folder just finished
        (``""`` at the grid's start)."""
