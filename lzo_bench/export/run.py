"""After ``lzo-bench export``: the checks of the written file and their report.

ONNX (:func:`check_onnx`): parity with the network in onnxruntime at several ``T`` and, for the
sequence model, latency next to our backend (:mod:`lzo_bench.export.parity`); the step model is
checked bin by bin against the sequence model. NIR (:func:`check_nir`): the parameters read back
and the graph simulated with NIR's reset next to the trained network. :func:`print_export_report`
prints either report as tables; :func:`plain` makes it JSON-ready. Formats are named as on the
command line: ``onnx``, ``onnx-step``, ``nir``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lzo_bench.export import graphs as ex
from lzo_bench.export import parity as chk
from lzo_bench.core.model import SNN
from lzo_bench.cli.report import console

#: the file each format is written to inside the run folder when no ``--out`` is given
DEFAULT_EXPORT_NAME = {"onnx": "model.onnx", "onnx-step": "model_step.onnx", "nir": "model.nir"}


def plain(obj: object) -> object:
    """Dataclasses (also inside lists and dicts) as dicts, for JSON."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def check_nir(target: Path, model: SNN, src: ex.ExportSource, samples: int) -> dict[str, Any]:
    """Parameters read back, and the graph simulated with NIR's reset next to the trained network."""
    report = ex.check_nir(target, src)
    cost = chk.nir_reset_cost(target, model, src, samples)
    if not cost.subtractive_sim_matches:
        report["problems"].append("the NIR graph simulated with lzo-bench's subtractive reset does not reproduce the network")
    return report | {"reset_cost": cost, "passed": not report["problems"]}


def check_onnx(form: str, onnx_model: Any, model: SNN, src: ex.ExportSource, opset: int, samples: int, dtype: str,
               threads: int) -> dict[str, Any]:
    """Parity (and, for ``onnx``, latency) of ``onnx_model`` as written in format ``form``; raises
    :class:`~lzo_bench.export.parity.ProviderFallback` where a session runs on another provider."""
    seq_bytes = (onnx_model if form == "onnx" else ex.sequence_model(src, opset, dtype)).SerializeToString()
    steps_list = sorted({1, 7, src.steps, 3 * src.steps})
    card = {"nodes": ex.node_count(onnx_model), "ir_version": onnx_model.ir_version, "opset": opset, "dtype": dtype}
    if form == "onnx-step":
        rows = [chk.step_parity(onnx_model.SerializeToString(), seq_bytes, src, t, min(samples, 64)) for t in steps_list]
        return {"parity": rows, "latency": [], "passed": all(r.passed for r in rows)} | card
    reference = model if dtype == "float32" else chk.rounded_copy(model, dtype)
    rows = chk.parity(seq_bytes, reference, src, steps_list, samples, float32_model=None if dtype == "float32" else model)
    lat = chk.latency(seq_bytes, model, src, threads=threads)
    import onnxruntime as ort

    return {"parity": rows, "latency": lat, "threads": threads, "passed": all(r.passed for r in rows)} | card | {
        "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}


def print_export_report(form: str, report: dict[str, Any]) -> None:
    """The report of :func:`check_nir` or :func:`check_onnx` as tables and lines on the console."""
    fmt = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.2f}"  # noqa: E731
    if form == "nir":
        console.print(f"NIR read back: {len(report['nodes'])} nodes ({', '.join(report['nodes'])}); "
                      + ("parameters and weights match" if report["passed"] else "; ".join(report["problems"])),
                      highlight=False)
        c = report["reset_cost"]
        cost = Table(title=f"NIR reset cost: {c.samples} samples of the {c.inputs}, T = {c.steps}, simulated through nirtorch")
        for col in ("network", "reset", "accuracy %", "spikes / sample per layer"):
            cost.add_column(col, justify="left" if col in ("network", "reset") else "right")
        cost.add_row("lzo-bench (trained)", "subtract θ", fmt(c.acc_subtractive), " / ".join(f"{v:.1f}" for v in c.spikes_subtractive))
        cost.add_row("NIR graph", "to 0", fmt(c.acc_nir), " / ".join(f"{v:.1f}" for v in c.spikes_nir))
        console.print(cost)
        console.print(f"predictions unchanged by the reset: {c.agreement_pct:.2f} %; the same simulation with the "
                      f"subtractive reset {'reproduces' if c.subtractive_sim_matches else 'DIFFERS from'} the network (spike "
                      f"counts, and logits to {c.max_dlogit:.2g} against a rounding bound of {c.dlogit_bound:.2g})",
                      highlight=False)
        return
    f16 = report["dtype"] != "float32"
    table = Table(title=f"ONNX parity ({report['nodes']} nodes, independent of T; opset {report['opset']}, IR {report['ir_version']}"
                        + (f"; {report['dtype']} weights vs the network with weights rounded alike" if f16 else "")
                        + "; Δlogit: max |ORT − torch|, spikes ≠: entries that differ)")
    cols = ["provider", "T", "batch", "Δlogit", "spikes ≠", "ORT acc", "torch acc"]  # short: 80 columns
    cols += ["≠ float32", "Δacc f32"] if f16 else []
    for col in (*cols, "result"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for r in report["parity"]:
        extra = [f"{100 * r.spike_flips_vs_float32:.4f} %", f"{r.ort_acc - r.float32_acc:+.2f}"] if f16 and r.float32_acc is not None else []
        table.add_row(r.provider.replace("ExecutionProvider", ""), str(r.steps), str(r.batch), f"{r.max_abs_dlogit:.2e}", f"{100 * r.spike_mismatch:.4f} %",
                      fmt(r.ort_acc), fmt(r.torch_acc), *extra, "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    console.print(table)
    if report["latency"]:
        lat = Table(title=f"Latency per sample, medians (ms), {report['threads']} thread(s) each (torch.set_num_threads = "
                          "onnxruntime intra_op_num_threads); lzo: our backend (cpp on the CPU, cuda on a GPU); "
                          "ORT × lzo: onnxruntime's time in multiples of ours")
        for col in ("provider", "batch", "thr", "ORT ms", "lzo ms", "torch ms", "ORT × lzo"):
            lat.add_column(col, justify="left" if col == "provider" else "right")
        for r in report["latency"]:  # ORT's time as a multiple of our backend's: no "speed-up" below 1
            ours = "n/a" if r.backend_ms_per_sample is None else f"{r.backend_ms_per_sample:.3f}"
            ratio = "n/a" if r.backend_ms_per_sample is None else f"{r.ort_ms_per_sample / r.backend_ms_per_sample:.2f}×"
            lat.add_row(r.provider.replace("ExecutionProvider", ""), str(r.batch), str(r.threads), f"{r.ort_ms_per_sample:.3f}",
                        ours, f"{r.torch_ms_per_sample:.3f}", ratio)
        console.print(lat)
        for note in sorted({r.backend_note for r in report["latency"] if r.backend_note}):
            console.print(f"lzo backend not timed: {note}", highlight=False)
    import onnxruntime as ort

    used = sorted({r.session_providers for r in report["parity"] if r.session_providers})
    console.print(f"onnxruntime {ort.__version__}: available providers {', '.join(ort.get_available_providers())}; "
                  f"sessions ran on {' / '.join(used) or 'n/a'}", highlight=False)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        console.print("CUDA: not checked — this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu; README).",
                      highlight=False)
