"""The export source: what ``lzo-bench export`` takes from a run's checkpoint (the network, its weights, the
data's time step and encoding, how it was trained) and the model card every exported file carries, ONNX
or NIR (:meth:`ExportSource.metadata`); and :class:`ExportError`, raised on a bad export request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lzo_bench import __version__
from lzo_bench.core.model import NetworkSpec
from lzo_bench.training.checkpoint import checkpoint_steps, weights_fingerprint


class ExportError(ValueError):
    """Bad export request (opset, output path); the message names the fix."""


@dataclass(frozen=True)
class ExportSource:
    """What an export needs from a checkpoint."""

    network: NetworkSpec
    weights: list[np.ndarray]  # [fan_in, fan_out] each (a conv layer's [C_out, C_in, K, K]); the last is the readout
    dt_ms: float
    steps: int
    encoding: str
    dataset: str
    training: dict[str, Any]  # the checkpoint's TrainConfig as a dict (method, dist, delta, samples, seed, …)
    epochs: int | None = None  # epochs finished when the checkpoint was saved
    test_acc: float | None = None  # % on the test set after that epoch, from the run's metrics.json
    fingerprint: str = ""  # weights_fingerprint of the checkpoint's weights: which weights the file holds

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], test_acc: float | None = None) -> "ExportSource":
        net = NetworkSpec.from_dict(ckpt["network"])
        n = len(net.layer_sizes) + 1
        weights = [ckpt["state_dict"][f"weights.{i}"].numpy().astype(np.float32) for i in range(n)]
        data = ckpt["dataset"]
        return cls(net, weights, float(data["dt_ms"]), checkpoint_steps(ckpt), data["encoding"], data["name"],
                   dict(ckpt["train"]), ckpt.get("epoch"), test_acc, weights_fingerprint(ckpt["state_dict"]))

    def training_card(self) -> dict[str, str]:
        """How the weights were trained: method, distribution of z, δ, m (LocalZO samples per
        neuron), seed, epochs and the test accuracy the run logged, as the checkpoint records them."""
        t = self.training
        keys = {"method": "method", "dist": "dist", "delta": "delta", "samples": "samples_m", "k": "k", "bth": "bth",
                "lr": "lr", "batch_size": "batch_size", "seed": "seed"}
        card = {f"training_{name}": repr(t[k]) if isinstance(t[k], float) else str(t[k])
                for k, name in keys.items() if t.get(k) is not None}
        return card | {
            "epochs_trained": "not recorded" if self.epochs is None else str(self.epochs),
            "checkpoint_epoch": "not recorded" if self.epochs is None else str(self.epochs),
            "weights_sha256_16": self.fingerprint or "not recorded",
            "test_accuracy_pct": "not recorded" if self.test_acc is None else f"{self.test_acc:.2f}",
        }

    def metadata(self, kind: str) -> dict[str, str]:
        net = self.network
        return {
            "lzo_bench_version": __version__,
            "model": kind,
            "beta": repr(net.beta),
            "beta_readout": repr(net.beta_out),
            "theta": repr(net.theta),
            "reset": "subtractive: u <- u - theta*s[t-1] (not differentiated in training)",
            "readout": "leaky integrator o[t] = beta_r*o[t-1] + (1-beta_r)*(s_L[t] @ W_out)",
            "reduce_over_time": net.reduce,
            "dt_ms": repr(self.dt_ms),
            "time_steps_in_training": str(self.steps),
            "input_encoding": self.encoding,
            "dataset": self.dataset,
            "n_inputs": str(net.n_in),
            "hidden": ",".join(map(str, net.hidden)),
            "conv": "; ".join(f"conv {c.c_in}->{c.c_out} kernel {c.kernel} stride {c.stride} padding {c.padding} on "
                              f"{c.height}x{c.width}" + (f", sum pool {c.pool}" if c.pool > 1 else "")
                              for c in net.conv_shapes()) or "none",
            "input_units": (f"channels-last frames {net.frame[0]}x{net.frame[1]}x{net.frame[2]}: unit (y*W + x)*C + c"
                            if net.conv else "flat"),
            "n_classes": str(net.n_out),
        } | self.training_card()


def exported_fingerprint(path: Path) -> str | None:
    """The ``weights_sha256_16`` an exported ONNX file records, ``""`` for a file of an older lzo-bench that
    recorded none, None where the file cannot be read as ONNX."""
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # onnx raises many types for a file it cannot parse
        return None
    return props.get("weights_sha256_16", "")


def stale_exports(run_dir: Path, ckpt: dict[str, Any], skip: Path | None = None) -> list[str]:
    """One line per exported file in ``run_dir`` older than its checkpoint: an ONNX file whose recorded
    weights (:func:`exported_fingerprint`) are not the checkpoint's, a NIR file written before the
    checkpoint was (NIR files are compared by time)."""
    fingerprint, epoch, lines = weights_fingerprint(ckpt["state_dict"]), ckpt.get("epoch"), []
    ckpt_file = run_dir / "checkpoint.pt"
    for name in ("model.onnx", "model_step.onnx", "model.nir"):
        path = run_dir / name
        if not path.is_file() or (skip is not None and path.resolve() == skip.resolve()):
            continue
        if name.endswith(".onnx"):
            stale = exported_fingerprint(path) not in (fingerprint, None)
        else:
            stale = ckpt_file.is_file() and path.stat().st_mtime < ckpt_file.stat().st_mtime
        if stale:
            lines.append(f"{path} holds older weights than {ckpt_file} (epoch {epoch}); export again to update it")
    return lines


def recorded_test_acc(run_dir: Path, epoch: int | None) -> float | None:
    """Test accuracy (%) that ``run_dir/metrics.json`` logged for ``epoch``; None if it has none."""
    try:
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        return next(float(h["test_acc"]) for h in history if h["epoch"] == epoch)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
