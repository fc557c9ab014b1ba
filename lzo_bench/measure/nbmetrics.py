"""NeuroBench 2.3 metrics of a network from its spikes and membranes, and an adapter module that
shows the network to NeuroBench's own hooks.

Definitions, as ``neurobench.metrics`` 2.3 computes them through its hooks (per time step, one call
of each connection layer and each neuron layer on the batch), for ``S`` samples of ``T`` steps,
hidden layers ``l`` of ``N_l`` neurons and weights ``W_k [fan_in, fan_out]`` (the readout's
included; a conv layer's fan-out of input unit ``i`` is the number of (output position, channel) pairs
its non-zero taps reach, which NeuroBench counts as ``conv2d(h ≠ 0, W ≠ 0)`` summed, Dense as
``conv2d(1, 1)`` summed)::

    ActivationSparsity        = 1 − Σ_l spikes_l / (S·T·Σ_l N_l)        (hidden layers: the spiking
                                                                        neurons; the readout is not one)
    ActivationSparsityByLayer = 1 − spikes_l / (S·T·N_l)
    ops_k[t]                  = Σ_b Σ_i [h_k[t, b, i] ≠ 0] · nnz(W_k[i, :])   (h_k: the layer's input)
    SynapticOperations        = Dense: T·Σ_k fan_in_k·fan_out_k per sample;
                                Effective_ACs: Σ ops_k[t] / S over steps whose input h_k[t] (the whole
                                batch) lies in {−1, 0, 1}; Effective_MACs: the other steps' ops / S
    MembraneUpdates           = Σ_l Σ_b (N_l + Σ_{t≥1} Σ_j [u_l[t, b, j] ≠ u_l[t−1, b, j]]) / S
    ParameterCount            = Σ_k numel(W_k)
    Footprint                 = bytes of the parameters and buffers
    ConnectionSparsity        = Σ_k zeros(W_k) / Σ_k numel(W_k)
    ClassificationAccuracy    = fraction of samples whose largest logit is the label

NeuroBench rounds ConnectionSparsity to 4 decimals; here it is the exact fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from lzo_bench.core.conv import ConvShape, conv_current, pool_dense
from lzo_bench.core.lif import layer_current, lif_membrane
from lzo_bench.core.model import SNN


def layer_names(model: SNN) -> list[str]:
    """``lif1, lif2, …``: the hidden layers' names, as the adapter's modules (and NeuroBench's
    ActivationSparsityByLayer) call them."""
    return [f"lif{i + 1}" for i in range(len(model.spec.layer_sizes))]


def layer_inputs(model: SNN, x: torch.Tensor, spikes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What each layer (the readout's included) receives: ``x``, then each hidden layer's spikes, a
    conv layer's sum-pooled."""
    shapes = model.spec.conv_shapes()
    return [x, *(pool_dense(s, shapes[i]) if i < len(shapes) else s for i, s in enumerate(spikes))]


def synaptic_ops(weights: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
                 convs: Sequence[ConvShape | None] = ()) -> tuple[int, int, int]:
    """``(dense, effective ACs, effective MACs)`` summed over the batch, for each layer's weights
    ``W [fan_in, fan_out]`` (with ``convs[k]``: ``[C_out, C_in, K, K]``) and input ``h [T, B, fan_in]``
    (see the module docstring)."""
    dense = acs = macs = 0
    convs = [*convs, *[None] * (len(weights) - len(convs))]
    for w, h, conv in zip(weights, inputs, convs):
        steps, batch, fan_in = h.shape
        if conv is not None:
            nonzero = (w.detach() != 0).to(torch.float64)
            dense += steps * batch * int(conv_current(torch.ones(1, 1, fan_in, dtype=torch.float64),
                                                      torch.ones_like(nonzero), None, conv).sum())
            ops = conv_current((h != 0).to(torch.float64), nonzero, None, conv).sum(2).sum(1)
        else:
            dense += steps * batch * w.shape[0] * w.shape[1]
            fan_out = (w.detach() != 0).sum(1).to(torch.float64)
            ops = ((h != 0).to(torch.float64).reshape(steps * batch, fan_in) @ fan_out).view(steps, batch).sum(1)
        spiking = ((h == 0) | (h == 1) | (h == -1)).reshape(steps, -1).all(1)
        acs += round(float(ops[spiking].sum()))
        macs += round(float(ops[~spiking].sum()))
    return dense, acs, macs


def membranes(model: SNN, x: torch.Tensor, spikes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``u [T, B, N]`` of every hidden layer, from the layer's input spikes (``x``, then the
    forward's ``spikes``) with the reference LIF (:func:`lzo_bench.core.lif.lif_membrane`)."""
    inputs = layer_inputs(model, x, spikes)[:-1]
    convs = model.spec.conv_shapes() + [None] * len(model.spec.hidden)
    with torch.no_grad():
        return [lif_membrane(layer_current(h, w, None, c), model.spec.beta, model.spec.theta)
                for h, w, c in zip(inputs, model.weights[:-1], convs)]


def membrane_updates(us: Sequence[torch.Tensor]) -> int:
    """Membrane updates summed over the batch: every neuron at the first step, then each step at
    which ``u`` changed."""
    return sum(u[0].numel() + int(torch.count_nonzero(u[1:] != u[:-1])) for u in us)


def static_metrics(model: SNN) -> dict[str, Any]:
    """ParameterCount, Footprint (bytes) and ConnectionSparsity of the network."""
    tensors = [*model.parameters(), *model.buffers()]
    weights = list(model.weights)
    return {
        "ParameterCount": sum(p.numel() for p in model.parameters()),
        "Footprint": sum(t.numel() * t.element_size() for t in tensors),
        "ConnectionSparsity": sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights),
    }


@dataclass
class NeuroBenchTally:
    """The workload metrics, accumulated batch by batch."""

    names: list[str]
    samples: int = 0
    correct: int = 0
    dense: int = 0
    acs: int = 0
    macs: int = 0
    updates: int = 0
    spikes: list[int] = field(default_factory=list)
    neuron_steps: list[int] = field(default_factory=list)

    def add(self, model: SNN, x: torch.Tensor, spikes: Sequence[torch.Tensor], logits: torch.Tensor | None = None,
            labels: torch.Tensor | None = None) -> None:
        """One batch: input ``x [T, B, n_in]``, hidden ``spikes`` (``[T, B, N_l]`` each), and the
        logits and labels for accuracy."""
        batch = x.shape[1]
        dense, acs, macs = synaptic_ops(list(model.weights), layer_inputs(model, x, spikes), model.spec.conv_shapes())
        self.dense += dense
        self.acs += acs
        self.macs += macs
        self.updates += membrane_updates(membranes(model, x, spikes))
        counts = [int(torch.count_nonzero(s)) for s in spikes]
        self.spikes = [a + b for a, b in zip(self.spikes, counts)] if self.spikes else counts
        sizes = [s.numel() for s in spikes]
        self.neuron_steps = [a + b for a, b in zip(self.neuron_steps, sizes)] if self.neuron_steps else sizes
        if logits is not None and labels is not None:
            self.correct += int((logits.argmax(1) == labels).sum())
        self.samples += batch

    def result(self) -> dict[str, Any]:
        """The metrics per sample, under NeuroBench's names."""
        n = self.samples
        return {
            "ClassificationAccuracy": self.correct / n,
            "ActivationSparsity": 1.0 - sum(self.spikes) / sum(self.neuron_steps),
            "ActivationSparsityByLayer": {name: 1.0 - s / total for name, s, total in
                                          zip(self.names, self.spikes, self.neuron_steps)},
            "SynapticOperations": {"Effective_MACs": self.macs / n, "Effective_ACs": self.acs / n, "Dense": self.dense / n},
            "MembraneUpdates": self.updates / n,
        }


class LeakyReadout(nn.Module):
    """The readout's leaky integrator, one step a call: ``o[t] = β_r·o[t−1] + (1 − β_r)·a[t]`` from
    ``o[−1] = 0`` (:func:`lzo_bench.core.model.leaky_readout`); :meth:`reset` clears ``o``."""

    def __init__(self, beta_out: float):
        super().__init__()
        self.beta_out = beta_out
        self.o: torch.Tensor | None = None

    def reset(self) -> None:
        self.o = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        o = torch.zeros_like(a) if self.o is None else self.o
        self.o = self.beta_out * o + (1.0 - self.beta_out) * a
        return self.o


class StepLinear(nn.Linear):
    """``nn.Linear`` without bias whose weight is a view ``Wᵀ`` of ``W [fan_in, fan_out]``:
    ``x @ W`` then runs the matrix product the network runs on all ``T·B`` rows at once, and each
    row sums the same products in the same order (a single row is taken through that kernel too:
    the matrix-vector one sums in another order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.t()
        return (x.expand(2, -1) @ w)[:1] if x.dim() == 2 and x.shape[0] == 1 else x @ w


class NeuroBenchNet(nn.Module):
    """A trained :class:`~lzo_bench.core.model.SNN` as modules NeuroBench's hooks find, one time step a
    call: per hidden layer ``fc<l>`` (:class:`StepLinear`, an ``nn.Linear``) and ``lif<l>``
    (``snntorch.Leaky``, subtractive reset, β and θ of the network), whose step

        u[t] = β·u[t−1] + I[t] − θ·H(u[t−1] − θ),   s[t] = H(u[t] − θ)

    is the LIF of :mod:`lzo_bench.core.lif`; then ``fc_out`` and the readout (:class:`LeakyReadout`, not a
    neuron). ``forward(x_t [B, n_in])`` returns ``(o[t], s_L[t])`` and keeps the state until
    :meth:`reset`, as ``neurobench.models.SNNTorchModel`` drives a network; :meth:`run` gives the
    logits of a whole input ``[T, B, n_in]`` (reduced over time like the network's).
    """

    def __init__(self, model: SNN):
        super().__init__()
        import snntorch as snn

        if model.spec.conv:
            raise ValueError("NeuroBenchNet adapts fully connected networks only; a conv network's metrics come "
                             "from lzo_bench.measure.nbmetrics.NeuroBenchTally (lzo-bench evaluate)")

        self.spec = model.spec
        self.layers: list[tuple[StepLinear, nn.Module]] = []
        for i, (name, w) in enumerate(zip(layer_names(model), model.weights[:-1]), 1):
            fc = self._linear(w)
            lif = snn.Leaky(beta=model.spec.beta, threshold=model.spec.theta, reset_mechanism="subtract")
            self.add_module(f"fc{i}", fc)
            self.add_module(name, lif)
            self.layers.append((fc, lif))
        self.fc_out = self._linear(model.weights[-1])
        self.readout = LeakyReadout(model.spec.beta_out)

    @staticmethod
    def _linear(w: torch.Tensor) -> "StepLinear":
        fc = StepLinear(w.shape[0], w.shape[1], bias=False)
        fc.weight = nn.Parameter(w.detach().clone().t(), requires_grad=False)  # a view of W [fan_in, fan_out]
        return fc

    def reset(self) -> None:
        """Zero every membrane and the readout."""
        for _, lif in self.layers:
            lif.reset_mem()
        self.readout.reset()

    def forward(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x_t
        for fc, lif in self.layers:
            h, _ = lif(fc(h))
        return self.readout(self.fc_out(h)), h

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` for input spikes ``x [T, B, n_in]``, from a reset state."""
        self.reset()
        o = torch.stack([self(x_t)[0] for x_t in x.unbind(0)])
        return o.amax(0) if self.spec.reduce == "max" else o.sum(0)
