"""Issue 34, the API part: nothing silently wrong on the public surfaces (lzo_bench.nn, lzo_bench.spike,
SpikeEvents). Each group is one numbered defect of the issue: the input gradient on the C++ backend (2),
double backward (3), one validation of SpikeEvents (4, 10), no argument ignored or truncated (8), NaN/inf
refused (9), and one-line messages (17); the spike functions' own argument checks are in test_spike.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lzo_bench import nn, spike
from lzo_bench.core.events import SpikeEvents

EPS = torch.finfo(torch.float32).eps
RULES = {
    "surrogate": lambda seed: spike.Surrogate("normal", delta=0.3),
    "sparsegrad": lambda seed: spike.SparseGrad("laplace", delta=0.3),
    "localzo": lambda seed: spike.LocalZO(delta=0.3, dist="normal", m=3, seed=seed),
}
T, B, N_IN = 30, 4, 12


def _fc(rule: str, backend: str, dtype=torch.float32) -> nn.Sequential:
    """Two hidden layers, the first with a bias (its unit column must not reach the input gradient)."""
    g = torch.Generator().manual_seed(3)
    make = RULES[rule]
    net = nn.Sequential(nn.LIF(N_IN, 20, beta=0.9, rule=make(1), bias=True, generator=g),
                        nn.LIF(20, 16, beta=0.5, theta=0.8, rule=make(2), generator=g),
                        nn.LeakyReadout(16, 3, beta=0.9, generator=g), backend=backend)
    with torch.no_grad():
        net.layers[0].bias.normal_(0.0, 0.3, generator=g)
    return net.to(dtype)


def _conv(rule: str, backend: str, dtype=torch.float32) -> nn.Sequential:
    g = torch.Generator().manual_seed(4)
    make = RULES[rule]
    net = nn.Sequential(nn.ConvLIF(2, 4, 3, padding=1, beta=0.9, rule=make(1), bias=True, init_gain=6.0, generator=g),
                        nn.SumPool2d(2), nn.Flatten(),
                        nn.LIF(4 * 3 * 3, 10, beta=0.8, rule=make(2), generator=g),
                        nn.LeakyReadout(10, 3, generator=g), input_shape=(2, 6, 6), backend=backend)
    with torch.no_grad():
        net.layers[0].bias.normal_(0.0, 0.3, generator=g)
    return net.to(dtype)


def _fc_input(dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return (torch.rand(T, B, N_IN, generator=g) * (torch.rand(T, B, N_IN, generator=g) < 0.4)).to(dtype)


def _conv_input(dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(6)
    return (torch.rand(12, 3, 2, 6, 6, generator=g) * (torch.rand(12, 3, 2, 6, 6, generator=g) < 0.4)).to(dtype)


def _input_grad(net: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_()
    out = net.run(x)
    (out.logits.square().sum() + 0.1 * sum(c.sum() for c in out.counts)).backward()
    assert x.grad is not None, "no gradient reached the input"
    return x.grad, out.spikes


def _close(got: torch.Tensor, want: torch.Tensor, depth: int) -> None:
    """Equal to float32 rounding: a sum of ``depth`` float32 terms is exact to ``depth·eps`` of its largest
    magnitude (the β-filter over T steps, then the product over the layer's neurons)."""
    scale = float(want.abs().max())
    assert scale > 0
    torch.testing.assert_close(got.double(), want.double(), rtol=depth * EPS, atol=depth * EPS * scale)


# ---- (2) the input gradient on the C++ backend ----

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_the_cpp_backend_gives_the_input_its_gradient_as_the_torch_backend_does(arch, rule):
    """x.grad on the C++ event ops equals the torch backend's and float64 autograd of the reference."""
    build, make_x = (_fc, _fc_input) if arch == "fc" else (_conv, _conv_input)
    got, s_cpp = _input_grad(build(rule, "cpp"), make_x())
    want, s_ref = _input_grad(build(rule, "torch"), make_x())
    exact, s64 = _input_grad(build(rule, "torch", torch.float64), make_x(torch.float64))
    for a, b, c in zip(s_cpp, s_ref, s64):
        a = a.dense() if isinstance(a, SpikeEvents) else a
        assert torch.equal(a, b) and torch.equal(b, c.float()) and b.sum() > 0
    depth = T + 20 if arch == "fc" else 12 + 4 * 9
    _close(got, want, depth)
    _close(got, exact, depth)
    assert got.dtype == torch.float32 and got.shape == make_x().shape


def test_a_linear_layer_in_front_of_the_sequential_learns_on_the_cpp_backend():
    """The input gradient flows into a trainable layer in front: its weight.grad equals the torch backend's."""
    grads = {}
    for backend in ("cpp", "torch"):
        torch.manual_seed(0)
        front = torch.nn.Linear(7, N_IN)
        net = _fc("localzo", backend)
        x = _fc_input()[..., :7]
        net(front(x)).square().sum().backward()
        assert front.weight.grad is not None, backend
        grads[backend] = front.weight.grad
    _close(grads["cpp"], grads["torch"], T * B + 20)


def test_events_and_spike_tensors_need_no_input_gradient():
    net = _fc("localzo", "cpp")
    x = _fc_input() > 0
    net(x).sum().backward()  # bool input: nothing to differentiate, no error
    assert net.layers[0].weight.grad is not None


# ---- (3) double backward ----

def test_double_backward_through_the_cpp_backend_is_refused_naming_the_backend():
    net = _fc("sparsegrad", "cpp")
    loss = net(_fc_input()).square().sum()
    with pytest.raises(RuntimeError, match="the cpp backend's event ops have no second derivative; use backend='torch'"):
        torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
    ref = _fc("sparsegrad", "torch")
    grads = torch.autograd.grad(ref(_fc_input()).square().sum(), list(ref.parameters()), create_graph=True)
    assert any(g.requires_grad for g in grads)


# ---- (4, 10) one validation of SpikeEvents ----

def _events() -> SpikeEvents:
    x = _fc_input() > 0
    return SpikeEvents.from_keys((x.transpose(0, 1).reshape(-1, N_IN).nonzero() * torch.tensor([N_IN, 1])).sum(1),
                                 T, B, N_IN)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("mutate,match", [
    (lambda e: e.ptr.__setitem__(5, e.ptr[4] - 1) if e.ptr[5] >= e.ptr[4] else None, "must not decrease"),
    (lambda e: e.ptr.__setitem__(0, 1), r"ptr\[0\] must be 0"),
    (lambda e: e.ptr.__setitem__(-1, e.ptr[-1] - 1), r"ptr\[-1\] must equal the number of events"),
    (lambda e: e.col.__setitem__(3, N_IN), r"col must lie in \[0, 12\)"),
    (lambda e: e.col.__setitem__(3, -1), r"col must lie in \[0, 12\)"),
])
def test_bad_user_events_are_refused_before_any_op_runs(backend, mutate, match):
    e = _events()
    mutate(e)
    with pytest.raises(ValueError, match=match):
        _fc("localzo", backend)(e)


def test_bad_event_lists_are_refused_at_construction():
    e = _events()
    with pytest.raises(ValueError, match="ptr must be a 1-D int32 tensor"):
        SpikeEvents(e.ptr.long(), e.col, e.val, T, B, N_IN)
    with pytest.raises(ValueError, match="col must be a 1-D int32 tensor"):
        SpikeEvents(e.ptr, e.col.long(), e.val, T, B, N_IN)
    with pytest.raises(ValueError, match="val must be empty or hold one value per event"):
        SpikeEvents(e.ptr, e.col, torch.ones(3), T, B, N_IN)
    with pytest.raises(ValueError, match="val must be a 1-D float32 tensor"):
        SpikeEvents(e.ptr, e.col, torch.ones(e.col.numel(), dtype=torch.float64), T, B, N_IN)
    bad = SpikeEvents(e.ptr, e.col, torch.full((e.col.numel(),), float("nan")), T, B, N_IN)
    with pytest.raises(ValueError, match="val must be finite"):
        bad.validate()
    e.validate()  # a good list passes


def test_a_row_pointer_past_the_events_is_refused_not_a_segfault():
    """ptr[5] = ptr[-1] + 100 read past the event list in lzo::lif_events_forward (a segfault): in a child
    process, so a crash fails this test instead of ending pytest."""
    code = (
        "import torch\n"
        "from lzo_bench import nn, spike\n"
        "from lzo_bench.core.events import SpikeEvents\n"
        "x = torch.rand(30, 4, 12, generator=torch.Generator().manual_seed(5)) < 0.3\n"
        "key = (x.transpose(0, 1).reshape(-1, 12).nonzero() * torch.tensor([12, 1])).sum(1)\n"
        "e = SpikeEvents.from_keys(key, 30, 4, 12)\n"
        "e.ptr[5] = e.ptr[-1] + 100\n"
        "net = nn.Sequential(nn.LIF(12, 20, rule=spike.LocalZO()), nn.LeakyReadout(20, 3), backend='cpp')\n"
        "try:\n"
        "    net(e)\n"
        "except ValueError as err:\n"
        "    print('refused:', err)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "refused:" in r.stdout and "must not decrease" in r.stdout, r.stdout + r.stderr[-2000:]


# ---- (8) no argument ignored or truncated ----

@pytest.mark.parametrize("make,match", [
    (lambda: nn.ConvLIF(1, 4, 3, stride=1.5), "stride must be an integer"),
    (lambda: nn.ConvLIF(1, 4, 3.5), "kernel must be an integer"),
    (lambda: nn.ConvLIF(1, 4, 3, padding=0.5), "padding must be an integer"),
    (lambda: nn.SumPool2d(2.7), "kernel must be an integer"),
    (lambda: nn.SumPool2d(True), "kernel must be an integer"),
])
def test_non_integral_integers_are_refused(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_integral_numpy_integers_are_taken():
    assert nn.ConvLIF(1, 4, np.int32(3), stride=np.int64(2)).stride == 2
    assert nn.SumPool2d(np.int64(2)).kernel == 2
    assert nn.ConvLIF(1, 4, (3, 3)).weight.shape == (4, 1, 3, 3)  # a square tuple is its side
    with pytest.raises(ValueError, match=r"kernel must be square.* got \(3, 5\)"):
        nn.ConvLIF(1, 4, (3, 5))


# ---- (9) NaN / inf ----

@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_non_finite_inputs_and_weights_are_refused(backend):
    net = _fc("localzo", backend)
    x = _fc_input()
    x[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="input holds NaN or inf"):
        net(x)
    e = _events()
    e = SpikeEvents(e.ptr, e.col, torch.ones(e.col.numel()), T, B, N_IN)
    e.val[0] = float("inf")
    with pytest.raises(ValueError, match="val must be finite"):
        net(e)
    with torch.no_grad():
        net.layers[1].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"layers.1.weight holds NaN or inf"):
        net(_fc_input())


def test_a_lone_lif_refuses_non_finite_weights():
    layer = nn.LIF(4, 3)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight holds NaN or inf"):
        layer(torch.ones(2, 1, 4))


# ---- (17) one-line messages ----

@pytest.mark.parametrize("make,error,match", [
    (lambda: nn.LeakyReadout(0, 5), ValueError, "n_in must be ≥ 1"),
    (lambda: nn.LeakyReadout(-1, 5), ValueError, "n_in must be ≥ 1"),
    (lambda: nn.LIF(2.5, 5), TypeError, "n_in must be an integer"),
    (lambda: nn.LIF(4, 0), ValueError, "n_out must be ≥ 1"),
    (lambda: nn.LIF(4, 3, rule="localzo"), TypeError, "rule must be a spike function"),
    (lambda: nn.ConvLIF(1, 4, 3, rule="localzo"), TypeError, "rule must be a spike function"),
    (lambda: nn.Sequential(nn.ConvLIF(1, 2, 3), nn.Flatten(), nn.LeakyReadout(72, 2), input_shape=(1, 8)),
     ValueError, r"input_shape must be \(C, H, W\)"),
    (lambda: nn.Sequential(nn.LIF(4, 3), nn.LeakyReadout(3, 2), backend="gpu"), ValueError, "backend must be one of"),
])
def test_bad_arguments_are_refused_at_construction_in_one_line(make, error, match):
    with pytest.raises(error, match=match) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_backend_cuda_without_a_gpu_names_the_argument():
    with pytest.raises(RuntimeError, match=r"Sequential\(backend='cuda'\) needs a CUDA device"):
        nn.Sequential(nn.LIF(4, 3), nn.LeakyReadout(3, 2), backend="cuda")


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_zero_steps_are_refused_naming_the_shape(backend):
    with pytest.raises(ValueError, match=r"T = 0 time steps .* \(0, 4, 12\)"):
        _fc("localzo", backend)(torch.zeros(0, 4, N_IN))
    with pytest.raises(ValueError, match=r"T = 0 time steps"):
        _conv("localzo", backend)(torch.zeros(0, 3, 2, 6, 6))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_an_empty_batch_gives_empty_logits_for_fc_and_conv(backend):
    """B = 0 runs forward and backward on both backends, fully connected and conv."""
    for net, x in ((_fc("localzo", backend), torch.zeros(5, 0, N_IN)),
                   (_conv("localzo", backend), torch.zeros(5, 0, 2, 6, 6))):
        logits = net(x)
        assert logits.shape == (0, 3)
        logits.sum().backward()
        assert all(p.grad is not None and not p.grad.any() for p in net.parameters())


@pytest.mark.parametrize("rule", ["localzo", "surrogate"])
def test_backward_in_eval_mode_gives_the_torch_backends_gradients(rule):
    """eval() does not switch gradients off in torch: the readout learns, the hidden layers (no rule at
    inference) get none, on both backends."""
    got = {}
    for backend in ("cpp", "torch"):
        net = _fc(rule, backend).eval()
        net(_fc_input()).square().sum().backward()
        got[backend] = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    for a, b in zip(got["cpp"], got["torch"]):
        assert (a is None) == (b is None)
        if b is not None:
            _close(a, b, T + 16)
    assert got["cpp"][-1] is not None
