"""snnTorch and SpikingJelly models as a :class:`lzo_bench.nn.Sequential`, and the trained weights back.

:func:`from_snntorch` and :func:`from_spikingjelly` take a feed-forward ``torch.nn.Sequential`` run one
time step per call, built of ``Linear``, ``Conv2d``, ``AvgPool2d``, ``Flatten``, ``Dropout`` and the
library's neurons, and give the same network in these layers (new parameters: a copy, not shared)::

    [Conv2d → neuron [→ AvgPool2d]]…  [Flatten]  Linear → neuron  …  Linear [→ readout neuron]

Neurons, per step ``t`` (ours: ``u[t] = β·u[t−1] + I[t] − θ·s[t−1]``, ``s = H(u − θ)``):

- snnTorch ``snn.Leaky(beta, threshold, reset_mechanism="subtract")`` (``reset_delay=True``, its default):
  ``mem = β·mem + I − θ·reset`` with ``reset`` the previous step's spike — ours as it is: β, θ, weights equal.
- SpikingJelly ``neuron.IFNode(v_reset=None)`` (soft reset): ``v = v + I``, ``s = H(v − θ)``, ``v −= θ·s`` —
  ours with β = 1, weights equal.
- The readout (these layers end in a non-spiking one, :class:`LeakyReadout`, ``o = β_r·o + (1 − β_r)·(s W + b)``
  reduced over time by ``reduce``, max or sum): a final ``Linear`` with no neuron after it is ``β_r = 0``
  (the logits are its output reduced over time; weights equal); snnTorch's last ``snn.Leaky`` with
  ``reset_mechanism="none"`` is ``β_r = β`` with ``W/(1 − β)`` (``o`` is its ``mem``); SpikingJelly's
  ``neuron.NonSpikingLIFNode(tau)`` (``v = v + (I − v)/τ``) is ``β_r = 1 − 1/τ``, weights equal, its
  ``decode="max-mem"`` taken as ``reduce="max"``.

``AvgPool2d(k)`` of a conv layer's spikes becomes ``SumPool2d(k)`` with the next weighted layer's weights × 1/k²
(exact for k = 2, 4, …: a power of two); ``Flatten`` before a dense layer permutes its input rows from
torch's NCHW to the channels-last units (:func:`lzo_bench.core.conv.nchw_order`). ``Dropout`` is left out:
the converted network has none, in training either (:func:`to_snntorch` leaves the user's in place).
Everything else is refused in one line naming the module (its index in the Sequential) and what to do.
:func:`to_snntorch` / :func:`to_spikingjelly` copy the weights back, dividing out the same factors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn as tnn

from lzo_bench import spike
from lzo_bench.core.conv import nchw_order, square_size
from lzo_bench.nn.layers import LIF, ConvLIF, Flatten, LeakyReadout, Sequential, SumPool2d

__all__ = ["UnsupportedModel", "from_snntorch", "from_spikingjelly", "to_snntorch", "to_spikingjelly"]


class UnsupportedModel(ValueError):
    """A model, or a module of it, that these layers cannot run; one line, naming the module."""


@dataclass
class _Neuron:
    beta: float
    theta: float | None      # None: a non-spiking readout
    gain: float = 1.0        # the neuron's input is gain·I (into the weights)
    reduce: str | None = None


_REFUSED: dict[str, str] = {
    "MaxPool2d": "not supported yet (no max-pooling op); use AvgPool2d",
    "MaxPool1d": "not supported yet (no max-pooling op); use AvgPool2d",
    "BatchNorm1d": "fold BatchNorm into the preceding Linear's weights and bias for inference, then convert",
    "BatchNorm2d": "fold BatchNorm into the preceding Conv2d's weights and bias for inference "
                   "(torch.nn.utils.fusion.fuse_conv_bn_eval), then convert",
    "LayerNorm": "a normalisation over the units; lzo_bench.nn has none",
    "MultiheadAttention": "attention is not a layer lzo_bench.nn has",
    "RNN": "recurrent; lzo_bench.nn's layers are feed-forward", "LSTM": "recurrent; lzo_bench.nn's layers are feed-forward",
    "GRU": "recurrent; lzo_bench.nn's layers are feed-forward",
    "RLeaky": "recurrent; lzo_bench.nn's layers are feed-forward: use snn.Leaky",
    "RSynaptic": "recurrent; lzo_bench.nn's layers are feed-forward: use snn.Leaky",
    "Synaptic": "a synaptic current (alpha) is a second state lzo_bench.nn's LIF does not have: use snn.Leaky",
    "Alpha": "a synaptic current is a second state lzo_bench.nn's LIF does not have: use snn.Leaky",
    "Lapicque": "use snn.Leaky (the same neuron written with beta)",
    "LIFNode": "its soft reset is decayed with the membrane (v −= θ·s, then v ← v + (x − v)/τ scales it by "
               "1 − 1/τ), lzo_bench.nn's is not (u ← β·u + I − θ·s): a different neuron; use neuron.IFNode(v_reset=None)",
    "ParametricLIFNode": "a learned τ, and the LIFNode's decayed reset; use neuron.IFNode(v_reset=None)",
}


def _value(name: str, module: tnn.Module, field: str, value: Any) -> float:
    t = torch.as_tensor(value).detach().double().reshape(-1)
    if t.numel() == 0 or not bool((t == t[0]).all()):
        raise UnsupportedModel(f"{name}: {field} differs across its neurons; lzo_bench.nn has one per layer")
    return float(t[0])


def _snntorch_neuron(name: str, m: tnn.Module) -> _Neuron | None:
    import snntorch as snn

    if not isinstance(m, snn.SpikingNeuron):
        return None
    if type(m) is not snn.Leaky:
        raise UnsupportedModel(f"{name}: {_REFUSED.get(type(m).__name__, 'not a neuron from_snntorch converts: use snn.Leaky')}")
    for flag, why in (("inhibition", "inhibition"), ("state_quant", "state quantisation")):
        if getattr(m, flag, False):
            raise UnsupportedModel(f"{name}: {why} is not supported; build the Leaky without it")
    if isinstance(m.beta, tnn.Parameter) or isinstance(m.threshold, tnn.Parameter):
        raise UnsupportedModel(f"{name}: learn_beta / learn_threshold: β and θ are constants in lzo_bench.nn; "
                               "set them False (the learned values are kept as constants if you do)")
    if _value(name, m, "graded_spikes_factor", m.graded_spikes_factor) != 1.0:
        raise UnsupportedModel(f"{name}: graded_spikes_factor ≠ 1 is not supported (spikes are 0 or 1)")
    beta = min(max(_value(name, m, "beta", m.beta), 0.0), 1.0)  # snnTorch clamps β to [0, 1]
    theta = _value(name, m, "threshold", m.threshold)
    if m.reset_mechanism == "none":
        if beta >= 1.0:
            raise UnsupportedModel(f"{name}: a readout Leaky with beta = 1 does not leak; LeakyReadout needs beta < 1")
        return _Neuron(beta, None, 1.0 / (1.0 - beta))
    if m.reset_mechanism != "subtract":
        raise UnsupportedModel(f"{name}: reset_mechanism={m.reset_mechanism!r}: lzo_bench.nn's LIF resets by "
                               "subtraction only; use reset_mechanism='subtract'")
    if not m.reset_delay:
        raise UnsupportedModel(f"{name}: reset_delay=False subtracts θ in the spike's own step (then decays it); "
                               "lzo_bench.nn's LIF subtracts it at the next step: use reset_delay=True (the default)")
    return _Neuron(beta, theta)


def _spikingjelly_neuron(name: str, m: tnn.Module) -> _Neuron | None:
    from spikingjelly.activation_based import neuron

    if isinstance(m, neuron.NonSpikingLIFNode):
        decode = {None: None, "max-mem": "max"}
        if m.decode not in decode:
            raise UnsupportedModel(f"{name}: decode={m.decode!r}; the readout reduces by max (decode='max-mem') or "
                                   "by sum (decode=None and reduce='sum')")
        tau = float(m.tau)
        if not tau > 1.0:
            raise UnsupportedModel(f"{name}: tau = {tau} must be > 1 (β = 1 − 1/τ in (0, 1))")
        return _Neuron(1.0 - 1.0 / tau, None, 1.0, decode[m.decode])
    if not isinstance(m, (neuron.BaseNode, neuron.NonSpikingBaseNode)):
        return None
    if type(m) is not neuron.IFNode:
        why = _REFUSED.get(type(m).__name__, "not a neuron from_spikingjelly converts: use neuron.IFNode(v_reset=None)")
        raise UnsupportedModel(f"{name}: {why}")
    if m.v_reset is not None:
        raise UnsupportedModel(f"{name}: v_reset={m.v_reset!r} resets to a value; lzo_bench.nn's LIF subtracts θ: "
                               "use neuron.IFNode(v_reset=None) (soft reset)")
    return _Neuron(1.0, _value(name, m, "v_threshold", m.v_threshold))


def _square(name: str, field: str, value: Any) -> int:
    side = None if isinstance(value, str) else square_size(value)
    if side is None:
        raise UnsupportedModel(f"{name}: {field}={value!r}; these layers take one integer size for both axes")
    return int(side)


class _Walk:
    def __init__(self, model: tnn.Module, neuron: Callable[[str, tnn.Module], _Neuron | None], library: str,
                 input_shape: tuple[int, int, int] | None):
        if not isinstance(model, tnn.Sequential):
            raise UnsupportedModel(f"from_{library} takes a torch.nn.Sequential (one time step per call), got "
                                   f"{type(model).__name__}: write the model as one")
        self.items = list(model.named_children())
        self.neuron, self.library = neuron, library
        self.shape: tuple[int, ...] | None = tuple(input_shape) if input_shape is not None else None
        self.shape_in = self.shape
        self.plan: list[tuple[str, Any]] = []   # ("conv"|"fc"|"readout", (key, module, _Neuron, rows, avg)),
        #                                         ("pool", k), ("flatten", None)

    def name(self, key: str, m: tnn.Module) -> str:
        return f"{type(m).__name__} {key!r}"

    def run(self) -> None:
        pending, avg, rows, pooled_ok = None, None, None, False
        for key, m in self.items:
            name = self.name(key, m)
            n = self.neuron(name, m)
            if n is not None:
                if pending is None:
                    raise UnsupportedModel(f"{name} takes its input straight from the spikes before it: these neurons "
                                           "sit behind a Linear or Conv2d")
                kind, pkey, pm, prow, pavg = pending
                if n.theta is None and kind == "conv":
                    raise UnsupportedModel(f"{name}: the readout must read a Linear (Flatten → Linear before it)")
                self.plan.append((kind if n.theta is not None else "readout", (pkey, pm, n, prow, pavg)))
                pending, pooled_ok = None, kind == "conv" and n.theta is not None
                continue
            if avg is not None and not isinstance(m, (tnn.Linear, tnn.Conv2d, tnn.Flatten) + _dropouts()):
                raise UnsupportedModel(f"AvgPool2d {avg[0]!r} feeds {name}: its 1/k² goes into the next Linear or "
                                       "Conv2d, and there is none")
            if isinstance(m, _dropouts()):
                continue
            if isinstance(m, (tnn.Linear, tnn.Conv2d)):
                if pending is not None:
                    raise UnsupportedModel(f"{self.name(pending[1], pending[2])} feeds {name}: each weighted layer must "
                                           f"feed a neuron (two linear maps in a row: multiply them first)")
                kind = "conv" if isinstance(m, tnn.Conv2d) else "fc"
                if kind == "conv":
                    self.check_conv(name, m)
                elif self.shape is not None and len(self.shape) == 3:
                    raise UnsupportedModel(f"{name} receives frames {self.shape}: put a Flatten before it")
                pending = (kind, key, m, rows, 1.0 if avg is None else avg[1])
                avg, rows, pooled_ok = None, None, False
                if kind == "fc":
                    self.shape = (m.out_features,)
            elif isinstance(m, tnn.AvgPool2d):
                if pending is not None:
                    raise UnsupportedModel(f"{name} pools the current of {self.name(pending[1], pending[2])} before "
                                           "its neuron (conv → pool → neuron): one linear map in exact arithmetic, but "
                                           "ConvLIF has no pooled-current op; pool the spikes (conv → neuron → AvgPool2d)")
                if not pooled_ok:
                    raise UnsupportedModel(f"{name} must follow a conv layer's neuron (pooling its spikes, once)")
                k = _square(name, "kernel_size", m.kernel_size)
                if _square(name, "stride", m.stride if m.stride is not None else k) != k or \
                        _square(name, "padding", m.padding) != 0 or m.ceil_mode or m.divisor_override is not None:
                    raise UnsupportedModel(f"{name}: stride must equal the kernel, padding be 0, ceil_mode False and no "
                                           "divisor_override (SumPool2d's windows tile the frame)")
                self.plan.append(("pool", k))
                c, h, w = self.shape  # type: ignore[misc]
                self.shape, avg, pooled_ok = (c, h // k, w // k), (key, 1.0 / (k * k)), False
            elif isinstance(m, tnn.Flatten):
                if self.shape is None or len(self.shape) != 3 or pending is not None or m.start_dim != 1 \
                        or m.end_dim != -1:
                    raise UnsupportedModel(f"{name}: Flatten(start_dim=1) must come after the conv layers' spikes")
                self.plan.append(("flatten", None))
                rows = nchw_order(*self.shape)  # type: ignore[misc]
                self.shape, pooled_ok = (int(np.prod(self.shape)),), False
            else:
                why = _REFUSED.get(type(m).__name__, f"not a layer from_{self.library} converts (Linear, Conv2d, "
                                   "AvgPool2d, Flatten, Dropout and the neurons in the docstring)")
                raise UnsupportedModel(f"{name}: {why}")
        if pending is not None:  # a final Linear: the readout's current with β_r = 0
            if pending[0] == "conv":
                raise UnsupportedModel(f"{self.name(pending[1], pending[2])}: the model ends in a Conv2d; end it in "
                                       "Flatten → Linear")
            self.plan.append(("readout", (pending[1], pending[2], _Neuron(0.0, None), pending[3], pending[4])))
        if not self.plan or self.plan[-1][0] != "readout":
            last = next(f"{self.name(k, m)}" for k, m in reversed(self.items) if self.neuron("", m) is not None) \
                if self.plan else "nothing"
            raise UnsupportedModel(f"the model's output is the spikes of {last}; lzo_bench.nn.Sequential ends in a "
                                   f"non-spiking readout: end the model in its Linear (the logits: its output reduced "
                                   f"over time, reduce='max' or 'sum'){_READOUT_HINT[self.library]}")

    def check_conv(self, name: str, m: tnn.Conv2d) -> None:
        k = _square(name, "kernel_size", m.kernel_size)
        stride, padding = _square(name, "stride", m.stride), _square(name, "padding", m.padding)
        if _square(name, "dilation", m.dilation) != 1 or m.groups != 1 or m.padding_mode != "zeros":
            raise UnsupportedModel(f"{name}: dilation and groups must be 1 and padding_mode 'zeros' (ConvLIF has neither)")
        if self.shape is None or len(self.shape) != 3:
            raise UnsupportedModel(f"{name}: a conv model needs input_shape=(C, H, W), the frames' size")
        c, h, w = self.shape
        if c != m.in_channels:
            raise UnsupportedModel(f"{name} takes {m.in_channels} channels, gets {c}")
        self.shape = (m.out_channels, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)


_READOUT_HINT = {"snntorch": ", or give the last Leaky reset_mechanism='none' (its membrane is the readout)",
                 "spikingjelly": ", or end it in Linear → neuron.NonSpikingLIFNode(tau, decode='max-mem')"}


def _dropouts() -> tuple[type, ...]:
    kinds: tuple[type, ...] = (tnn.Dropout, tnn.Dropout1d, tnn.Dropout2d, tnn.AlphaDropout)
    try:
        from spikingjelly.activation_based import layer

        kinds += (layer.Dropout, layer.Dropout2d)
    except ImportError:
        pass
    return kinds


def _user_weight(m: tnn.Module, rows: np.ndarray | None) -> np.ndarray:
    w = m.weight.detach().cpu().double().numpy()
    if isinstance(m, tnn.Conv2d):
        return w
    w = w.T  # ours: [in, out]
    if rows is not None:
        out = np.empty_like(w)
        out[rows] = w
        return out
    return w


def _convert(walk: _Walk, rule: spike.SpikeFunction | None, backend: str, reduce: str) -> Sequential:
    walk.run()
    rule = spike.LocalZO() if rule is None else rule
    layers: list[tnn.Module] = []
    for kind, item in walk.plan:
        if kind == "pool":
            layers.append(SumPool2d(item))
            continue
        if kind == "flatten":
            layers.append(Flatten())
            continue
        _, m, n, rows, avg = item
        w = _user_weight(m, None if rows is None else rows.numpy())
        b = None if m.bias is None else m.bias.detach().cpu().double().numpy()
        if kind == "conv":
            layer = ConvLIF(m.in_channels, m.out_channels, w.shape[2], m.stride[0], m.padding[0], n.beta, n.theta, rule,
                            bias=b is not None)
        elif kind == "fc":
            layer = LIF(w.shape[0], w.shape[1], n.beta, n.theta, rule, bias=b is not None)
        else:
            layer = LeakyReadout(w.shape[0], w.shape[1], n.beta, n.reduce or reduce, bias=b is not None)
        scale = avg * n.gain
        layer.weight = tnn.Parameter(torch.from_numpy((w * scale if scale != 1.0 else w).astype(np.float32)))
        if b is not None:
            layer.bias = tnn.Parameter(torch.from_numpy((b * n.gain).astype(np.float32)))
        layers.append(layer)
    conv = any(isinstance(m, ConvLIF) for m in layers)
    return Sequential(*layers, input_shape=walk.shape_in if conv else None, backend=backend)


def _walk(model: tnn.Module, library: str, input_shape: Any) -> _Walk:
    neuron = _snntorch_neuron if library == "snntorch" else _spikingjelly_neuron
    return _Walk(model, neuron, library, input_shape)


def from_snntorch(model: tnn.Module, rule: spike.SpikeFunction | None = None, backend: str = "auto",
                  reduce: str = "max", input_shape: tuple[int, int, int] | None = None) -> Sequential:
    """An snnTorch ``torch.nn.Sequential`` (``snn.Leaky`` neurons) as these layers, each with ``rule``
    (one shared spike function; default ``spike.LocalZO()``); ``reduce`` of the readout over time;
    ``input_shape`` ``(C, H, W)`` for a conv model. The mapping is the module docstring's."""
    return _convert(_walk(model, "snntorch", input_shape), rule, backend, reduce)


def from_spikingjelly(model: tnn.Module, rule: spike.SpikeFunction | None = None, backend: str = "auto",
                      reduce: str = "max", input_shape: tuple[int, int, int] | None = None) -> Sequential:
    """A SpikingJelly ``torch.nn.Sequential`` (``neuron.IFNode(v_reset=None)``, a ``NonSpikingLIFNode``
    readout) as these layers; arguments as :func:`from_snntorch`."""
    return _convert(_walk(model, "spikingjelly", input_shape), rule, backend, reduce)


def _copy_back(seq: Sequential, model: tnn.Module, library: str, input_shape: Any) -> tnn.Module:
    walk = _walk(model, library, input_shape if input_shape is not None else seq.input_shape)
    walk.run()
    ours = [m for m in seq.layers if isinstance(m, (LIF, ConvLIF, LeakyReadout))]
    users = dict(walk.items)
    links = []
    for kind, item in walk.plan:
        if kind not in ("pool", "flatten"):
            key, m, n, rows, avg = item
            links.append((key, avg * n.gain, n.gain, None if rows is None else rows.numpy()))
    if len(links) != len(ours):
        raise UnsupportedModel(f"the Sequential has {len(ours)} weighted layers, the model {len(links)}: not the "
                               "network it was converted from")
    with torch.no_grad():
        for (key, scale, gain, rows), layer in zip(links, ours):
            m = users[key]
            w = layer.weight.detach().cpu().double().numpy()
            w = w / scale if scale != 1.0 else w
            if not isinstance(m, tnn.Conv2d):
                w = (w[rows] if rows is not None else w).T
            if tuple(w.shape) != tuple(m.weight.shape):
                raise UnsupportedModel(f"{type(m).__name__} {key!r} has weights {tuple(m.weight.shape)}, the layer "
                                       f"{tuple(w.shape)}: not the network it was converted from")
            m.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            if m.bias is not None:
                b = layer.bias.detach().cpu().double().numpy() / gain if layer.bias is not None else 0.0
                m.bias.copy_(torch.as_tensor(b, dtype=torch.float32).expand_as(m.bias))
    return model


def to_snntorch(seq: Sequential, model: tnn.Module, input_shape: tuple[int, int, int] | None = None) -> tnn.Module:
    """Copy ``seq``'s (trained) weights back into ``model``, the snnTorch model it was converted from, the
    gains divided out; returns ``model``."""
    return _copy_back(seq, model, "snntorch", input_shape)


def to_spikingjelly(seq: Sequential, model: tnn.Module, input_shape: tuple[int, int, int] | None = None) -> tnn.Module:
    """Copy ``seq``'s weights back into the SpikingJelly ``model`` it was converted from; returns ``model``."""
    return _copy_back(seq, model, "spikingjelly", input_shape)
