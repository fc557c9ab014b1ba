"""``lzo-bench doctor``: what works on this machine (:func:`lzo_bench.cli.doctor_checks.run_checks`)."""

from __future__ import annotations

from typing import Annotated

import typer

from lzo_bench.cli.common import app, interruptible, print_json


@app.command()
@interruptible("the checks did not finish")
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False) -> None:
    """What works on this machine and why not where not: torch, the C++ and CUDA ops (with the CUDA
    self-check), GPU, NVML energy and power, RAPL, onnxruntime and its providers, the optional extras."""
    from lzo_bench.cli.doctor_checks import as_json, run_checks
    from lzo_bench.cli.report import console, doctor_table

    checks = run_checks()
    if json_out:
        return print_json(as_json(checks))
    console.print(doctor_table(checks))
