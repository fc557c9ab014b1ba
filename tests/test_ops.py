"""The lzo C++/CUDA ops against the pure-PyTorch reference (the correctness oracle).

Every test runs on the CPU build and, when a GPU is present, repeats on CUDA (``DEVICES``).
Tolerance: rtol 1e-5 / atol 1e-6 in float32, as the issue states; spikes must be identical.
"""

import os
import subprocess
import sys

import pytest
import torch

from lzo_bench import ops
from lzo_bench.backends import BackendUnavailable, extension_layer, select_backend
from lzo_bench.gates import GateSpec, gate_values
from lzo_bench.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.rng import DrawKey

ops.build()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [
    ("surrogate", "normal", 1), ("surrogate", "laplace", 1), ("surrogate", "sigmoid", 1),
    ("sparsegrad", "normal", 1), ("sparsegrad", "uniform", 5), ("sparsegrad", "fast-sigmoid", 1),
    ("localzo", "normal", 1), ("localzo", "uniform", 1), ("localzo", "laplace", 5),
    ("localzo", "sigmoid", 1), ("localzo", "fast-sigmoid", 2),
]
SHAPES = [  # T, B, n_in, hidden
    (17, 5, 9, (7, 6)),
    (1, 4, 6, (5, 5)),        # T = 1
    (12, 1, 8, (4, 9)),       # B = 1, N_in ≠ N
    (30, 3, 11, (13, 5, 8)),  # three hidden layers
]


def grads(model, x, y, spec, key, backend):
    model.zero_grad(set_to_none=True)
    out = model(x, spec, key, backend)
    loss = classification_loss(out.logits, y) + SpikeRegularizer(f_up=0.3)(out.counts)
    loss.backward()
    return out, [w.grad.clone() for w in model.weights]


def compare(spec, shape, device, x_transform=lambda x: x, seed=0):
    steps, batch, n_in, hidden = shape
    net = NetworkSpec(n_in, hidden, 4, beta=0.9, beta_out=0.85, init="uniform", init_gain=3.0)
    model = SNN(net, torch.Generator().manual_seed(seed)).to(device)
    x = (torch.rand(steps, batch, n_in, generator=torch.Generator().manual_seed(seed + 1)) < 0.35).float()
    x = x_transform(x.to(device))
    y = torch.arange(batch, device=device) % 4
    key = DrawKey(7, 11)
    ext = select_backend("auto", device, spec)
    assert ext.name == ("cuda" if device == "cuda" else "cpp")
    ref_out, ref_grads = grads(model, x, y, spec, key, None)
    ext_out, ext_grads = grads(model, x, y, spec, key, ext)
    for a, b in zip(ext_out.spikes, ref_out.spikes):
        assert torch.equal(a.detach(), b.detach())
    assert ext_out.active == ref_out.active
    for a, b in zip(ext_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return ref_out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method,dist,m", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=["base", "T1", "B1", "deep"])
def test_gradients_equal_reference(device, method, dist, m, shape):
    compare(GateSpec.build(method, dist, delta=0.4, samples=m), shape, device)


@pytest.mark.parametrize("device", DEVICES)
def test_no_active_neuron_at_all(device):
    out = compare(GateSpec.build("localzo", "normal", delta=1e-9), SHAPES[0], device)
    assert out.active == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_every_neuron_active(device):
    spec = GateSpec.build("sparsegrad", "laplace", delta=5.0, bth=1e9)
    out = compare(spec, SHAPES[0], device)
    steps, batch, _, hidden = SHAPES[0]
    assert out.active == [steps * batch * n for n in hidden]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    spec = GateSpec.build("localzo", "laplace", delta=0.4)
    compare(spec, SHAPES[0], device, lambda x: x.transpose(0, 1).contiguous().transpose(0, 1))
    compare(spec, SHAPES[0], device, lambda x: torch.cat([x, x], 2)[:, :, ::2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dist", ["normal", "uniform", "laplace", "sigmoid", "fast-sigmoid"])
def test_draws_identical_to_reference(device, dist):
    """The kernels' LocalZO gates at the active entries are the reference's gates there."""
    spec = GateSpec.build("localzo", dist, delta=0.5, samples=3)
    x = (torch.rand(20, 6, 10, generator=torch.Generator().manual_seed(3)) < 0.4).float().to(device)
    w = (torch.rand(10, 12, generator=torch.Generator().manual_seed(4)) * 2 - 1).to(device)
    key = DrawKey(123456789012, 77)
    _, idx, gate, _, _ = ops.lif_forward(x, w, 0.9, 1.0, spec, key, 2)
    from lzo_bench.lif import lif_potentials

    v = lif_potentials((x.reshape(120, 10) @ w).view(20, 6, 12), 0.9, 1.0)
    ref = gate_values(v, spec, key, 2).reshape(-1)
    assert torch.equal(idx, ref.nonzero().view(-1))
    torch.testing.assert_close(gate, ref[idx], rtol=1e-6, atol=0)


def _sample_args(method: int, device="cpu"):
    x = (torch.rand(5, 3, 4) < 0.5).float().to(device)
    w = torch.randn(4, 6, device=device, requires_grad=True)
    return (x, w, x.new_empty((0,)), None, 0.9, 1.0, method, 0, 0, 0.5, 0.4, 0.0, 2.7, 1.0, 1, 1, 3, 4, 0)


@pytest.mark.parametrize("method", [-1, 0, 1, 2])
def test_opcheck_forward(method):
    torch.library.opcheck(torch.ops.lzo.lif_forward.default, _sample_args(method))


def test_opcheck_forward_with_table_and_prev_idx():
    spec = GateSpec.build("localzo", "sigmoid", delta=0.5)
    x = (torch.rand(5, 3, 4) < 0.5).float()
    w = torch.randn(4, 6, requires_grad=True)
    prev = torch.tensor([0, 5, 17, 40], dtype=torch.int64)
    args = (x, w, spec.dist.table, prev, 0.9, 1.0, 2, 3, 3, 0.5, spec.bth, float(dict(spec.dist.surrogate.params)["k"]),
            spec.band(), spec.dist.scale, 1, 1, 3, 4, 1)
    torch.library.opcheck(torch.ops.lzo.lif_forward.default, args)


@pytest.mark.parametrize("method,input_grad", [(0, True), (0, False), (1, True), (2, False)])
def test_opcheck_backward(method, input_grad):
    x, w, *_ = _sample_args(method)
    no_i = torch.zeros(0, dtype=torch.int64)
    if method == 0:
        dense_x, in_idx, in_val, idx, gate = x, no_i, torch.zeros(0), no_i, torch.rand(5, 3, 6)
    else:
        dense_x = torch.zeros(0)
        in_idx = torch.tensor([0, 3, 13, 40], dtype=torch.int64)
        in_val = torch.ones(4)
        idx = torch.tensor([1, 7, 30, 80], dtype=torch.int64)
        gate = torch.rand(4)
    prev = torch.tensor([2, 9, 33], dtype=torch.int64) if method and input_grad else None
    args = (torch.randn(5, 3, 6), dense_x, in_idx, in_val, w.detach(), idx, gate, prev, 0.9, method, input_grad)
    torch.library.opcheck(torch.ops.lzo.lif_backward.default, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_training_step():
    spec = GateSpec.build("localzo", "normal", delta=0.5)
    key = DrawKey(1, 2)

    def loss_fn(x, w1, w2, g):
        s1, i1, *_ = ops.lif_forward(x, w1, 0.9, 1.0, spec, key, 0)
        s2, *_ = ops.lif_forward(s1, w2, 0.9, 1.0, spec, key, 1, i1)
        return (s2 * g).sum()

    x = (torch.rand(6, 3, 5, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    w1 = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
    w2 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2)).requires_grad_()
    g = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(3))
    loss_fn(x, w1, w2, g).backward()
    eager = [w1.grad.clone(), w2.grad.clone()]
    assert eager[0].abs().max() > 0
    w1.grad = w2.grad = None
    compiled = torch.compile(loss_fn, fullgraph=True)
    compiled(x, w1, w2, g).backward()
    torch.testing.assert_close(w1.grad, eager[0])
    torch.testing.assert_close(w2.grad, eager[1])


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(x=a["x"].double()), "x must be a float32 tensor"),
    (lambda a: a.update(w=a["w"].half()), "weight must be a float32 tensor"),
    (lambda a: a.update(x=a["x"][0]), r"x must have shape \[T, B, N_in\], got rank 2"),
    (lambda a: a.update(w=a["w"][0]), r"weight must have shape \[N_in, N\], got rank 1"),
    (lambda a: a.update(w=torch.randn(5, 6)), r"weight.size\(0\) \(5\) must equal x.size\(2\) = N_in \(4\)"),
    (lambda a: a.update(w=torch.randn(4, 6, device="meta")), "weight is on meta but x is on cpu"),
    (lambda a: a.update(samples=0), r"samples must lie in \[1, 65535\]"),
    (lambda a: a.update(method=7), "method must be -1"),
])
def test_bad_input_raises_named_errors(mutate, match):
    a = {"x": (torch.rand(5, 3, 4) < 0.5).float(), "w": torch.randn(4, 6), "samples": 1, "method": 2}
    mutate(a)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.lzo.lif_forward(a["x"], a["w"], torch.empty(0), None, 0.9, 1.0, a["method"], 0, 0, 0.5, 0.4,
                                  0.0, 2.7, 1.0, a["samples"], 1, 3, 4, 0)


def test_backward_bad_input():
    no_i = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="grad_spikes must be a float32 tensor"):
        torch.ops.lzo.lif_backward(torch.zeros(2, 2, 3, dtype=torch.int32), torch.zeros(0), no_i, torch.zeros(0),
                                   torch.zeros(4, 3), no_i, torch.zeros(0), None, 0.9, 1, False)
    with pytest.raises(RuntimeError, match="active_gate must be 1-D with one value per active index"):
        torch.ops.lzo.lif_backward(torch.zeros(2, 2, 3), torch.zeros(0), no_i, torch.zeros(0), torch.zeros(4, 3),
                                   torch.zeros(2, dtype=torch.int64), torch.zeros(3), None, 0.9, 1, False)
    with pytest.raises(RuntimeError, match="input_val must hold one value per input_idx entry"):
        torch.ops.lzo.lif_backward(torch.zeros(2, 2, 3), torch.zeros(0), torch.zeros(2, dtype=torch.int64),
                                   torch.zeros(1), torch.zeros(4, 3), no_i, torch.zeros(0), None, 0.9, 1, False)
    with pytest.raises(RuntimeError, match=r"x must be \[T, B, N_in\] matching grad_spikes and weight"):
        torch.ops.lzo.lif_backward(torch.zeros(2, 2, 3), torch.zeros(2, 2, 5), no_i, torch.zeros(0), torch.zeros(4, 3),
                                   no_i, torch.zeros(2, 2, 3), None, 0.9, 0, False)


def test_backend_selection_and_reasons():
    assert select_backend("auto", "cpu", GateSpec.build("localzo")).name == "cpp"
    assert select_backend("torch", "cpu").name == "torch"
    from lzo_bench.surrogates import custom
    from lzo_bench.theory import theorem3_distribution
    import numpy as np

    tri = theorem3_distribution(custom("triangle", lambda u: np.maximum(0, 1 - np.abs(u) / 0.1) / 0.1), 0.05, -1)
    spec = GateSpec(GateSpec.build("localzo").method, tri, 0.05, 1, 0.05)
    fallback = select_backend("auto", "cpu", spec)
    assert fallback.name == "torch" and "has no C++ form" in fallback.reason
    with pytest.raises(BackendUnavailable, match="has no C\\+\\+ form"):
        select_backend("cpp", "cpu", spec)
    with pytest.raises(BackendUnavailable, match="--backend cuda needs --device cuda"):
        select_backend("cuda", "cpu", spec)
    assert extension_layer is select_backend("cpp", "cpu").layer


@pytest.mark.skipif(ops.cuda_toolchain() is not None, reason=f"no CUDA toolchain: {ops.cuda_toolchain()}")
def test_cuda_sources_compile_and_link():
    """Compile-only check of kernels/lif_cuda.cu and snn_cuda.cu (no GPU needed): build and load the
    CUDA variant in a fresh process and confirm the CUDA kernels are registered with the dispatcher."""
    env = dict(os.environ)
    if "CUDA_HOME" not in env and os.path.isdir("/usr/local/cuda"):
        env["CUDA_HOME"] = "/usr/local/cuda"
    code = (
        "import torch; from lzo_bench import ops; e = ops.build(cuda=True); "
        "assert e.cuda; "
        "ops = ['lif_forward', 'lif_backward', 'to_events', 'lif_events_forward', 'readout_forward', "
        "'readout_backward', 'lif_sparse_backward', 'lif_dense_backward']; "
        "print(*[torch._C._dispatch_has_kernel_for_dispatch_key('lzo::' + o, 'CUDA') for o in ops])"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == " ".join(["True"] * 8)
