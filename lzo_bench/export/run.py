"""After ``lzo-bench export``: the checks of the written file and their report.

ONNX (:func:`check_onnx`): parity with the network in onnxruntime at several ``T`` and, for the
sequence model, latency next to our backend (:mod:`lzo_bench.export.parity`); the step model is
checked bin by bin against the sequence model. NIR (:func:`check_nir`): the parameters read back
(:func:`lzo_bench.export.nir_graph.read_back`) and the graph simulated with NIR's reset next to the
trained network. :func:`plain` makes either report JSON-ready (the console tables are the CLI's).
Formats are named as on the command line: ``onnx``, ``onnx-step``, ``nir``.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from lzo_bench.core.model import SNN
from lzo_bench.export import parity as chk
from lzo_bench.export.nir_graph import read_back
from lzo_bench.export.onnx_model import node_count, sequence_model
from lzo_bench.export.source import ExportSource

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


def check_nir(target: Path, model: SNN, src: ExportSource, samples: int) -> dict[str, Any]:
    """Parameters read back (:func:`~lzo_bench.export.nir_graph.read_back`), and the graph simulated with
    NIR's reset next to the trained network; ``passed`` when both hold."""
    report = read_back(target, src)
    cost = chk.nir_reset_cost(target, model, src, samples)
    if not cost.subtractive_sim_matches:
        report["problems"].append("the NIR graph simulated with lzo-bench's subtractive reset does not reproduce the network")
    return report | {"parity": [], "latency": [], "reset_cost": cost, "passed": not report["problems"]}


def check_onnx(form: str, onnx_model: Any, model: SNN, src: ExportSource, opset: int, samples: int, dtype: str,
               threads: int) -> dict[str, Any]:
    """Parity (and, for ``onnx``, latency) of ``onnx_model`` as written in format ``form``; raises
    :class:`~lzo_bench.export.parity.ProviderFallback` where a session runs on another provider."""
    seq_bytes = (onnx_model if form == "onnx" else sequence_model(src, opset, dtype)).SerializeToString()
    steps_list = sorted({1, 7, src.steps, 3 * src.steps})
    card = {"nodes": node_count(onnx_model), "ir_version": onnx_model.ir_version, "opset": opset, "dtype": dtype}
    if form == "onnx-step":
        rows = [chk.step_parity(onnx_model.SerializeToString(), seq_bytes, src, t, min(samples, 64)) for t in steps_list]
        return {"parity": rows, "latency": [], "passed": all(r.passed for r in rows)} | card
    reference = model if dtype == "float32" else chk.rounded_copy(model, dtype)
    rows = chk.parity(seq_bytes, reference, src, steps_list, samples, float32_model=None if dtype == "float32" else model)
    lat = chk.latency(seq_bytes, model, src, threads=threads)
    import onnxruntime as ort

    return {"parity": rows, "latency": lat, "threads": threads, "passed": all(r.passed for r in rows)} | card | {
        "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}
