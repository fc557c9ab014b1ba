"""Parity of an exported ONNX model with the PyTorch network, and its latency, in onnxruntime.

CPU: spikes must be identical and logits within ``rtol 1e-4 / atol 1e-5`` at every tested ``T``.
CUDA (only with ``onnxruntime-gpu``): the session runs ``CUDAExecutionProvider`` with TF32 off
and the CPU fallback disabled (``session.disable_cpu_ep_fallback``: a node CUDA cannot run is an
error, not a silent CPU node), and it must report that provider first. Against PyTorch on the same
GPU (float32, no TF32) the two sum in different orders, so parity there is: spike mismatches at
most ``CUDA_SPIKE_TOL`` of the entries, and logits within ``CUDA_RTOL / CUDA_ATOL`` where no spike
differs. Each row records the providers the session used. Latency: medians per sample at batch 1
and 256, onnxruntime vs PyTorch eager.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from lzo_bench.data import load_dataset
from lzo_bench.export import ExportSource, initial_step_state
from lzo_bench.model import SNN

RTOL, ATOL = 1e-4, 1e-5
CUDA_SPIKE_TOL, CUDA_RTOL, CUDA_ATOL = 1e-4, 1e-3, 1e-4
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass
class ParityRow:
    provider: str
    steps: int
    batch: int
    max_abs_dlogit: float
    spike_mismatch: float  # fraction of spike entries that differ
    ort_acc: float
    torch_acc: float
    passed: bool
    session_providers: str = ""  # what the session ran on, in order


@dataclass
class LatencyRow:
    provider: str
    batch: int
    ort_ms_per_sample: float
    torch_ms_per_sample: float


class ProviderFallback(RuntimeError):
    pass


def session(model_bytes: bytes, provider: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # idle ORT threads must not spin: they would steal the cores PyTorch is timed on
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = torch.get_num_threads()
    providers: list = [provider]
    if provider == CUDA:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = [(CUDA, {"use_tf32": "0"})]
    sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=providers)
    if sess.get_providers()[0] != provider:
        raise ProviderFallback(f"onnxruntime fell back to {sess.get_providers()[0]} instead of {provider}")
    return sess


def inputs(src: ExportSource, steps: int, limit: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(x [T, B, n_in], labels or None, source)``: the run's test set when it loads, else
    synthetic Bernoulli spikes at 2 % per (step, input)."""
    try:
        _, test = load_dataset(src.dataset, steps)
        n = min(limit, len(test))
        return test.dense(slice(0, n)).float().transpose(0, 1).contiguous(), test.labels[:n], f"{src.dataset} test set"
    except (ValueError, FileNotFoundError, OSError):
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(steps, limit, src.network.n_in, generator=g) < 0.02).float()
        return x, None, "synthetic spikes (2 %)"


def _accuracy(logits: np.ndarray, labels: torch.Tensor | None) -> float:
    if labels is None:
        return float("nan")
    return 100.0 * float((logits.argmax(1) == labels.numpy()).mean())


def parity_passed(provider: str, spike_mismatch: float, ort_logits: np.ndarray, ref_logits: np.ndarray) -> bool:
    """CPU: identical spikes and logits within RTOL/ATOL. CUDA: at most CUDA_SPIKE_TOL of the spikes
    differ (a different summation order flips the rare potential within rounding of θ), and where
    none does the logits agree within CUDA_RTOL/CUDA_ATOL."""
    if provider == CPU:
        return spike_mismatch == 0 and bool(np.allclose(ort_logits, ref_logits, rtol=RTOL, atol=ATOL, equal_nan=True))
    if spike_mismatch > CUDA_SPIKE_TOL:
        return False
    return spike_mismatch > 0 or bool(np.allclose(ort_logits, ref_logits, rtol=CUDA_RTOL, atol=CUDA_ATOL, equal_nan=True))


def parity(
    model_bytes: bytes, torch_model: SNN, src: ExportSource, steps_list: list[int], limit: int = 512,
    providers: list[str] | None = None,
) -> list[ParityRow]:
    import onnxruntime as ort

    providers = providers or [p for p in (CPU, CUDA) if p in ort.get_available_providers()]
    rows = []
    for provider in providers:
        sess = session(model_bytes, provider)
        device = "cuda" if provider == CUDA and torch.cuda.is_available() else "cpu"
        net = torch_model.to(device)
        for steps in steps_list:
            x, labels, _ = inputs(src, steps, limit)
            outs = sess.run(None, {"spikes": x.numpy()})
            with torch.no_grad():
                ref = net(x.to(device))
            ref_logits = ref.logits.cpu().numpy()
            n_hidden = len(src.network.hidden)
            onnx_spikes = outs[1 + n_hidden:]
            diff = sum(int((torch.from_numpy(o) != s.cpu()).sum()) for o, s in zip(onnx_spikes, ref.spikes))
            total = sum(s.numel() for s in ref.spikes)
            finite = np.isfinite(ref_logits)
            dlogit = float(np.max(np.abs(outs[0][finite] - ref_logits[finite]), initial=0.0))
            ok = parity_passed(provider, diff / total, outs[0], ref_logits)
            rows.append(ParityRow(provider, steps, x.shape[1], dlogit, diff / total,
                                  _accuracy(outs[0], labels), _accuracy(ref_logits, labels), ok,
                                  ",".join(sess.get_providers())))
        torch_model.to("cpu")
    return rows


def step_parity(step_bytes: bytes, seq_bytes: bytes, src: ExportSource, steps: int, limit: int = 64) -> ParityRow:
    """Feed the step model one bin at a time; compare its spikes and final ``m`` with the sequence model."""
    x, labels, _ = inputs(src, steps, limit)
    step = session(step_bytes, CPU)
    seq_out = session(seq_bytes, CPU).run(None, {"spikes": x.numpy()})
    n_hidden = len(src.network.hidden)
    state = initial_step_state(src, x.shape[1])
    diff = total = 0
    names = [o.name for o in step.get_outputs()]
    for t in range(x.shape[0]):
        out = dict(zip(names, step.run(None, {"x_t": x[t].numpy(), **state})))
        state = {k: out[f"next_{k}"] for k in state}
        for l in range(n_hidden):
            diff += int((out[f"spikes_{l}"] != seq_out[1 + n_hidden + l][t]).sum())
            total += out[f"spikes_{l}"].size
    dlogit = float(np.max(np.abs(state["m"] - seq_out[0]), initial=0.0)) if x.shape[0] else 0.0
    ok = diff == 0 and bool(np.allclose(state["m"], seq_out[0], rtol=RTOL, atol=ATOL, equal_nan=True))
    return ParityRow(f"{CPU} (step)", steps, x.shape[1], dlogit, diff / max(total, 1),
                     _accuracy(state["m"], labels), _accuracy(seq_out[0], labels), ok, ",".join(step.get_providers()))


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def latency(model_bytes: bytes, torch_model: SNN, src: ExportSource, providers: list[str] | None = None,
            batches: tuple[int, ...] = (1, 256), repeats: int = 15) -> list[LatencyRow]:
    import onnxruntime as ort

    providers = providers or [p for p in (CPU, CUDA) if p in ort.get_available_providers()]
    rows = []
    g = torch.Generator().manual_seed(1)
    for provider in providers:
        sess = session(model_bytes, provider)
        device = "cuda" if provider == CUDA and torch.cuda.is_available() else "cpu"
        net = torch_model.to(device)
        for b in batches:
            x = (torch.rand(src.steps, b, src.network.n_in, generator=g) < 0.02).float()
            feed = {"spikes": x.numpy()}
            xd = x.to(device)

            def torch_run():
                with torch.no_grad():
                    net(xd)
                if device == "cuda":
                    torch.cuda.synchronize()

            rows.append(LatencyRow(provider, b, _median_ms(lambda: sess.run(None, feed), repeats) / b,
                                   _median_ms(torch_run, repeats) / b))
        torch_model.to("cpu")
    return rows
