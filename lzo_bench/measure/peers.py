"""One full training update of the paper's network in snnTorch, SpikingJelly, Norse and lzo-bench.

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

Contenders and how their forward relates to ours (the ``lzo`` reference,
``u[t] = β·u[t−1] + I[t] − θ·s[t−1]``, ``s[t] = H(u[t] − θ)``, reset detached):

* ``snntorch``: ``nn.Linear`` + ``snntorch.Leaky`` per step, as in its tutorials;
  ``reset_mechanism="subtract"`` with the default ``reset_delay=True`` is exactly our equation
  (the reset is computed from the previous membrane and detached); surrogate ``atan``. Readout:
  ``Leaky(beta_out, reset_mechanism="none")`` fed with ``(1−β_r)·W_out s``.
* ``spikingjelly``: ``layer.Linear`` over all T·B rows + ``neuron.LIFNode`` multi-step
  (``step_mode='m'``, ``decay_input=False``, ``v_reset=None``, ``detach_reset=True``,
  ``tau = 1/(1−β)``, surrogate ``ATan``). SpikingJelly ≥ 2.0 has no ``backend=`` argument any
  more; on the CPU it runs its registered CPU op (a Python loop with a hand-written backward).
  Its forward cannot equal ours: it resets *before* the next decay, ``v = h − θ·s`` then
  ``h[t+1] = v − v/τ + I``, so a spike takes ``β·θ`` off the next potential, not ``θ`` (and
  ``v − v/τ`` rounds differently from ``β·v``). Readout: ``NonSpikingLIFNode(tau=1/(1−β_r))``.
* ``norse``: ``nn.Linear`` over all T·B rows + ``LIFBoxCell`` in a per-step loop (Norse 1.1 has
  no time-looping ``LIFBox`` module). Its Euler step ``v += dt·τ⁻¹·(I − v)`` with ``dt = 1``,
  ``τ⁻¹ = 1 − β`` is ``β·v + (1−β)·I``, so its weights are ours divided by ``(1 − β)``. Norse
  supports subtractive reset (``reset_subtract``) but differentiates it; we pass an equivalent
  ``ResetMethod`` that detaches the spike. Like SpikingJelly it resets before the decay
  (``β·θ`` taken off), so its forward cannot equal ours either. Surrogate ``super`` (SuperSpike,
  α = 100). Readout: ``LIBoxCell`` (τ⁻¹ = 1 − β_r, dt = 1), exactly our readout form.
* ``lzo localzo`` / ``lzo sparsegrad`` / ``lzo surrogate``: :class:`lzo_bench.core.model.SNN` with
  the backend ``select_backend(--backend, "cpu", spec)`` picks (``auto``: the C++ ops if they
  build, else the pure-PyTorch reference), gate ``normal``, δ = 0.05.

``spikes_vs_ours`` is max over (b, j) of |Σ_t s[t,b,j] − ours| for hidden layer 1 at the first
update (ours = the pure-PyTorch reference forward with the initial weights); 0 means the
forward is identical (``spikes_vs_ours_l2`` the same for layer 2).

    python benchmarks/peers.py                                   # full size, all contenders (lzo_bench.measure.peers.main)
    python benchmarks/peers.py --steps 20 --batch 8 --repeats 2 --warmup 1 --threads 1  # smoke
    python benchmarks/peers.py --only "snntorch,lzo localzo" --json

Peers not installed are skipped with a line naming ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.metadata
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from lzo_bench.runtime.memory import saved_bytes
from lzo_bench.measure.stats import median_iqr
from lzo_bench.measure.timing import PhaseClock
from lzo_bench.measure.workloads import CONV_WORKLOAD, WORKLOADS, Workload

LR = 2e-4
DELTA = 0.05
TARGET_RATE = 0.01  # hidden-layer-1 spikes per (step, neuron) the gain is calibrated to
INSTALL_HINT = 'pip install -e ".[bench]"'
OUR_METHODS = ("localzo", "sparsegrad", "surrogate")
PEERS = ("snntorch", "spikingjelly", "norse")
ALL_NAMES = (*(f"lzo {m}" for m in OUR_METHODS), *PEERS)
REFERENCE = "lzo localzo"
#: the name suffix of our rows that take the dense tensor when ``--input both`` times both ways
DENSE_SUFFIX = "[dense input]"


# --------------------------------------------------------------------------- workload


#: the workloads peers.py runs: the paper's N-MNIST and SHD networks (lzo_bench.measure.workloads.Workload)
SHAPES = {name: WORKLOADS[name] for name in ("nmnist", "shd")}
#: ``--arch conv``: the conv network on N-MNIST's frames (issue 22); snnTorch and SpikingJelly run it
CONV_PEERS = ("snntorch", "spikingjelly")


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


# --------------------------------------------------------------------------- loss pieces


def peer_loss(o: torch.Tensor, spikes: list[torch.Tensor], y: torch.Tensor, shape: Workload) -> torch.Tensor:
    """Loss of a peer from its readout trace ``o [T, B, C]`` and hidden spikes ``[T, B, N]``."""
    from lzo_bench.core.model import SpikeRegularizer

    logits = o.amax(0) if shape.reduce == "max" else o.sum(0)
    return F.nll_loss(F.log_softmax(logits, dim=1), y) + SpikeRegularizer(f_up=shape.f_up)([s.sum(0) for s in spikes])


def _our_input(x: torch.Tensor, backend):
    """The batch as our model takes it, converted once outside the timed update: events for the
    event-driven backend (as the training loader hands them), the dense tensor otherwise."""
    from lzo_bench.ops.event_network import as_events

    return as_events(x) if backend.network is not None else x


def _our_spikes(out) -> list[torch.Tensor]:
    """Dense hidden spikes ``[T, B, N]`` of our forward, read only at the first update (after its
    timing): ``out.spikes`` may build them from events, which the update itself never does."""
    return [s.detach() for s in out.spikes]


# --------------------------------------------------------------------------- contenders

#: ``forward_loss(x, y, update) -> (loss, spikes)``; ``spikes()`` gives the hidden layers'
#: ``[T, B, N]`` spikes and is called only once, after the first update's timing
ForwardLoss = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, Callable[[], list[torch.Tensor]]]]


class PeerMissing(RuntimeError):
    """A peer library is not installed (or does not import); the message is one line."""


def _import(module: str, dist: str) -> tuple[Any, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # ImportError, or an incompatible install failing at import
        raise PeerMissing(f"{dist} is not installed or does not import ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); install the peers with: {INSTALL_HINT}") from None
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(mod, "__version__", "?")
    return mod, version


def _linear(w: torch.Tensor, cls: type[nn.Linear] = nn.Linear, scale: float = 1.0, **kw) -> nn.Linear:
    """``nn.Linear`` (or a subclass) without bias holding ``x @ (scale·W)`` for ``W [fan_in, fan_out]``."""
    lin = cls(w.shape[0], w.shape[1], bias=False, **kw)
    with torch.no_grad():
        lin.weight.copy_((w * scale).t())
    return lin


def our_update_factory(method: str, shape: Workload, weights: list[torch.Tensor], backend: str = "auto",
                       seed: int = 0, input_mode: str = "events") -> tuple[nn.Module, ForwardLoss, str]:
    """Our model for ``method`` loaded with ``weights``: ``(model, forward_loss, backend line)``.

    ``forward_loss(x, y, update)`` returns ``(loss, spikes)`` with ``spikes()`` the list of hidden
    spikes. ``input_mode`` ``"events"``: each batch converted to events once, outside the timed update
    (as the training loader hands them); ``"dense"``: the dense float tensor every peer gets, converted
    inside the update.
    """
    from lzo_bench.ops.backends import select_backend
    from lzo_bench.core.gates import GateSpec
    from lzo_bench.core.model import SNN, SpikeRegularizer, classification_loss
    from lzo_bench.core.rng import DrawKey

    spec = GateSpec.build(method, "normal", DELTA)
    be = select_backend(backend, "cpu", spec)
    model = SNN(shape.network())
    model.weights.load_state_dict({str(i): w.clone() for i, w in enumerate(weights)})
    reg = SpikeRegularizer(f_up=shape.f_up)
    inputs: dict[int, Any] = {}  # id(x) -> (x, converted input): convert each batch once

    def forward_loss(x: torch.Tensor, y: torch.Tensor, update: int):
        if input_mode == "events" and id(x) not in inputs:
            inputs.clear()
            inputs[id(x)] = (x, _our_input(x, be))
        out = model(inputs[id(x)][1] if input_mode == "events" else x, spec, DrawKey(seed, update), be)
        return classification_loss(out.logits, y) + reg(out.counts), lambda: _our_spikes(out)

    return model, forward_loss, be.describe()


def _module_forward_loss(net: nn.Module, shape: Workload) -> ForwardLoss:
    """``forward_loss`` of a peer module whose forward returns ``(o [T, B, C], [spikes per layer])``."""
    def forward_loss(x, y, update):
        o, spikes = net(x)
        return peer_loss(o, spikes, y, shape), lambda: spikes

    return forward_loss


def snntorch_factory(shape: Workload, weights: list[torch.Tensor]) -> tuple[nn.Module, ForwardLoss, str]:
    snn, _ = _import("snntorch", "snntorch")
    from snntorch import surrogate

    class Net(nn.Module):
        # the tutorials' form: per step, nn.Linear then Leaky, membranes passed explicitly
        def __init__(self):
            super().__init__()
            w1, w2, wo = weights
            self.fc1, self.fc2, self.fc_out = _linear(w1), _linear(w2), _linear(wo)
            lif = dict(beta=shape.beta, threshold=shape.theta, spike_grad=surrogate.atan(),
                       reset_mechanism="subtract", reset_delay=True)
            self.lif1, self.lif2 = snn.Leaky(**lif), snn.Leaky(**lif)
            self.readout = snn.Leaky(beta=shape.beta_out, reset_mechanism="none")
            self.c_out = 1.0 - shape.beta_out

        def forward(self, x):
            mem1, mem2, mem3 = self.lif1.reset_mem(), self.lif2.reset_mem(), self.readout.reset_mem()
            s1_rec, s2_rec, o_rec = [], [], []
            for x_t in x.unbind(0):
                s1, mem1 = self.lif1(self.fc1(x_t), mem1)
                s2, mem2 = self.lif2(self.fc2(s1), mem2)
                _, mem3 = self.readout(self.c_out * self.fc_out(s2), mem3)
                s1_rec.append(s1)
                s2_rec.append(s2)
                o_rec.append(mem3)
            return torch.stack(o_rec), [torch.stack(s1_rec), torch.stack(s2_rec)]

    net = Net()

    return net, _module_forward_loss(net, shape), "nn.Linear + Leaky per step (tutorial loop), reset_delay=True, surrogate atan"


def spikingjelly_factory(shape: Workload, weights: list[torch.Tensor]) -> tuple[nn.Module, ForwardLoss, str]:
    _import("spikingjelly", "spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    w1, w2, wo = weights
    node = dict(tau=1.0 / (1.0 - shape.beta), decay_input=False, v_threshold=shape.theta, v_reset=None,
                surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
    body = nn.Sequential(
        _linear(w1, layer.Linear, step_mode="m"), neuron.LIFNode(**node),
        _linear(w2, layer.Linear, step_mode="m"), neuron.LIFNode(**node),
        _linear(wo, layer.Linear, step_mode="m"),
    )
    readout = neuron.NonSpikingLIFNode(tau=1.0 / (1.0 - shape.beta_out))  # v += (x − v)/τ
    net = nn.Sequential(body, readout)

    def forward_loss(x, y, update):
        functional.reset_net(net)
        s1 = body[1](body[0](x))
        s2 = body[3](body[2](s1))
        o = torch.stack(readout(body[4](s2)))  # decode=None: the list of v[t]
        return peer_loss(o, [s1, s2], y, shape), lambda: [s1, s2]

    return net, forward_loss, ("layer.Linear over T*B rows + LIFNode step_mode='m' (CPU op), surrogate ATan; "
                               "resets before the decay (takes beta*theta off)")


def _detached_subtract(z: torch.Tensor, v: torch.Tensor, reset: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
    """Norse's ``reset_subtract`` with the spike detached (our reset is not differentiated)."""
    return v - z.detach() * th


def norse_factory(shape: Workload, weights: list[torch.Tensor]) -> tuple[nn.Module, ForwardLoss, str]:
    _import("norse.torch", "norse")
    from norse.torch import LIBoxCell, LIBoxParameters, LIFBoxCell, LIFBoxParameters

    w1, w2, wo = weights
    a = 1.0 - shape.beta
    p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(a), v_leak=torch.as_tensor(0.0),
                         v_th=torch.as_tensor(shape.theta), v_reset=torch.as_tensor(0.0),
                         method="super", alpha=torch.as_tensor(100.0), reset_method=_detached_subtract)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            # v += dt·τ⁻¹·(I − v) = β·v + (1−β)·I: scale by 1/(1−β) so (1−β)·I is our current
            self.fc1, self.fc2 = _linear(w1, scale=1.0 / a), _linear(w2, scale=1.0 / a)
            self.fc_out = _linear(wo)
            self.lif1, self.lif2 = LIFBoxCell(p, dt=1.0), LIFBoxCell(p, dt=1.0)
            self.readout = LIBoxCell(LIBoxParameters(tau_mem_inv=torch.as_tensor(1.0 - shape.beta_out),
                                                     v_leak=torch.as_tensor(0.0)), dt=1.0)

        def forward(self, x):
            c1 = self.fc1(x)  # over all T·B rows
            st1 = st2 = st3 = None
            s1_rec, s2_rec, o_rec = [], [], []
            for c_t in c1.unbind(0):
                s1, st1 = self.lif1(c_t, st1)
                s2, st2 = self.lif2(self.fc2(s1), st2)
                o, st3 = self.readout(self.fc_out(s2), st3)
                s1_rec.append(s1)
                s2_rec.append(s2)
                o_rec.append(o)
            return torch.stack(o_rec), [torch.stack(s1_rec), torch.stack(s2_rec)]

    net = Net()

    return net, _module_forward_loss(net, shape), ("nn.Linear + LIFBoxCell per step, dt=1, tau_mem_inv=1-beta, W/(1-beta), "
                               "detached subtract reset, surrogate super; resets before the decay (beta*theta)")


def _conv_parts(shape: Workload, weights: list[torch.Tensor]):
    """``(conv shapes, readout weight as nn.Linear over the NCHW flatten, a frames converter)`` of a conv
    workload: our units are channels-last, a peer flattens ``[C, H, W]``, so the readout's rows are permuted."""
    from lzo_bench.core.conv import frames, nchw_order

    convs = shape.network().conv_shapes()
    readout = _linear(weights[-1][nchw_order(*convs[-1].next_shape)])
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def as_frames(x: torch.Tensor) -> torch.Tensor:
        """``[T, B, H·W·C]`` → contiguous ``[T, B, C, H, W]``, made once per batch (as our events are)."""
        if id(x) not in made:
            made.clear()
            made[id(x)] = (x, frames(x, convs[0].c_in, convs[0].height, convs[0].width).contiguous())
        return made[id(x)][1]

    return convs, readout, as_frames


def _conv2d(conv, w: torch.Tensor, cls: type[nn.Conv2d] = nn.Conv2d, **kw) -> nn.Conv2d:
    m = cls(conv.c_in, conv.c_out, conv.kernel, conv.stride, conv.padding, bias=False, **kw)
    with torch.no_grad():
        m.weight.copy_(w)
    return m


def snntorch_conv_factory(shape: Workload, weights: list[torch.Tensor]) -> tuple[nn.Module, ForwardLoss, str]:
    snn, _ = _import("snntorch", "snntorch")
    from snntorch import surrogate

    from lzo_bench.core.conv import channels_last

    convs, readout, as_frames = _conv_parts(shape, weights)

    class Net(nn.Module):
        # the tutorials' convolutional form: per step Conv2d, Leaky, sum pooling (AvgPool2d without the division)
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(_conv2d(c, w) for c, w in zip(convs, weights))
            self.pools = nn.ModuleList(nn.AvgPool2d(c.pool, divisor_override=1) if c.pool > 1 else nn.Identity()
                                       for c in convs)
            lif = dict(beta=shape.beta, threshold=shape.theta, spike_grad=surrogate.atan(),
                       reset_mechanism="subtract", reset_delay=True)
            self.lifs = nn.ModuleList(snn.Leaky(**lif) for _ in convs)
            self.fc_out = readout
            self.readout = snn.Leaky(beta=shape.beta_out, reset_mechanism="none")
            self.c_out = 1.0 - shape.beta_out

        def forward(self, x):
            mems = [lif.reset_mem() for lif in self.lifs]
            mem_o = self.readout.reset_mem()
            recs: list[list[torch.Tensor]] = [[] for _ in convs]
            o_rec = []
            for x_t in x.unbind(0):
                h = x_t
                for i, (conv, pool, lif) in enumerate(zip(self.convs, self.pools, self.lifs)):
                    s, mems[i] = lif(conv(h), mems[i])
                    recs[i].append(s)
                    h = pool(s)
                _, mem_o = self.readout(self.c_out * self.fc_out(h.flatten(1)), mem_o)
                o_rec.append(mem_o)
            return torch.stack(o_rec), [torch.stack(r) for r in recs]

    net = Net()

    def forward_loss(x, y, update):
        o, spikes = net(as_frames(x))
        return peer_loss(o, [s.flatten(2) for s in spikes], y, shape), lambda: [channels_last(s) for s in spikes]

    return net, forward_loss, ("nn.Conv2d + Leaky per step (tutorial loop), AvgPool2d(divisor_override=1) as sum "
                               "pooling, reset_delay=True, surrogate atan")


def spikingjelly_conv_factory(shape: Workload, weights: list[torch.Tensor]) -> tuple[nn.Module, ForwardLoss, str]:
    _import("spikingjelly", "spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    from lzo_bench.core.conv import channels_last

    convs, readout, as_frames = _conv_parts(shape, weights)
    node = dict(tau=1.0 / (1.0 - shape.beta), decay_input=False, v_threshold=shape.theta, v_reset=None,
                surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
    stages = [(_conv2d(c, w, layer.Conv2d, step_mode="m"), neuron.LIFNode(**node),
               layer.AvgPool2d(c.pool, divisor_override=1, step_mode="m") if c.pool > 1 else nn.Identity())
              for c, w in zip(convs, weights)]
    fc_out = layer.Linear(readout.in_features, readout.out_features, bias=False, step_mode="m")
    with torch.no_grad():
        fc_out.weight.copy_(readout.weight)
    out = neuron.NonSpikingLIFNode(tau=1.0 / (1.0 - shape.beta_out))
    net = nn.Sequential(*(m for st in stages for m in st), fc_out, out)

    def forward_loss(x, y, update):
        functional.reset_net(net)
        h, spikes = as_frames(x), []
        for conv, lif, pool in stages:
            s = lif(conv(h))
            spikes.append(s)
            h = pool(s)
        o = torch.stack(out(fc_out(h.flatten(2))))
        return peer_loss(o, [s.flatten(2) for s in spikes], y, shape), lambda: [channels_last(s) for s in spikes]

    return net, forward_loss, ("layer.Conv2d over T*B frames + LIFNode step_mode='m' (CPU op), AvgPool2d"
                               "(divisor_override=1) as sum pooling, surrogate ATan; resets before the decay")


PEER_CONV_FACTORIES = {"snntorch": ("snntorch", snntorch_conv_factory),
                       "spikingjelly": ("spikingjelly", spikingjelly_conv_factory)}

PEER_FACTORIES: dict[str, tuple[str, Callable[[Workload, list[torch.Tensor]], tuple[nn.Module, ForwardLoss, str]]]] = {
    "snntorch": ("snntorch", snntorch_factory),
    "spikingjelly": ("spikingjelly", spikingjelly_factory),
    "norse": ("norse", norse_factory),
}

#: why a peer's forward is (not) the same as ours, for the table's footnotes
FORWARD_NOTES = {
    "snntorch": "same equation as ours (reset_delay=True subtracts theta*s[t-1] after the decay); "
                "differences can only come from float rounding of the per-step matmul",
    "spikingjelly": "cannot match ours exactly: resets before the next decay (subtracts beta*theta, not theta) "
                    "and decays as v - v/tau",
    "norse": "cannot match ours exactly: resets before the next decay (subtracts beta*theta, not theta); "
             "Euler step v + (1-beta)*(I/(1-beta) - v) rounds differently",
}


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
    clock = CPU_CLOCK
    measure = c.saved_mb is None
    record = record and not measure
    c0 = time.process_time()
    t0 = clock.mark()
    if measure:
        (loss, spikes), saved = saved_bytes(lambda: c.forward_loss(x, y, c.updates))
        c.saved_mb = saved / 2**20
    else:
        loss, spikes = c.forward_loss(x, y, c.updates)
    t1 = clock.mark()
    c.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t2 = clock.mark()
    c.optimizer.step()
    t3 = clock.mark()
    c1 = time.process_time()
    if c.first_spikes is None:
        c.first_spikes = [s.detach() for s in spikes()]
    c.updates += 1
    if record:
        c.fwd.append(clock.ms(t0, t1))
        c.bwd.append(clock.ms(t1, t2))
        c.opt.append(clock.ms(t2, t3))
        c.total.append(clock.ms(t0, t3))
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
        s1, s2 = c.first_spikes[0], c.first_spikes[1]
        d1 = float((s1.sum(0) - ref_spikes[0].sum(0)).abs().max())
        d2 = float((s2.sum(0) - ref_spikes[1].sum(0)).abs().max())
        rows.append({
            "name": c.name, "library": c.library, "version": c.version, "threads": torch.get_num_threads(),
            "fwd_ms": fwd, "bwd_ms": bwd, "opt_ms": opt, "total_ms": tot, "cpu_ms": cpu,
            "fwd_iqr_ms": fwd_iqr, "bwd_iqr_ms": bwd_iqr, "opt_iqr_ms": opt_iqr, "total_iqr_ms": tot_iqr,
            "cpu_iqr_ms": cpu_iqr, "saved_mb": c.saved_mb,
            "rate_l1": float(s1.mean()), "rate_l2": float(s2.mean()),
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


# --------------------------------------------------------------------------- output


def machine_info() -> dict[str, Any]:
    from lzo_bench.runtime.devices import cpu_facts

    return cpu_facts() | {"python": platform.python_version(), "torch": torch.__version__,
                          "platform": platform.platform()}


def _fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def print_table(rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    from lzo_bench.runtime.devices import cpu_header

    print(cpu_header(config.get("machine")))
    layers = [f"conv{c['c_in']}->{c['c_out']}k{c['kernel']}s{c['stride']}p{c['padding']}"
              + (f"+pool{c['pool']}" if c["pool"] > 1 else "") for c in config.get("conv", [])]
    title = (f"one training update, {config['shape']} T={config['steps']} B={config['batch']} "
             f"{'->'.join(map(str, [config['n_in'], *layers, *config['hidden'], config['n_out']]))}, "
             f"gain {config['gain']:.3g}, medians of {config['repeats']} interleaved repeats after "
             f"{config['warmup']} warm-up (CPU), our input: {config.get('input', 'events')}")
    cols = ["name", "version", "thr", "fwd ms", "bwd ms", "opt ms", "total ms", "cpu ms", "x vs localzo",
            "bwd x vs localzo", "saved MB", "rate l1", "rate l2", "spikes_vs_ours"]
    body = [[r["name"], r["version"], str(r["threads"]),
             f"{_fmt(r['fwd_ms'])} ±{_fmt(r['fwd_iqr_ms'] / 2)}", f"{_fmt(r['bwd_ms'])} ±{_fmt(r['bwd_iqr_ms'] / 2)}",
             _fmt(r["opt_ms"], 2), f"{_fmt(r['total_ms'])} ±{_fmt(r['total_iqr_ms'] / 2)}", _fmt(r["cpu_ms"]),
             _fmt(r["x_vs_localzo"], 2), _fmt(r["bwd_x_vs_localzo"], 2), _fmt(r.get("saved_mb"), 1),
             f"{r['rate_l1']:.3%}", f"{r['rate_l2']:.3%}", f"{r['spikes_vs_ours']:g} / {r['spikes_vs_ours_l2']:g}"]
            for r in rows]
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=title)
        for c in cols:
            t.add_column(c, justify="left" if c in ("name", "version") else "right", no_wrap=c == "name")
        for b in body:
            t.add_row(*map(escape, b))  # '[dense input]' is no markup
        Console(width=200).print(t)
    except ImportError:
        print(title)
        widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for b in body:
            print("  ".join(v.ljust(w) for v, w in zip(b, widths)))
    print("± is half the interquartile range; x vs localzo = total_ms / total_ms of lzo localzo (= localzo's "
          "speedup over that row); spikes_vs_ours = max |layer-1 / layer-2 spike count - ours| per (b, j) "
          "at the first update (0: identical forward); saved MB = distinct storages autograd keeps for the "
          "backward (saved_tensors_hooks, first update)")
    seen = set()
    for r in rows:
        if r["library"] != "lzo-bench" and r["name"] not in seen:
            seen.add(r["name"])
            print(f"  {r['name']} {r['version']}: {r['detail']}. Forward: {r['forward_note']}.")
        elif r["name"] not in seen:
            seen.add(r["name"])
            print(f"  {r['name']}: {r['detail']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="nmnist")
    ap.add_argument("--arch", choices=("fc", "conv"), default="fc",
                    help="fc: the paper's 2x200 network; conv: the conv network on N-MNIST's 2x34x34 frames "
                         f"(issue 22; {', '.join(CONV_PEERS)} as peers, batch 32 unless --batch)")
    ap.add_argument("--steps", type=int, default=None, help="time steps (default: the shape's)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default="", help="torch threads, or a list '1,2' (one pass per count)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ALL_NAMES)}")
    ap.add_argument("--backend", default="auto", choices=("auto", "cpp", "torch"), help="our backend")
    ap.add_argument("--seed", type=int, default=0, help="seed of the input and labels")
    ap.add_argument("--json", action="store_true", help="print JSON to stdout instead of the table")
    ap.add_argument("--input", choices=("events", "dense", "both"), default="events",
                    help="how our rows take the batch: events converted once outside the timed update (as the "
                         "training loader hands them), the dense float tensor every peer gets, converted inside it, "
                         f"or both (rows named '... {DENSE_SUFFIX}')")
    args = ap.parse_args(argv)
    from lzo_bench.runtime.memory import keep_freed_memory

    keep_freed_memory()  # process-wide, as `lzo-bench profile --peers` runs: main() is the benchmark's entry point

    if args.arch == "conv" and args.shape != "nmnist":
        ap.error(f"--arch conv runs on N-MNIST's frames; --shape {args.shape} has none")
    default_names = [*(f"lzo {m}" for m in OUR_METHODS), *CONV_PEERS] if args.arch == "conv" else list(ALL_NAMES)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else default_names
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown:
        ap.error(f"unknown contender(s) {', '.join(unknown)}; choose from: {', '.join(ALL_NAMES)}")
    try:
        thread_counts = [int(t) for t in args.threads.split(",") if t.strip()] or [torch.get_num_threads()]
    except ValueError:
        ap.error(f"--threads takes integers like 1 or 1,2, got {args.threads!r}")
    torch.set_num_threads(thread_counts[0])
    machine = machine_info()  # the load before this run adds its own

    shape = CONV_WORKLOAD if args.arch == "conv" else SHAPES[args.shape]
    shape = dataclasses.replace(shape, steps=args.steps or shape.steps, batch=args.batch or shape.batch)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    x, y = make_inputs(shape, args.seed)
    weights, gain, cal_rate = initial_weights(shape, x)
    log(f"input {float(x.mean()):.3%} per (step, input); gain {gain:.4g} -> layer-1 rate {cal_rate:.3%}")
    ref = reference_spikes(shape, weights, x)

    rows: list[dict[str, Any]] = []
    for th in thread_counts:
        try:
            rows += run_contenders(names, x, y, weights, shape, args.repeats, args.warmup, args.backend, th, ref, log,
                                   args.input)
        except Exception as e:  # one of our rows failed: say what, no traceback
            log(f"error: our update failed with {args.threads or th} thread(s): {type(e).__name__}: {e}")
            return 1
    config = {"shape": shape.name, "steps": shape.steps, "batch": shape.batch, "n_in": shape.n_in,
              "hidden": list(shape.hidden), "n_out": shape.n_out, "arch": args.arch,
              "conv": [c.to_dict() for c in shape.network().conv_shapes()], "beta": shape.beta, "beta_out": shape.beta_out,
              "reduce": shape.reduce, "f_up": shape.f_up, "input_rate": shape.synthetic_rate, "gain": gain,
              "calibrated_rate_l1": cal_rate, "lr": LR, "delta": DELTA, "repeats": args.repeats,
              "warmup": args.warmup, "threads": thread_counts, "backend": args.backend, "seed": args.seed,
              "contenders": names, "input": args.input, "machine": machine}
    if args.json:
        json.dump({"rows": rows, "config": config, "machine": config["machine"]}, sys.stdout, indent=2)
        print()
    else:
        print_table(rows, config)
    ours_ran = any(r["library"] == "lzo-bench" for r in rows)
    if not ours_ran and any(n.startswith("lzo ") for n in names):
        return 1
    return 0 if ours_ran or rows else 1


if __name__ == "__main__":
    sys.exit(main())
