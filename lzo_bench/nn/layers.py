"""Sparse LIF layers for a user's own feed-forward network: the event-driven stack of ``lzo-bench
train`` as modules, any depth, β, θ and rule per layer, optional bias.

::

    from lzo_bench import nn, spike
    net = nn.Sequential(
        nn.LIF(64, 300, beta=0.9, rule=spike.LocalZO(delta=0.05, seed=1), bias=True),
        nn.LIF(300, 300, beta=0.5, rule=spike.LocalZO(delta=0.05, seed=2)),
        nn.LeakyReadout(300, 10, beta=0.9, reduce="max"),
    )
    logits = net(x)          # x: [T, B, 64] dense (float, bool or uint8) or SpikeEvents

Hidden layer ``l`` (:mod:`lzo_bench.core.network`)::

    u[t] = β_l·u[t−1] + x_l[t] @ W_l + b_l − θ_l·s[t−1],   s[t] = H(u[t] − θ_l)

and the readout ``o[t] = β_r·o[t−1] + (1 − β_r)·(s_L[t] @ W_out + b_out)``, ``logits = max_t o`` (or ``Σ_t``).
:class:`Sequential` keeps spikes as events between layers and runs the C++/CUDA event ops (the same
code as :class:`lzo_bench.core.model.SNN`): a sparse rule's backward touches only the active neurons. Its
rules must be all sparse or all dense; a rule without a C++ form (a custom ``g``) runs the
pure-PyTorch reference. On a training forward (``train()`` mode, grad enabled) each rule draws with
key ``(seed, counter)`` — layer ``l``'s position in the Philox counter — and its counter then
advances by one, so a run is reproducible from the seeds.

A :class:`LIF` on its own (outside :class:`Sequential`) is a dense layer whose spike function is the
rule (:mod:`lzo_bench.spike`): the estimator, not the sparse speed.

Convolutional networks (:mod:`lzo_bench.core.conv`)::

    net = nn.Sequential(
        nn.ConvLIF(2, 12, 5, beta=0.9, rule=rule), nn.SumPool2d(2),
        nn.ConvLIF(12, 32, 5, stride=2, beta=0.9, rule=rule), nn.Flatten(),
        nn.LeakyReadout(32 * 6 * 6, 10),
        input_shape=(2, 34, 34))
    logits = net(frames)     # frames [T, B, 2, 34, 34], or [T, B, 34·34·2] channels-last, or SpikeEvents

A :class:`ConvLIF` layer ``I = conv2d(x, W) + b`` keeps its spikes as events over ``(y, x, channel)``
units (channels-last); :class:`SumPool2d` sums them over ``k × k`` windows (the pooled counts travel as
graded events); :class:`Flatten` hands them to the fully connected layers as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lzo_bench import spike
from lzo_bench.core.conv import ConvShape, channels_last, conv_current, frames, square_size
from lzo_bench.core.events import SpikeEvents, all_finite
from lzo_bench.core.forward import Forward, leaky_readout
from lzo_bench.core.lif import lif_membrane
from lzo_bench.core.model import lif_problem, readout_problem
from lzo_bench.core.network import Hidden, Readout, Stack, dense_network, readout_logits
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import library
from lzo_bench.ops.backends import Backend, BackendName, BackendUnavailable, select_backend
from lzo_bench.ops.event_network import as_events, check_input


def _checked(x: torch.Tensor | SpikeEvents) -> torch.Tensor | SpikeEvents:
    if not isinstance(x, (torch.Tensor, SpikeEvents)):
        raise TypeError(f"input must be a tensor [T, B, n] or SpikeEvents, got {type(x).__name__}")
    if not isinstance(x, SpikeEvents) and x.dim() != 3:
        raise ValueError(f"input must have shape [T, B, n], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"input has T = 0 time steps (shape {tuple(x.shape)}); give at least one step")
    return x


def _rule(rule: spike.SpikeFunction | None) -> spike.SpikeFunction:
    if rule is None:
        return spike.LocalZO()
    if not isinstance(rule, spike.SpikeFunction):
        raise TypeError(f"rule must be a spike function (spike.Surrogate, spike.SparseGrad or spike.LocalZO), "
                        f"got {type(rule).__name__} {rule!r}; e.g. rule=spike.LocalZO()")
    return rule


def _side(name: str, value: int | tuple[int, int], minimum: int) -> int:
    """A square size: ``K`` or ``(K, K)`` (as torch's conv2d takes it); a non-square pair is refused."""
    if isinstance(value, (tuple, list)):
        side = square_size(value)
        if side is None:
            raise ValueError(f"{name} must be square, K or (K, K): these layers take one size for both axes, "
                             f"got {tuple(value)}")
        value = side
    return spike.integer(name, value, minimum)


def _check_finite(named: list[tuple[str, torch.Tensor]]) -> None:
    """Refuse a NaN or inf in a parameter: one reduction per tensor, one read for all of them (~0.1 ms per
    forward for the N-MNIST network, beside ~70 ms for an update)."""
    if not all_finite(*(p for _, p in named)):
        bad = next(n for n, p in named if not all_finite(p))
        raise ValueError(f"{bad} holds NaN or inf; the neurons would go silent instead of failing: "
                         "re-initialise it or lower the learning rate")


def _as_float(x: torch.Tensor | SpikeEvents) -> torch.Tensor | SpikeEvents:
    x = _checked(x)
    return x if isinstance(x, SpikeEvents) or x.dtype == torch.float32 else x.to(torch.float32)


class LIF(nn.Module):
    """LIF layer ``n_in → n_out``: weights ``[n_in, n_out]`` (as ``x @ W``) drawn from
    ``N(0, gain·(1 − β)/√n_in)`` (``gain/√n_in`` at β = 0), bias zero."""

    def __init__(self, n_in: int, n_out: int, beta: float = 0.95, theta: float = 1.0,
                 rule: spike.SpikeFunction | None = None, bias: bool = False, init_gain: float = 10.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        n_in, n_out = spike.integer("n_in", n_in, 1), spike.integer("n_out", n_out, 1)
        if problem := lif_problem(beta, theta):
            raise ValueError(problem)
        std = init_gain * ((1.0 - beta) if beta < 1.0 else 1.0) / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, std, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.beta, self.theta = float(beta), float(theta)
        self.rule = _rule(rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, n_out]`` of the dense layer, the rule as spike function on ``u − θ``."""
        x = _as_float(x)
        if isinstance(x, SpikeEvents):
            x.validate()
            x = x.dense()
        _check_finite([(n, p) for n, p in self.named_parameters()])
        current = x @ self.weight if self.bias is None else x @ self.weight + self.bias
        return self.rule(lif_membrane(current, self.beta, self.theta) - self.theta)

    def extra_repr(self) -> str:
        n_in, n_out = self.weight.shape
        return f"{n_in}, {n_out}, beta={self.beta:g}, theta={self.theta:g}, bias={self.bias is not None}"


class ConvLIF(nn.Module):
    """Convolutional LIF layer ``c_in → c_out`` with ``kernel × kernel`` kernels, ``stride`` and zero
    ``padding``: weights ``[c_out, c_in, K, K]`` (torch's ``conv2d`` layout) drawn from
    ``N(0, gain·(1 − β)/√(c_in·K²))`` (``gain/√(c_in·K²)`` at β = 0), bias ``[c_out]`` zero."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, beta: float = 0.95,
                 theta: float = 1.0, rule: spike.SpikeFunction | None = None, bias: bool = False,
                 init_gain: float = 10.0, generator: torch.Generator | None = None):
        super().__init__()
        c_in, c_out = spike.integer("c_in", c_in, 1), spike.integer("c_out", c_out, 1)
        kernel, stride = _side("kernel", kernel, 1), _side("stride", stride, 1)
        padding = _side("padding", padding, 0)
        if problem := lif_problem(beta, theta):
            raise ValueError(problem)
        fan_in = c_in * kernel * kernel
        std = init_gain * ((1.0 - beta) if beta < 1.0 else 1.0) / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel).normal_(0.0, std, generator=generator))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.stride, self.padding = int(stride), int(padding)
        self.beta, self.theta = float(beta), float(theta)
        self.rule = _rule(rule)

    def shape(self, height: int, width: int, pool: int = 1) -> ConvShape:
        """The layer's geometry on ``height × width`` inputs, its spikes pooled ``pool × pool``."""
        c_out, c_in, k, _ = self.weight.shape
        return ConvShape(c_in, height, width, c_out, k, self.stride, self.padding, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, c_out, H', W']`` of the dense layer for frames ``x [T, B, c_in, H, W]``, the rule
        as spike function on ``u − θ``."""
        if x.dim() != 5:
            raise ValueError(f"ConvLIF takes frames [T, B, C, H, W], got {tuple(x.shape)}")
        _check_finite([(n, p) for n, p in self.named_parameters()])
        shape = self.shape(x.shape[3], x.shape[4])
        current = conv_current(channels_last(x.float()), self.weight, self.bias, shape)
        s = self.rule(lif_membrane(current, self.beta, self.theta) - self.theta)
        return frames(s, shape.c_out, shape.out_height, shape.out_width)

    def extra_repr(self) -> str:
        c_out, c_in, k, _ = self.weight.shape
        return (f"{c_in}, {c_out}, kernel={k}, stride={self.stride}, padding={self.padding}, beta={self.beta:g}, "
                f"theta={self.theta:g}, bias={self.bias is not None}")


class SumPool2d(nn.Module):
    """Sum of the spikes over ``kernel × kernel`` windows with stride ``kernel`` (the counts go on as
    graded inputs); rows and columns past the last whole window are dropped."""

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = _side("kernel", kernel, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, H // k, W // k]``."""
        steps, batch = s.shape[:2]
        k = self.kernel
        pooled = torch.nn.functional.avg_pool2d(s.flatten(0, 1), k, k, divisor_override=1)
        return pooled.reshape(steps, batch, *pooled.shape[1:])

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


class Flatten(nn.Module):
    """Frames ``[T, B, C, H, W]`` → ``[T, B, H·W·C]``: the channels-last units the fully connected layers
    after a :class:`ConvLIF` take (on events, a no-op)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return channels_last(s)


class LeakyReadout(nn.Module):
    """Non-spiking leaky readout ``n_in → n_out``, reduced over time by ``max`` or ``sum``."""

    def __init__(self, n_in: int, n_out: int, beta: float = 0.9, reduce: str = "max", bias: bool = False,
                 init_gain: float = 10.0, generator: torch.Generator | None = None):
        super().__init__()
        n_in, n_out = spike.integer("n_in", n_in, 1), spike.integer("n_out", n_out, 1)
        if reduce not in ("max", "sum"):
            raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")
        if problem := readout_problem(beta):
            raise ValueError(problem)
        std = init_gain * (1.0 - beta) / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, std, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.beta, self.reduce = float(beta), reduce

    def readout(self) -> Readout:
        return Readout(self.weight, self.bias, self.beta, self.reduce)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_out]`` from spikes ``[T, B, n_in]``."""
        o = leaky_readout(_as_float(s), self.weight, self.beta)  # type: ignore[arg-type]
        return readout_logits(Stack((), self.readout()), o)


def _split_conv(layers: tuple[nn.Module, ...], names: str) -> tuple[list[tuple["ConvLIF", int]], list[nn.Module]]:
    """``(ConvLIF, pooling window)`` pairs of a leading conv part (closed by a Flatten), and the rest."""
    conv: list[tuple[ConvLIF, int]] = []
    i = 0
    while i < len(layers) and isinstance(layers[i], ConvLIF):
        pooled = i + 1 < len(layers) and isinstance(layers[i + 1], SumPool2d)
        conv.append((layers[i], layers[i + 1].kernel if pooled else 1))
        i += 2 if pooled else 1
    if conv:
        if i >= len(layers) or not isinstance(layers[i], Flatten):
            raise TypeError(f"the conv layers must end in nn.Flatten before the dense layers, got {names}")
        i += 1
    if any(isinstance(m, (ConvLIF, SumPool2d, Flatten)) for m in layers[i:]):
        raise TypeError(f"conv layers, pooling and Flatten come first, before the dense layers, got {names}")
    return conv, list(layers[i:])


class Sequential(nn.Module):
    """``[ConvLIF [SumPool2d], …, Flatten,] LIF, …, LIF, LeakyReadout`` run as one event-driven network;
    ``input_shape`` ``(C, H, W)`` of the frames when it starts with a :class:`ConvLIF` (taken from the
    first 5-D input if not given); ``backend`` as ``--backend`` (``auto``: the C++/CUDA event ops where
    they run, else the pure-PyTorch reference)."""

    def __init__(self, *layers: nn.Module, input_shape: tuple[int, int, int] | None = None, backend: str = "auto"):
        super().__init__()
        names = ", ".join(type(m).__name__ for m in layers)
        conv_part, rest = _split_conv(layers, names)
        if not rest or not isinstance(rest[-1], LeakyReadout) or not all(isinstance(m, LIF) for m in rest[:-1]) \
                or len(layers) < 2:
            raise TypeError("Sequential takes [nn.ConvLIF [nn.SumPool2d], …, nn.Flatten,] nn.LIF, …, nn.LIF followed "
                            f"by one nn.LeakyReadout, got {names}")
        for a, b in zip(rest[:-1], rest[1:]):
            if a.weight.shape[1] != b.weight.shape[0]:
                raise ValueError(f"layer sizes do not chain: {a.weight.shape[1]} outputs feed "
                                 f"{b.weight.shape[0]} inputs")
        for a, b in zip(conv_part, conv_part[1:]):
            if a[0].weight.shape[0] != b[0].weight.shape[1]:
                raise ValueError(f"conv channels do not chain: {a[0].weight.shape[0]} outputs feed "
                                 f"{b[0].weight.shape[1]} inputs")
        self.layers = nn.ModuleList(layers)
        self._conv = conv_part  # (ConvLIF, pooling window) per conv layer
        self._dense = rest
        if input_shape is not None:
            if not isinstance(input_shape, (tuple, list, torch.Size)) or len(input_shape) != 3:
                raise ValueError(f"input_shape must be (C, H, W), the frames' channels, height and width, got "
                                 f"{input_shape!r}")
            input_shape = tuple(spike.integer(f"input_shape[{i}]", v, 1) for i, v in enumerate(input_shape))
        self.input_shape = input_shape
        if self.input_shape is not None:
            self.conv_shapes()  # raises on geometry that does not fit
        names = [b.value for b in BackendName]
        if backend not in names:
            raise ValueError(f"backend must be one of {', '.join(map(repr, names))}, got {backend!r}")
        if backend == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("Sequential(backend='cuda') needs a CUDA device and torch finds none here; "
                                     "use backend='auto' (or 'cpp') on this machine")
        self.backend_name = backend
        self._backends: dict[tuple[str, bool], Backend] = {}

    def conv_shapes(self) -> list[ConvShape]:
        """Each conv layer's geometry, from ``input_shape``; the flattened width must feed the next layer."""
        if not self._conv:
            return []
        if self.input_shape is None:
            raise ValueError("a Sequential that starts with ConvLIF needs input_shape=(C, H, W), or frames "
                             "[T, B, C, H, W] as its first input")
        c, h, w = self.input_shape
        if c != self._conv[0][0].weight.shape[1]:
            raise ValueError(f"input_shape has {c} channels but the first ConvLIF takes {self._conv[0][0].weight.shape[1]}")
        shapes = []
        for layer, pool in self._conv:
            shapes.append(layer.shape(h, w, pool))
            c, h, w = shapes[-1].next_shape
        first = self._dense[0].weight.shape[0]
        if c * h * w != first:
            raise ValueError(f"the conv layers flatten to {c}×{h}×{w} = {c * h * w} units but "
                             f"{type(self._dense[0]).__name__} takes {first}")
        return shapes

    @classmethod
    def from_snn(cls, model: nn.Module, rule: spike.SpikeFunction, backend: str = "auto") -> "Sequential":
        """The layers of an :class:`lzo_bench.core.model.SNN`, sharing its parameters, every layer with
        ``rule``."""
        s = model.spec
        hidden = []
        for w in model.weights[:-1]:
            layer = LIF(w.shape[0], w.shape[1], s.beta, s.theta, rule)
            layer.weight = w
            hidden.append(layer)
        out = LeakyReadout(model.weights[-1].shape[0], model.weights[-1].shape[1], s.beta_out, s.reduce)
        out.weight = model.weights[-1]
        return cls(*hidden, out, backend=backend)

    def stack(self, training: bool) -> Stack:
        """The network as the backends run it; on a training forward each rule's key is taken and
        its counter advanced (once per rule, however many layers share it)."""
        hidden, seen = [], set()
        layers = [m for m, _ in self._conv] + list(self._dense[:-1])
        shapes = self.conv_shapes() + [None] * (len(self._dense) - 1)
        for lif, conv in zip(layers, shapes):
            rule = lif.rule
            spec = rule.spec if training else None
            key = DrawKey(rule.seed, rule.counter) if training else None
            hidden.append(Hidden(lif.weight, lif.bias, lif.beta, lif.theta, spec, key, conv))
        if training:
            for lif in layers:
                if id(lif.rule) not in seen:
                    seen.add(id(lif.rule))
                    lif.rule.counter += 1
        return Stack(tuple(hidden), self._dense[-1].readout())

    def _backend(self, device: torch.device, stack: Stack) -> Backend:
        specs = [h.spec for h in stack.hidden if h.spec is not None]
        custom = False
        for spec in specs:
            try:
                library.check_supported(spec)
            except library.UnsupportedGate:
                custom = True
        name = "torch" if custom and self.backend_name == "auto" else self.backend_name
        if name == "cuda" and device.type != "cuda":
            raise BackendUnavailable(f"backend='cuda' needs the network on a CUDA device (net.to('cuda')), but its "
                                     f"parameters are on device {device}")
        if name == "cpp" and device.type != "cpu":
            raise BackendUnavailable(f"backend='cpp' runs on the CPU, but the network's parameters are on device "
                                     f"{device}: use backend='cuda' or net.to('cpu')")
        cache = (f"{device}", name)
        if cache not in self._backends:
            self._backends[cache] = select_backend(name, device, specs[0] if specs else None)
        return self._backends[cache]

    def run(self, x: torch.Tensor | SpikeEvents) -> Forward:
        """Logits, spike counts per hidden layer, active entries and spikes (:class:`Forward`); a bool
        or uint8 ``x`` goes to the event compaction as it is (no float copy)."""
        if self._conv and not isinstance(x, SpikeEvents) and x.dim() == 5:
            if self.input_shape is None:
                self.input_shape = tuple(x.shape[2:])
                self.conv_shapes()
            elif tuple(x.shape[2:]) != self.input_shape:
                raise ValueError(f"frames are {tuple(x.shape[2:])} but input_shape is {self.input_shape}")
            x = channels_last(x)
        x = _checked(x)
        _check_finite(list(self.named_parameters()))
        # checked before the rules' counters advance; an input the event ops will read goes to events now,
        # where NaN/inf surface as event values (O(nnz)) instead of costing a pass over T·B·N
        if self.backend_name != "torch" and isinstance(x, torch.Tensor) and not x.requires_grad:
            x = as_events(x)
        else:
            check_input(x)
        stack = self.stack(self.training and torch.is_grad_enabled())
        backend = self._backend(stack.readout.weight.device, stack)
        if backend.network is not None:
            return backend.network(stack, x, None, None, checked=True)
        return dense_network(stack, x, backend.layer)

    def forward(self, x: torch.Tensor | SpikeEvents) -> torch.Tensor:
        """Logits ``[B, C]`` for input ``x [T, B, n_in]`` (or frames ``[T, B, C, H, W]``)."""
        return self.run(x).logits

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_backends"] = {}
        return state
