"""``lzo-bench export``: options checked, the file written (:mod:`lzo_bench.export.onnx_model`,
:mod:`lzo_bench.export.nir_graph`), then checked (:mod:`lzo_bench.export.run`) and reported
(:func:`lzo_bench.cli.report.print_export_report`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lzo_bench.cli.common import app, fail, interruptible, out_dir, print_json, typed


class ExportFormat(str, Enum):
    """``--format``: the names :mod:`lzo_bench.export.run` takes."""

    ONNX = "onnx"
    ONNX_STEP = "onnx-step"
    NIR = "nir"


class WeightDtype(str, Enum):
    """``--dtype``: how an ONNX file stores its weights."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


@app.command()
@interruptible("no file was written (each is written whole or not at all)")
def export(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run folder (or its checkpoint.pt) written by `lzo-bench train`.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="onnx: Scan over time; onnx-step: one time bin per call; nir.")] = ExportFormat.ONNX,
    out: Annotated[Optional[str], typer.Option(help="Output file; default <run>/model.onnx, model_step.onnx or model.nir.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (13..21); the file gets the lowest IR version for it.")] = 17,
    dtype: Annotated[WeightDtype, typer.Option(help="ONNX weight storage; float16 weights are cast to float32 in the graph.")] = WeightDtype.FLOAT32,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Check parity in onnxruntime (ONNX) or simulate the graph (NIR) after export.")] = True,
    samples: Annotated[int, typer.Option(help="Test samples for the parity check (≥ 1).")] = 512,
    threads: Annotated[int, typer.Option(help="CPU threads for every latency measurement: torch.set_num_threads and onnxruntime's intra_op_num_threads (≥ 1).")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the parity and latency report as JSON.")] = False,
) -> None:
    """Export a trained network as ONNX (dynamic time and batch) or NIR, and check it."""
    import warnings

    from lzo_bench.cli.report import print_export_report
    from lzo_bench.export.nir_graph import NIR_RESET_NOTE, nir_graph, write_nir
    from lzo_bench.export.onnx_model import sequence_model, step_model, write_onnx
    from lzo_bench.export.parity import ProviderFallback
    from lzo_bench.export.run import DEFAULT_EXPORT_NAME, check_nir, check_onnx, plain
    from lzo_bench.export.source import ExportError, ExportSource, recorded_test_acc, stale_exports
    from lzo_bench.runtime.threads import threads_problem
    from lzo_bench.training.checkpoint import CheckpointError, load_checkpoint

    if samples < 1:
        raise fail(f"--samples must be ≥ 1 (got {samples})")
    problem = threads_problem(threads)  # far beyond the CPUs, onnxruntime's thread pool crashed (100000: a segfault)
    if problem:
        raise fail(f"--threads {problem}")
    default_name = DEFAULT_EXPORT_NAME[format.value]
    suffix = Path(default_name).suffix
    if out and Path(out).suffix != suffix:
        raise fail(f"--out {out} does not match --format {format.value}: name the file *{suffix}")
    if out and Path(out).is_dir():
        raise fail(f"--out {out} is a folder; name a file inside it, e.g. {Path(out) / default_name}")
    if format is ExportFormat.NIR and dtype is not WeightDtype.FLOAT32:
        raise fail(f"--dtype {dtype.value} applies to the ONNX formats; NIR stores float32")
    if format is ExportFormat.NIR and typed(ctx, "opset"):
        raise fail(f"--opset {opset} applies to the ONNX formats; NIR has no opset")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        model, ckpt = load_checkpoint(run)
        src = ExportSource.from_checkpoint(ckpt, recorded_test_acc(run_dir, ckpt.get("epoch")))
    except CheckpointError as e:
        raise fail(str(e)) from None
    target = Path(out) if out else run_dir / default_name
    for line in stale_exports(run_dir, ckpt, skip=target):  # files this export does not replace (issue 34, 7)
        typer.echo(f"warning: {line}", err=True)
    out_dir(target.parent, target, False, "path")  # created only once there is a file to write (issue 19, D10)
    try:
        if format is ExportFormat.NIR:
            graph = nir_graph(src)
            out_dir(target.parent, target, True, "path")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write_nir(graph, target)
            typer.echo(f"warning: {NIR_RESET_NOTE}", err=True)
            report = _checked(lambda: check_nir(target, model, src, samples), target) if check else None
        else:
            build = sequence_model if format is ExportFormat.ONNX else step_model
            onnx_model = build(src, opset, dtype.value)
            out_dir(target.parent, target, True, "path")
            write_onnx(onnx_model, target)
            try:
                report = _checked(lambda: check_onnx(format.value, onnx_model, model, src, opset, samples, dtype.value,
                                                     threads), target) if check else None
            except ProviderFallback as e:  # a session ran on another provider than the one it checks
                raise fail(str(e), 1) from None
    except ExportError as e:
        raise fail(str(e)) from None
    except OSError as e:  # a full disk, say: the atomic write left no partial file
        raise fail(f"cannot write {target} ({e.strerror or e}); free space or choose another --out", 1) from None
    if json_out:
        print_json({"file": str(target), "format": format.value, "check": plain(report)})
    else:
        typer.echo(f"wrote {target}")
        if report is not None:
            print_export_report(format.value, report)
    if report is not None and not report["passed"]:
        raise fail(f"parity check failed; the exported file is kept at {target} for inspection", 1)


def _checked(check, target: Path):
    """``check()``, the written file's check; a Ctrl-C or SIGTERM during it says the file is there unchecked
    (it used to say "no file was written" beside a valid model.onnx, issue 34, 16)."""
    try:
        return check()
    except KeyboardInterrupt as e:
        import signal

        from lzo_bench.runtime.signals import signum_of

        n = signum_of(e)
        raise fail(f"interrupted ({signal.Signals(n).name}) during the check; {target} was written whole but not "
                   "checked: run export again to check it", 128 + n) from None
