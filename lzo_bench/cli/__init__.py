"""The command line: the console script (:mod:`lzo_bench.cli.entry`, signals handled before the heavy
imports), the typer app (:mod:`lzo_bench.cli.typer_app`, :mod:`lzo_bench.cli.common`), one module per
command (train, export, evaluate, profile, reproduce, doctor, theory), the rich terminal output
(:mod:`lzo_bench.cli.report`) and ``doctor``'s checks (:mod:`lzo_bench.cli.doctor_checks`).

``from lzo_bench.cli import app`` (and ``main``) load :mod:`lzo_bench.cli.typer_app` on first use, so that
importing :mod:`lzo_bench.cli.entry` stays light.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("app", "main", "COMMANDS"):
        from importlib import import_module

        return getattr(import_module("lzo_bench.cli.typer_app"), name)
    raise AttributeError(f"module 'lzo_bench.cli' has no attribute {name!r}")
