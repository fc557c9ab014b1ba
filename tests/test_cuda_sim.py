"""The CUDA kernels (kernels/snn_cuda_kernels.cuh) executed on the CPU by the CUDA execution simulator
(kernels/cuda_sim.h: a block's threads as OS threads, real barriers and warp votes, atomics) through
``torch.ops.lzo_sim``, against the pure-PyTorch reference — the CUDA test cases in CI, where no GPU
is: T = 80 (past the CPU's re-basing span), m > 1, layers 40 and 300 wide (several blocks and input
tiles at 64 threads a block), graded input, empty and all-active lists, duplicate columns, the GEMM
current, the deterministic mode, and grids capped at 1 and 2 blocks so every grid-stride loop takes
several passes."""

import subprocess
import sys

import pytest
import torch

from lzo_bench import ops
from lzo_bench.backends import cuda_simulator
from lzo_bench.event_network import as_events, event_network
from lzo_bench.events import SpikeEvents
from lzo_bench.gates import GateSpec
from lzo_bench.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.rng import DrawKey

SIM = cuda_simulator()
LIB = torch.ops.lzo_sim


def make(steps, batch, n_in, hidden, seed=0, density=0.2, values=False, gain=2.0, beta=0.9):
    net = NetworkSpec(n_in, hidden, 4, beta=beta, beta_out=0.85, init="uniform", init_gain=gain)
    model = SNN(net, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(steps, batch, n_in, generator=gen) < density).float()
    if values:
        x = x * torch.where(torch.rand(x.shape, generator=gen) < 0.5, 0.5, 2.0)
    return model, x, torch.arange(batch) % 4


def step(model, x, y, spec, backend):
    model.zero_grad(set_to_none=True)
    out = model(x, spec, DrawKey(5, 9), backend)
    (classification_loss(out.logits, y) + SpikeRegularizer(f_up=0.3)(out.counts)).backward()
    return out, [w.grad.clone() for w in model.weights]


def assert_sim_equals_reference(spec, model, x, y, backend=SIM):
    ref, g_ref = step(model, x, y, spec, None)
    sim_model = SNN(model.spec)
    sim_model.load_state_dict(model.state_dict())
    out, g_sim = step(sim_model, x, y, spec, backend)
    for a, b in zip(out.spikes, ref.spikes):
        assert torch.equal(a, b.detach()), "spikes differ"
    assert out.active == ref.active
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_sim, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return ref


@pytest.mark.parametrize("method,dist,m", [
    ("surrogate", "normal", 1), ("surrogate", "sigmoid", 1), ("sparsegrad", "laplace", 5), ("sparsegrad", "fast-sigmoid", 1),
    ("localzo", "normal", 1), ("localzo", "normal", 5), ("localzo", "uniform", 3), ("localzo", "sigmoid", 2),
])
def test_long_sequences(method, dist, m):
    spec = GateSpec.build(method, dist, delta=0.4, samples=m)
    model, x, y = make(80, 3, 11, (13, 9))
    ref = assert_sim_equals_reference(spec, model, x, y)
    if spec.is_sparse:
        assert all(a > 0 for a in ref.active)


@pytest.mark.parametrize("method", ["surrogate", "sparsegrad", "localzo"])
def test_wide_layers_several_blocks_and_tiles(method):
    """300 inputs and 300 / 40 neurons: five input tiles and neuron chunks of 64 threads."""
    model, x, y = make(30, 2, 300, (300, 40), seed=11, density=0.05)
    ref = assert_sim_equals_reference(GateSpec.build(method, "normal", delta=0.4), model, x, y)
    assert not GateSpec.build(method, "normal").is_sparse or all(a > 0 for a in ref.active)


@pytest.mark.parametrize("method", ["surrogate", "localzo"])
def test_graded_input(method):
    model, x, y = make(40, 3, 7, (9, 6), seed=3, values=True)
    assert as_events(x).val.numel() > 0
    assert_sim_equals_reference(GateSpec.build(method, "laplace", delta=0.4, samples=2), model, x, y)


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("method", ["surrogate", "sparsegrad", "localzo"])
def test_grid_stride_loops_take_several_passes(method, blocks):
    old = LIB.set_cuda_max_grid(blocks)
    try:
        model, x, y = make(35, 5, 70, (70, 33), seed=6)
        assert_sim_equals_reference(GateSpec.build(method, "normal", delta=0.4, samples=2), model, x, y)
    finally:
        LIB.set_cuda_max_grid(old)


def test_empty_lists_no_input_events():
    """No input event: no spike, no active entry, zero gradients, nothing read past an empty list."""
    model, x, y = make(20, 2, 8, (6, 5))
    x.zero_()
    for method in ("sparsegrad", "localzo", "surrogate"):
        spec = GateSpec.build(method, "normal", delta=0.4)
        ref = assert_sim_equals_reference(spec, model, x, y)
        assert all(int(c.sum()) == 0 for c in ref.counts)


def test_all_active_lists():
    """A band wider than every potential: every entry is active, the lists fill to their bound."""
    model, x, y = make(25, 2, 9, (7, 6), seed=2)
    spec = GateSpec.build("sparsegrad", "normal", delta=0.4, bth=1e6)
    ref = assert_sim_equals_reference(spec, model, x, y)
    assert ref.active == [25 * 2 * 7, 25 * 2 * 6]


def test_gemm_current():
    model, x, y = make(35, 3, 10, (8, 7), seed=5)
    gemm = type(SIM)(SIM.name, SIM.layer, SIM.reason,
                     lambda m, xx, s, k: event_network(m, xx, s, k, current="gemm", lib=LIB))
    for method in ("surrogate", "localzo"):
        assert_sim_equals_reference(GateSpec.build(method, "normal", delta=0.4), model, x, y, backend=gemm)


def test_duplicate_columns_add_like_the_cpu_ops():
    ptr = torch.tensor([0, 1, 4, 5, 8, 9, 10], dtype=torch.int32)
    col = torch.tensor([1, 2, 3, 2, 0, 0, 0, 0, 3, 1], dtype=torch.int32)
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    spec = GateSpec.build("surrogate", "normal", delta=0.4)
    table, *params = ops.gate_args(spec, None, torch.device("cpu"))
    for mode in (1, 2):
        cpu = torch.ops.lzo.lif_events_forward(ptr, col, torch.zeros(0), w, table, 3, 0.9, 1.0, *params, 0, mode)
        sim = LIB.lif_events_forward(ptr, col, torch.zeros(0), w, table, 3, 0.9, 1.0, *params, 0, mode)
        torch.testing.assert_close(sim[6], cpu[6], rtol=1e-5, atol=0)  # dense gates: expf vs the CPU's polynomial
        grad = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
        dw_cpu = torch.ops.lzo.lif_dense_backward(grad, cpu[6], torch.zeros(0), ptr, col, torch.zeros(0), w, 0.9, 3, False, mode)[0]
        dw_sim = LIB.lif_dense_backward(grad, sim[6], torch.zeros(0), ptr, col, torch.zeros(0), w, 0.9, 3, False, mode)[0]
        torch.testing.assert_close(dw_sim, dw_cpu, rtol=1e-5, atol=1e-6)


def test_to_events_equals_the_cpu_compaction():
    x = (torch.rand(13, 5, 70, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    x[2, 1, 3] = 0.25
    for a, b in zip(LIB.to_events(x), torch.ops.lzo.to_events(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["sparsegrad", "localzo"])
def test_deterministic_mode_is_bitwise_repeatable(method):
    spec = GateSpec.build(method, "normal", delta=0.4)
    model, x, y = make(40, 4, 11, (13, 9), seed=4)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = [step(model, x, y, spec, SIM)[1] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    _, g_ref = step(model, x, y, spec, None)
    for a, b in zip(grads[0], g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ptr,message", [
    ([0, 5, 2, 3], "row pointers must not decrease"),
    ([0, 1, 2, 9], "ptr[B*T] must not exceed the number of columns"),
    ([1, 1, 2, 3], "ptr[0] must be 0"),
])
def test_a_bad_list_stops_at_a_device_assert(ptr, message):
    """The device-side validation of a list from outside (finding 7): in a child process, since a
    device assert ends the process as it ends a CUDA context."""
    code = ("import torch; from lzo_bench.backends import cuda_simulator; cuda_simulator(); "
            f"ptr = torch.tensor({ptr}, dtype=torch.int32); col = torch.zeros(3, dtype=torch.int32); "
            "torch.ops.lzo_sim.readout_forward(ptr, col, torch.randn(4, 2), 3, 0.9)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert f"cuda_sim: device assert failed" in r.stderr and message in r.stderr, r.stderr[-2000:]


def test_a_column_outside_the_layer_stops_at_a_device_assert():
    code = ("import torch; from lzo_bench.backends import cuda_simulator; cuda_simulator(); "
            "ptr = torch.tensor([0, 1, 2, 3], dtype=torch.int32); col = torch.tensor([0, 7, 1], dtype=torch.int32); "
            "torch.ops.lzo_sim.readout_forward(ptr, col, torch.randn(4, 2), 3, 0.9)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "a column is outside [0, width)" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("dist", ["normal", "laplace", "sigmoid"])
def test_gates_flush_where_the_cpu_flushes(dist):
    """Potentials around the exponential's underflow (exp(x) < FLT_MIN below x = -87.33): the CUDA
    kernels flushed c·exp(x) instead of exp(x) (finding 8), so for c > 1 (δ < 0.4) they kept gate
    values the CPU drops."""
    spec = GateSpec.build("surrogate", dist, delta=0.05)
    if dist == "sigmoid":  # e = exp(-k|v|)
        edge = 87.33 / ops._kinds(spec)[2]
    else:  # exp(-v^2 / (2 delta^2)), exp(-sqrt2 |v| / delta)
        edge = (2 * 87.33) ** 0.5 * 0.05 if dist == "normal" else 87.33 / 2**0.5 * 0.05
    w = (1.0 + torch.linspace(-1.03 * edge, -0.97 * edge, 512)).view(1, -1)  # one event at t = 0: v = W - θ
    ptr, col = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    table, *params = ops.gate_args(spec, None, torch.device("cpu"))
    cpu, sim = (lib.lif_events_forward(ptr, col, torch.zeros(0), w, table, 1, 0.9, 1.0, *params, 0, 0)[6]
                for lib in (torch.ops.lzo, LIB))
    assert (cpu == 0).any() and (cpu != 0).any(), "the grid must straddle the flush"
    assert torch.equal(cpu == 0, sim == 0)
    torch.testing.assert_close(sim, cpu, rtol=1e-5, atol=0)
