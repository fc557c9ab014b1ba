"""Parity of an exported ONNX model with the PyTorch network, and its latency, in onnxruntime.

CPU: spikes must be identical and logits within ``rtol 1e-4 / atol 1e-5`` at every tested ``T``.
CUDA (only with ``onnxruntime-gpu``): the session runs ``CUDAExecutionProvider`` with TF32 off
and the CPU fallback disabled (``session.disable_cpu_ep_fallback``: a node CUDA cannot run is an
error, not a silent CPU node), and it must report that provider first. Against PyTorch on the same
GPU (float32, no TF32) the two sum in different orders, so parity there is: spike mismatches at
most ``CUDA_SPIKE_TOL`` of the entries, and logits within ``CUDA_RTOL / CUDA_ATOL`` where no spike
differs. Each row records the providers the session used.

Float16 weights: the reference is the PyTorch network with its weights rounded to float16 (the
graph computes in float32), held to the same criteria; each row also reports the spike flips and
the accuracy against the float32 network.

Latency: medians per sample at batch 1 and 256 on the test inputs, onnxruntime vs this package's
own C++ backend (``cpp``; ``cuda`` on a GPU) vs the pure-PyTorch reference, all with the same
thread count (``torch.set_num_threads`` and onnxruntime's ``intra_op_num_threads``, default 1).

NIR: the graph read back from the file runs through nirtorch (:mod:`lzo_bench.export.nir_sim`) twice:
with NIR's reset to zero, and with lzo-bench's subtractive reset, which must reproduce the network
exactly; the first gives the accuracy, prediction agreement and spike counts the reset costs.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lzo_bench.core.model import SNN
from lzo_bench.data import load_dataset
from lzo_bench.export.onnx_model import WEIGHT_DTYPES, initial_step_state
from lzo_bench.export.source import ExportSource
from lzo_bench.ops.backends import BackendName, BackendUnavailable, select_backend
from lzo_bench.runtime.threads import torch_threads

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
    spike_flips_vs_float32: float | None = None  # float16 weights: fraction of spikes that differ from the float32 network
    float32_acc: float | None = None             # float16 weights: the float32 network's accuracy


@dataclass
class LatencyRow:
    provider: str
    batch: int
    threads: int                        # torch.set_num_threads and ORT intra_op_num_threads, both
    ort_ms_per_sample: float
    backend: str                        # this package's own implementation: cpp on the CPU, cuda on a GPU
    backend_ms_per_sample: float | None  # None where it cannot run here (backend_note says why)
    torch_ms_per_sample: float          # the pure-PyTorch reference (lzo_bench.core.lif), eager
    backend_note: str = ""


@dataclass
class NIRResetRow:
    """The NIR graph (reset to zero) next to the trained network (subtractive reset), same inputs."""

    inputs: str
    samples: int
    steps: int
    acc_subtractive: float             # % (nan without labels)
    acc_nir: float
    agreement_pct: float               # samples whose predicted class is unchanged
    spikes_subtractive: list[float]    # per hidden layer, spikes per sample
    spikes_nir: list[float]
    subtractive_sim_matches: bool      # the graph with lzo-bench's reset: spike counts equal, logits within the bound
    max_dlogit: float                  # its largest |logit − the network's logit|
    dlogit_bound: float                # the rounding bound at the largest logit (lzo_bench.core.floatcmp.readout_bound)


class ProviderFallback(RuntimeError):
    pass


def rounded_copy(model: SNN, dtype: str) -> SNN:
    """The network with its weights rounded to ``dtype`` and widened back to float32: what a graph
    with ``dtype`` weights and float32 compute runs."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for w in out.weights:
            w.copy_(torch.from_numpy(w.numpy().astype(WEIGHT_DTYPES[dtype]).astype(np.float32)))
    return out


def session(model_bytes: bytes, provider: str, threads: int | None = None):
    """An onnxruntime session on ``provider`` with ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # idle ORT threads must not spin: they would steal the cores PyTorch is timed on
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads or torch.get_num_threads()
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


def conv_parity_passed(onnx_spikes: list[torch.Tensor], ort_logits: np.ndarray, ref_logits: np.ndarray,
                       x: torch.Tensor, model: SNN) -> bool:
    """A conv network on the CPU: ORT's ``Conv`` and torch's ``conv2d`` add the taps in different orders, so
    a spike may flip where its potential lies within rounding of θ (:func:`lzo_bench.core.floatcmp.network_spikes_agree`);
    the spikes must agree up to that, and where they are all equal the logits within RTOL/ATOL."""
    from lzo_bench.core.floatcmp import network_spikes_agree

    spec = model.spec
    agreement = network_spikes_agree(onnx_spikes, x, list(model.weights)[:-1], spec.beta, spec.theta,
                                     convs=spec.conv_shapes())
    if not agreement.legitimate:
        return False
    keep = agreement.rows_equal.numpy()
    return bool(np.allclose(ort_logits[keep], ref_logits[keep], rtol=RTOL, atol=ATOL, equal_nan=True))


def _flips(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of spike entries that differ between two lists of per-layer spike tensors."""
    return sum(int((x != y).sum()) for x, y in zip(a, b)) / max(sum(x.numel() for x in a), 1)


def parity(
    model_bytes: bytes, torch_model: SNN, src: ExportSource, steps_list: list[int], limit: int = 512,
    providers: list[str] | None = None, float32_model: SNN | None = None,
) -> list[ParityRow]:
    """Each provider and ``T``: the exported model against ``torch_model``; with ``float32_model``
    (float16 weights) also the spike flips and accuracy against it."""
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
            n_hidden = len(src.network.layer_sizes)
            onnx_spikes = [torch.from_numpy(o) for o in outs[1 + n_hidden:]]
            mismatch = _flips(onnx_spikes, [s.cpu() for s in ref.spikes])
            finite = np.isfinite(ref_logits)
            dlogit = float(np.max(np.abs(outs[0][finite] - ref_logits[finite]), initial=0.0))
            ok = parity_passed(provider, mismatch, outs[0], ref_logits)
            if src.network.conv and provider == CPU and not ok:  # ORT's Conv sums in another order than torch's
                ok = conv_parity_passed(onnx_spikes, outs[0], ref_logits, x, net)
            row = ParityRow(provider, steps, x.shape[1], dlogit, mismatch, _accuracy(outs[0], labels),
                            _accuracy(ref_logits, labels), ok, ",".join(sess.get_providers()))
            if float32_model is not None:
                with torch.no_grad():
                    full = float32_model.to(device)(x.to(device))
                row.spike_flips_vs_float32 = _flips(onnx_spikes, [s.cpu() for s in full.spikes])
                row.float32_acc = _accuracy(full.logits.cpu().numpy(), labels)
                float32_model.to("cpu")
            rows.append(row)
        torch_model.to("cpu")
    return rows


def step_parity(step_bytes: bytes, seq_bytes: bytes, src: ExportSource, steps: int, limit: int = 64) -> ParityRow:
    """Feed the step model one bin at a time; compare its spikes and final ``m`` with the sequence model."""
    x, labels, _ = inputs(src, steps, limit)
    step = session(step_bytes, CPU)
    seq_out = session(seq_bytes, CPU).run(None, {"spikes": x.numpy()})
    n_hidden = len(src.network.layer_sizes)
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
            batches: tuple[int, ...] = (1, 256), repeats: int = 15, threads: int = 1) -> list[LatencyRow]:
    """Median ms per sample of one forward on the first ``batch`` test inputs at the training ``T``:
    onnxruntime, this package's backend for the device and the PyTorch reference, ``threads`` each."""
    import onnxruntime as ort

    providers = providers or [p for p in (CPU, CUDA) if p in ort.get_available_providers()]
    rows = []
    with torch_threads(threads):
        for provider in providers:
            sess = session(model_bytes, provider, threads)
            device = "cuda" if provider == CUDA and torch.cuda.is_available() else "cpu"
            name = BackendName.CUDA if device == "cuda" else BackendName.CPP
            try:
                ours, note = select_backend(name, device), ""
            except BackendUnavailable as e:
                ours, note = None, str(e)
            net = torch_model.to(device)
            for b in batches:
                x, _, _ = inputs(src, src.steps, b)
                feed = {"spikes": x.numpy()}
                xd = x.to(device)

                def forward(backend=None):
                    with torch.no_grad():
                        net(xd, backend=backend)
                    if device == "cuda":
                        torch.cuda.synchronize()

                n = x.shape[1]
                rows.append(LatencyRow(
                    provider, n, threads, _median_ms(lambda: sess.run(None, feed), repeats) / n, name.value,
                    None if ours is None else _median_ms(lambda: forward(ours), repeats) / n,
                    _median_ms(forward, repeats) / n, note,
                ))
            torch_model.to("cpu")
    return rows


def nir_reset_cost(path: Path, model: SNN, src: ExportSource, limit: int = 512) -> NIRResetRow:
    """Simulate the NIR file on the test inputs at the training ``T`` (reset to zero, as NIR
    specifies) and compare with ``model`` (subtractive reset)."""
    import nir

    from lzo_bench.core.floatcmp import compare_logits, readout_bound
    from lzo_bench.export.nir_sim import simulate

    graph = nir.read(path)
    x, labels, what = inputs(src, src.steps, limit)
    with torch.no_grad():
        ref = model(x)
    zero = simulate(graph, x, "zero", src.network.reduce)
    sub = simulate(graph, x, "subtract", src.network.reduce)
    bound = readout_bound(ref.spikes[-1], model.weights[-1], model.spec.beta_out, src.network.reduce)
    match = compare_logits(sub.logits, ref.logits, bound, list(zip(sub.counts.values(), ref.counts)))
    n = x.shape[1]
    per_sample = lambda counts: [float(c.sum()) / n for c in counts]  # noqa: E731
    agree = 100.0 * float((zero.logits.argmax(1) == ref.logits.argmax(1)).float().mean())
    return NIRResetRow(what, n, x.shape[0], _accuracy(ref.logits.numpy(), labels), _accuracy(zero.logits.numpy(), labels),
                       agree, per_sample(ref.counts), per_sample(zero.counts.values()), match.agree, match.max_dlogit,
                       match.max_bound)
