"""The contenders' adapters: the paper's network built in snnTorch, SpikingJelly, Norse and lzo-bench
from one set of weights, each as ``(module, forward_loss, detail)`` for the harness
(:mod:`lzo_bench.measure.peers`), with the loss they share, their names and the notes on how each
forward relates to ours.

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
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from lzo_bench.measure.workloads import Workload

DELTA = 0.05
INSTALL_HINT = 'pip install -e ".[bench]"'
OUR_METHODS = ("localzo", "sparsegrad", "surrogate")
PEERS = ("snntorch", "spikingjelly", "norse")
ALL_NAMES = (*(f"lzo {m}" for m in OUR_METHODS), *PEERS)
REFERENCE = "lzo localzo"
#: ``--arch conv``: the conv network on N-MNIST's frames (issue 22); snnTorch and SpikingJelly run it
CONV_PEERS = ("snntorch", "spikingjelly")

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
    from lzo_bench.core.gates import GateSpec
    from lzo_bench.core.model import SNN, SpikeRegularizer, classification_loss
    from lzo_bench.core.rng import DrawKey
    from lzo_bench.ops.backends import select_backend

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
