"""The peers harness: one full training update of the same network, weights and batch in every
contender (:mod:`lzo_bench.measure.peer_models`), interleaved and timed; one row dict per contender.
``benchmarks/peers.py`` is its command line, ``lzo-bench profile --peers`` its other user.

Workload (``--shape nmnist``, the default): 1156 inputs → 200 LIF → 200 LIF → 10-unit leaky
readout, T = 300, B = 256, β = exp(−0.1) for the hidden layers and the readout, θ = 1,
subtractive reset (not differentiated), no biases; logits = max_t o[t]; loss = NLL(log_softmax)
plus SparseGrad's spike-count regulariser on both hidden layers (f_up = 1). ``--shape shd``:
700 inputs, T = 500, β = exp(−0.2), readout β = exp(−0.1), 20 classes, Σ_t instead of max_t,
f_up = 10. Input: Bernoulli spikes (1.2 % per (step, input) for nmnist, 1 % for shd), dense
float32 ``[T, B, n_in]``, random labels, drawn once from a fixed seed. Weights: one draw of
N(0, g·(1−β)/√fan_in) with the gain g calibrated so hidden layer 1 fires at 1 % per (step,
neuron) on that input (:func:`lzo_bench.measure.workloads.calibrate_gain`), copied into every library.

One update = forward incl. loss, ``zero_grad(set_to_none=True)`` + backward, Adam(lr=2e-4) step.
Every contender trains its own copy of the same initial weights on the same batch. After
``--warmup`` rounds, each of ``--repeats`` rounds runs every contender once, in an order that
rotates by one per round; reported are medians and interquartile ranges of the wall time per
phase (``time.perf_counter``) and the CPU time of the whole update (``time.process_time``, all
threads of the process). ``--threads 1,2`` runs one full pass (fresh contenders, own warm-up) per
thread count in the same process, setting ``torch.set_num_threads`` between passes.

``spikes_vs_ours`` is max over (b, j) of |Σ_t s[t,b,j] − ours| for hidden layer 1 at the first
update (ours = the pure-PyTorch reference forward with the initial weights); 0 means the
forward is identical (``spikes_vs_ours_l2`` the same for layer 2; ``None``, as ``rate_l2``, for a
network with one hidden layer).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from lzo_bench.measure.peer_models import (
    CONV_PEERS,
    FORWARD_NOTES,
    PEER_CONV_FACTORIES,
    PEER_FACTORIES,
    PEERS,
    REFERENCE,
    ForwardLoss,
    PeerMissing,
    our_update_factory,
)
from lzo_bench.measure.stats import median_iqr
from lzo_bench.measure.timing import PhaseClock
from lzo_bench.measure.timing import timed_update as phase_timed_update
from lzo_bench.measure.workloads import WORKLOADS, Workload
from lzo_bench.runtime.memory import saved_bytes

LR = 2e-4
#: the name suffix of our rows that take the dense tensor when ``--input both`` times both ways
DENSE_SUFFIX = "[dense input]"


# --------------------------------------------------------------------------- workload


#: the workloads peers.py runs: the paper's N-MNIST and SHD networks (lzo_bench.measure.workloads.Workload)
SHAPES = {name: WORKLOADS[name] for name in ("nmnist", "shd")}


def make_inputs(shape: Workload, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bernoulli input spikes ``x [T, B, n_in]`` (float32) and random labels ``y [B]``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape.steps, shape.batch, shape.n_in, generator=g) < shape.synthetic_rate).float()
    y = torch.randint(shape.n_out, (shape.batch,), generator=g)
    return x, y


def initial_weights(shape: Workload, x: torch.Tensor) -> tuple[list[torch.Tensor], float, float]:
    """``([W1 [n_in,200], W2 [200,200], W_out [200,C]], gain, layer-1 rate)``, calibrated on ``x``."""
    from lzo_bench.core.model import SNN
    from lzo_bench.measure.workloads import calibrate_deeper_layers, calibrate_gain

    gain, rate = calibrate_gain(shape.network(), x)
    model = SNN(shape.network("normal", gain), torch.Generator().manual_seed(0))
    if shape.conv:  # every conv layer at the target rate, not only the first (calibrate_deeper_layers)
        calibrate_deeper_layers(model, x)
    return [w.detach().clone() for w in model.weights], gain, rate


@torch.no_grad()
def reference_spikes(shape: Workload, weights: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Hidden-layer spikes of our pure-PyTorch reference forward (``lzo_bench.core.lif``)."""
    from lzo_bench.core.model import SNN

    model = SNN(shape.network())
    model.weights.load_state_dict({str(i): w for i, w in enumerate(weights)})
    return [s.detach() for s in model(x).spikes]


# --------------------------------------------------------------------------- timing


@dataclass
class Contender:
    name: str
    library: str
    version: str
    detail: str
    module: nn.Module
    forward_loss: ForwardLoss
    optimizer: torch.optim.Optimizer
    updates: int = 0
    fwd: list[float] = field(default_factory=list)
    bwd: list[float] = field(default_factory=list)
    opt: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first_spikes: list[torch.Tensor] | None = None
    saved_mb: float | None = None  # what autograd keeps for the backward, measured at the first (untimed) update
    input: str = "dense"  # how the contender takes the batch: the dense tensor, or our events made outside the update


def build_contender(name: str, shape: Workload, weights: list[torch.Tensor], backend: str = "auto",
                    input_mode: str = "events") -> Contender:
    """The contender called ``name``; raises :class:`PeerMissing` for a peer not installed."""
    if name.startswith("lzo "):
        from lzo_bench import __version__

        module, fl, detail = our_update_factory(name.split(" ", 1)[1], shape, weights, backend, input_mode=input_mode)
        taken = input_mode
        library, version = "lzo-bench", __version__
    else:
        factories = PEER_CONV_FACTORIES if shape.conv else PEER_FACTORIES
        if name not in factories:
            raise PeerMissing(f"{name} has no conv network here (--arch conv runs {', '.join(CONV_PEERS)})")
        dist, factory = factories[name]
        module, fl, detail = factory(shape, weights)
        library, version = dist, importlib.metadata.version(dist)
        taken = "dense"
    opt = torch.optim.Adam(module.parameters(), lr=LR)
    return Contender(name, library, version, detail, module, fl, opt, input=taken)


CPU_CLOCK = PhaseClock(torch.device("cpu"))  # the peers run on the CPU: perf_counter phase edges


def timed_update(c: Contender, x: torch.Tensor, y: torch.Tensor, record: bool) -> None:
    """One update of ``c``: its phases on :data:`CPU_CLOCK`, its process CPU time, the first update's spikes
    and what its forward saves for the backward (that update, under the saving hooks, is never recorded)."""
    measure = c.saved_mb is None
    record = record and not measure

    def forward():
        if measure:
            (loss, spikes), saved = saved_bytes(lambda: c.forward_loss(x, y, c.updates))
            c.saved_mb = saved / 2**20
        else:
            loss, spikes = c.forward_loss(x, y, c.updates)
        return spikes, loss

    c0 = time.process_time()
    spikes, t = phase_timed_update(CPU_CLOCK, forward, c.optimizer)
    c1 = time.process_time()
    if c.first_spikes is None:
        c.first_spikes = [s.detach() for s in spikes()]
    c.updates += 1
    if record:
        c.fwd.append(t.fwd_ms)
        c.bwd.append(t.bwd_ms)
        c.opt.append(t.opt_ms)
        c.total.append(t.total_ms)
        c.cpu.append(1e3 * (c1 - c0))



def run_contenders(names: list[str], x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor], shape: Workload,
                   repeats: int = 7, warmup: int = 2, backend: str = "auto", threads: int | None = None,
                   ref_spikes: list[torch.Tensor] | None = None,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                   input_mode: str = "events") -> list[dict[str, Any]]:
    """Time ``names`` interleaved on one batch; one row dict per contender that ran.

    A peer that is not installed, or fails, is skipped with one logged line; ``shape.steps`` and
    ``shape.batch`` are taken from ``x``. ``input_mode``: how our rows take the batch (see
    :func:`our_update_factory`); the peers always take the dense tensor.
    """
    if threads:
        torch.set_num_threads(threads)
    shape = dataclasses.replace(shape, steps=x.shape[0], batch=x.shape[1])
    if ref_spikes is None:
        ref_spikes = reference_spikes(shape, weights, x)
    contenders: list[Contender] = []
    modes = ("events", "dense") if input_mode == "both" else (input_mode,)
    for name in names:
        try:
            for mode in modes if name.startswith("lzo ") else ("dense",):
                c = build_contender(name, shape, weights, backend, mode)
                if input_mode == "both" and mode == "dense" and name.startswith("lzo "):
                    c.name = f"{name} {DENSE_SUFFIX}"
                contenders.append(c)
        except PeerMissing as e:
            log(f"skipped {name}: {e}")
        except Exception as e:
            if name.startswith("lzo "):
                raise
            log(f"skipped {name}: failed to build ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    failed: set[str] = set()
    for rep in range(warmup + repeats):
        k = rep % max(1, len(contenders))
        for c in contenders[k:] + contenders[:k]:
            if c.name in failed:
                continue
            try:
                timed_update(c, x, y, record=rep >= warmup)
            except Exception as e:
                if c.name.startswith("lzo "):
                    raise
                failed.add(c.name)
                log(f"skipped {c.name}: its update failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            gc.collect()
    rows = []
    for c in contenders:
        if c.name in failed:
            continue
        fwd, fwd_iqr = median_iqr(c.fwd)
        bwd, bwd_iqr = median_iqr(c.bwd)
        opt, opt_iqr = median_iqr(c.opt)
        tot, tot_iqr = median_iqr(c.total)
        cpu, cpu_iqr = median_iqr(c.cpu)
        # hidden layers 1 and 2; a network with one hidden layer (digits' conv network) has no layer 2
        s1, s2 = c.first_spikes[0], (c.first_spikes[1] if len(c.first_spikes) > 1 else None)
        d1 = float((s1.sum(0) - ref_spikes[0].sum(0)).abs().max())
        d2 = None if s2 is None else float((s2.sum(0) - ref_spikes[1].sum(0)).abs().max())
        rows.append({
            "name": c.name, "library": c.library, "version": c.version, "threads": torch.get_num_threads(),
            "fwd_ms": fwd, "bwd_ms": bwd, "opt_ms": opt, "total_ms": tot, "cpu_ms": cpu,
            "fwd_iqr_ms": fwd_iqr, "bwd_iqr_ms": bwd_iqr, "opt_iqr_ms": opt_iqr, "total_iqr_ms": tot_iqr,
            "cpu_iqr_ms": cpu_iqr, "saved_mb": c.saved_mb,
            "rate_l1": float(s1.mean()), "rate_l2": None if s2 is None else float(s2.mean()),
            "spikes_vs_ours": d1, "spikes_vs_ours_l2": d2,
            "spike_entries_differing_l1": int((s1 != ref_spikes[0]).sum()),
            "detail": c.detail, "forward_note": FORWARD_NOTES.get(c.name, "ours"),
            "input": c.input,
            "repeats": len(c.total),
        })
    ref = next((r for r in rows if r["name"] == REFERENCE), None)
    for r in rows:
        # total_ms / localzo's total_ms: how many times slower than localzo this row is, which is
        # also localzo's speedup over this row; the same for the backward alone
        r["x_vs_localzo"] = r["total_ms"] / ref["total_ms"] if ref else None
        r["bwd_x_vs_localzo"] = r["bwd_ms"] / ref["bwd_ms"] if ref else None
        r["cpu_x_vs_localzo"] = r["cpu_ms"] / ref["cpu_ms"] if ref else None
    return rows


def peer_rows(x: torch.Tensor, y: torch.Tensor, init_weights: list[torch.Tensor], shape: Workload | str = "nmnist",
              repeats: int = 7, warmup: int = 2, names: tuple[str, ...] = PEERS, **kw) -> list[dict[str, Any]]:
    """Rows for the peer libraries only, for another module's table (``lzo-bench profile --peers``).

    ``x [T, B, n_in]`` float32 spikes, ``y [B]`` labels, ``init_weights`` ``[W1, W2, W_out]`` as
    ``[fan_in, fan_out]`` (``[w.detach() for w in SNN.weights]``). Peers not installed are left
    out (one line each on stderr); ``x_vs_localzo`` is ``None`` unless ``"lzo localzo"`` is in
    ``names``. Keyword arguments go to :func:`run_contenders` (``threads``, ``log``, …).
    """
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    weights = [w.detach().to("cpu", torch.float32) for w in init_weights]
    return run_contenders(list(names), x.detach().to("cpu", torch.float32), y.cpu(), weights, shape,
                          repeats=repeats, warmup=warmup, **kw)


def machine_info() -> dict[str, Any]:
    from lzo_bench.runtime.devices import cpu_facts

    return cpu_facts() | {"python": platform.python_version(), "torch": torch.__version__,
                          "platform": platform.platform()}
