"""The CUDA kernels (kernels/snn_cuda_kernels.cuh) executed on the CPU by the CUDA execution simulator
(kernels/cuda_sim.h: a block's threads as OS threads, real barriers and warp votes, atomics) through
``torch.ops.lzo_sim``, against the pure-PyTorch reference — the CUDA test cases in CI, where no GPU
is: T = 80 (past the CPU's re-basing span), m > 1, layers 40 and 300 wide (several blocks and input
tiles at 64 threads a block), graded input, empty and all-active lists, duplicate columns, the GEMM
current, the deterministic mode, and grids capped at 1 and 2 blocks so every grid-stride loop takes
several passes. Where a GPU is present the same cases run on it too (``KERNELS``: the real CUDA
ops, torch.ops.lzo on CUDA tensors), so benchmarks/gpu_check.sh repeats the simulator's cases on
the device."""

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from lzo_bench.core.floatcmp import network_spikes_agree
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import library
from lzo_bench.ops.backends import Backend, cuda_simulator, select_backend
from lzo_bench.ops.event_network import as_events, event_network

SIM = cuda_simulator()
LIB = torch.ops.lzo_sim


@dataclass(frozen=True)
class Kernels:
    """Where the CUDA kernels run: the simulator on CPU tensors, or a GPU."""

    name: str
    lib: object
    device: str

    def backend(self, spec=None) -> Backend:
        return SIM if self.name == "sim" else select_backend("cuda", "cuda", spec)


KERNELS = [pytest.param(Kernels("sim", LIB, "cpu"), id="sim")] + (
    [pytest.param(Kernels("cuda", torch.ops.lzo, "cuda"), id="cuda", marks=pytest.mark.gpu)]
    if torch.cuda.is_available() else [])  # gpu_check.sh runs `-m gpu`: these cases on the device


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


def assert_sim_equals_reference(spec, model, x, y, backend=None, kern=Kernels("sim", LIB, "cpu")):
    """The CUDA kernels (simulated or on a GPU) against the reference on ``(x, y)``; returns the
    reference's output on the whole batch.

    They sum the potentials in other orders (per thread, per tile, fused multiply-adds on a GPU), so
    a spike may flip where its potential lies within rounding of θ: every flip must be that (or
    downstream of one) and they must be few (``floatcmp.network_spikes_agree``). After a flip the
    active counts, logits and gradients are compared on the samples whose spikes are all equal, run
    again alone; with no sample left the case is skipped, saying so."""
    ref, g_ref = step(model, x, y, spec, None)
    sim_model = SNN(model.spec).to(kern.device)
    sim_model.load_state_dict(model.state_dict())
    out, g_sim = step(sim_model, x.to(kern.device), y.to(kern.device), spec, backend or kern.backend(spec))
    net = model.spec
    agreement = network_spikes_agree([s.detach().cpu() for s in out.spikes], x, list(model.weights)[:-1], net.beta,
                                     net.theta)
    assert agreement.legitimate, f"spikes differ beyond rounding: {agreement}"
    if not agreement.equal:
        keep = agreement.rows_equal
        if not keep.any():
            pytest.skip(f"every sample has a spike flipped within rounding of θ: {agreement}")
        assert_sim_equals_reference(spec, model, x[:, keep], y[keep], backend, kern)
        return ref
    assert out.active == ref.active
    torch.testing.assert_close(out.logits.cpu(), ref.logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_sim, g_ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
    return ref


@pytest.mark.parametrize("method,dist,m", [
    ("surrogate", "normal", 1), ("surrogate", "sigmoid", 1), ("sparsegrad", "laplace", 5), ("sparsegrad", "fast-sigmoid", 1),
    ("localzo", "normal", 1), ("localzo", "normal", 5), ("localzo", "uniform", 3), ("localzo", "sigmoid", 2),
])
@pytest.mark.parametrize("kern", KERNELS)
def test_long_sequences(method, dist, m, kern):
    spec = GateSpec.build(method, dist, delta=0.4, samples=m)
    model, x, y = make(80, 3, 11, (13, 9))
    ref = assert_sim_equals_reference(spec, model, x, y, kern=kern)
    if spec.is_sparse:
        assert all(a > 0 for a in ref.active)


@pytest.mark.parametrize("method", ["surrogate", "sparsegrad", "localzo"])
@pytest.mark.parametrize("kern", KERNELS)
def test_wide_layers_several_blocks_and_tiles(method, kern):
    """300 inputs and 300 / 40 neurons: five input tiles and neuron chunks of 64 threads (two of 256 on a GPU)."""
    model, x, y = make(30, 2, 300, (300, 40), seed=11, density=0.05)
    ref = assert_sim_equals_reference(GateSpec.build(method, "normal", delta=0.4), model, x, y, kern=kern)
    assert not GateSpec.build(method, "normal").is_sparse or all(a > 0 for a in ref.active)


@pytest.mark.parametrize("method", ["surrogate", "localzo"])
@pytest.mark.parametrize("kern", KERNELS)
def test_graded_input(method, kern):
    model, x, y = make(40, 3, 7, (9, 6), seed=3, values=True)
    assert as_events(x).val.numel() > 0
    assert_sim_equals_reference(GateSpec.build(method, "laplace", delta=0.4, samples=2), model, x, y, kern=kern)


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("method", ["surrogate", "sparsegrad", "localzo"])
@pytest.mark.parametrize("kern", KERNELS)
def test_grid_stride_loops_take_several_passes(method, blocks, kern):
    old = kern.lib.set_cuda_max_grid(blocks)
    try:
        model, x, y = make(35, 5, 70, (70, 33), seed=6)
        assert_sim_equals_reference(GateSpec.build(method, "normal", delta=0.4, samples=2), model, x, y, kern=kern)
    finally:
        kern.lib.set_cuda_max_grid(old)


@pytest.mark.parametrize("kern", KERNELS)
def test_empty_lists_no_input_events(kern):
    """No input event: no spike, no active entry, zero gradients, nothing read past an empty list."""
    model, x, y = make(20, 2, 8, (6, 5))
    x.zero_()
    for method in ("sparsegrad", "localzo", "surrogate"):
        spec = GateSpec.build(method, "normal", delta=0.4)
        ref = assert_sim_equals_reference(spec, model, x, y, kern=kern)
        assert all(int(c.sum()) == 0 for c in ref.counts)


@pytest.mark.parametrize("kern", KERNELS)
def test_all_active_lists(kern):
    """A band wider than every potential: every entry is active, the lists fill to their bound."""
    model, x, y = make(25, 2, 9, (7, 6), seed=2)
    spec = GateSpec.build("sparsegrad", "normal", delta=0.4, bth=1e6)
    ref = assert_sim_equals_reference(spec, model, x, y, kern=kern)
    assert ref.active == [25 * 2 * 7, 25 * 2 * 6]


@pytest.mark.parametrize("kern", KERNELS)
def test_gemm_current(kern):
    model, x, y = make(35, 3, 10, (8, 7), seed=5)
    gemm = Backend(kern.name, None, "forced GEMM current",
                   lambda m, xx, s, k: event_network(m, xx, s, k, current="gemm", lib=kern.lib))
    for method in ("surrogate", "localzo"):
        assert_sim_equals_reference(GateSpec.build(method, "normal", delta=0.4), model, x, y, backend=gemm, kern=kern)


@pytest.mark.parametrize("kern", KERNELS)
def test_duplicate_columns_add_like_the_cpu_ops(kern):
    """Against the CPU ops, which add a column listed twice in a row (tests/test_event_network.py
    checks them against the dense reference)."""
    ptr = torch.tensor([0, 1, 4, 5, 8, 9, 10], dtype=torch.int32)
    col = torch.tensor([1, 2, 3, 2, 0, 0, 0, 0, 3, 1], dtype=torch.int32)
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    spec = GateSpec.build("surrogate", "normal", delta=0.4)
    table, *params = library.gate_args(spec, None, torch.device("cpu"))
    d = kern.device
    e = torch.zeros(0)
    for mode in (1, 2):
        cpu = torch.ops.lzo.lif_events_forward(ptr, col, e, w, table, 3, 0.9, 1.0, *params, 0, mode)
        sim = kern.lib.lif_events_forward(ptr.to(d), col.to(d), e.to(d), w.to(d), table.to(d), 3, 0.9, 1.0, *params, 0, mode)
        torch.testing.assert_close(sim[6].cpu(), cpu[6], rtol=1e-5, atol=0)  # dense gates: expf vs the CPU's polynomial
        grad = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
        dw_cpu = torch.ops.lzo.lif_dense_backward(grad, cpu[6], e, ptr, col, e, w, 0.9, 3, False, mode)[0]
        dw_sim = kern.lib.lif_dense_backward(grad.to(d), sim[6], e.to(d), ptr.to(d), col.to(d), e.to(d), w.to(d), 0.9, 3,
                                             False, mode)[0]
        torch.testing.assert_close(dw_sim.cpu(), dw_cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kern", KERNELS)
def test_to_events_equals_the_cpu_compaction(kern):
    x = (torch.rand(13, 5, 70, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    x[2, 1, 3] = 0.25
    for a, b in zip(kern.lib.to_events(x.to(kern.device)), torch.ops.lzo.to_events(x)):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("method", ["sparsegrad", "localzo"])
@pytest.mark.parametrize("kern", KERNELS)
def test_deterministic_mode_is_bitwise_repeatable(method, kern):
    spec = GateSpec.build(method, "normal", delta=0.4)
    model, x, y = make(40, 4, 11, (13, 9), seed=4)
    _, g_ref = step(model, x, y, spec, None)
    model, x, y = model.to(kern.device), x.to(kern.device), y.to(kern.device)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = [step(model, x, y, spec, kern.backend(spec))[1] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    for a, b in zip(grads[0], g_ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kern", KERNELS)
def test_deterministic_mode_adds_a_repeated_column_in_list_order(kern):
    """Issue 31 item 4: a column listed three times in one row with values 1e8, -1e8, 1 sums to 1 in list order
    (the CPU's) and to 0 when 1 meets 1e8 first, as the atomics may add it. Under
    torch.use_deterministic_algorithms(True) the sparse dW (sparse_dw_kernel's input gather) and the dense dW
    (the rows of scatter_rows_ordered_kernel) give one result over 50 runs, with the grid capped at 1, 2, 3
    and 65535 blocks, equal bit for bit to the CPU op's (chosen so that the CPU's rebased trace and the GPU's
    running trace round alike: powers of two, the events at t = 0)."""
    T, beta = 2, 0.9
    ptr = torch.tensor([0, 4, 4], dtype=torch.int32)  # B = 1: row t = 0 has the events, t = 1 none
    col = torch.tensor([0, 0, 2, 0], dtype=torch.int32)
    val = torch.tensor([1e8, -1e8, 0.5, 1.0])
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    a_ptr = torch.tensor([0, 2, 4], dtype=torch.int32)
    a_col = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    g_act = torch.tensor([0.25, -1.5, 2.0, 0.75])
    a_gate = torch.tensor([0.5, 1.0, 0.25, 2.0])
    grad = torch.tensor([[0.25, -1.5], [2.0, 0.75]])
    gate = torch.tensor([[0.5, 2.0], [0.0, 0.0]])
    e = torch.zeros(0)
    ei = torch.zeros(0, dtype=torch.int32)

    def both(lib, d):
        sparse = lib.lif_sparse_backward(g_act.to(d), a_ptr.to(d), a_col.to(d), a_gate.to(d), e.to(d), ptr.to(d),
                                         col.to(d), val.to(d), w.to(d), beta, T, ei.to(d), ei.to(d))[0]
        dense = lib.lif_dense_backward(grad.to(d), gate.to(d), e.to(d), ptr.to(d), col.to(d), val.to(d), w.to(d),
                                       beta, T, False, 1)[0]
        return sparse.cpu(), dense.cpu()

    want = both(torch.ops.lzo, "cpu")
    assert want[0][0].abs().sum() > 0 and want[1][0].abs().sum() > 0  # the 1 survived: list order
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    old = kern.lib.set_cuda_max_grid(65535)
    try:
        seen = set()
        for run in range(50):
            kern.lib.set_cuda_max_grid((1, 2, 3, 65535)[run % 4])
            got = both(kern.lib, kern.device)
            seen.add(tuple(t.numpy().tobytes() for t in got))
    finally:
        kern.lib.set_cuda_max_grid(old)
        torch.use_deterministic_algorithms(was)
    assert len(seen) == 1, f"{len(seen)} different results in deterministic mode"
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (got, want)


@pytest.mark.parametrize("method", ["surrogate", "localzo"])
def test_a_training_update_validates_only_its_input_list(method, tmp_path, monkeypatch):
    """Issue 31 item 5: through the network's autograd node only the first layer's forward validates a list (the
    input); the spike, active and saved lists are the extension's own (library.own_lists). The launch log
    (LZO_SIM_LAUNCH_LOG, kernels/cuda_sim.h) shows it; the results are the reference's (the other tests)."""
    log = tmp_path / "launches.txt"
    model, x, y = make(6, 2, 11, (13, 9), seed=4)
    monkeypatch.setenv("LZO_SIM_LAUNCH_LOG", str(log))
    step(model, x, y, GateSpec.build(method, "normal", delta=0.4), SIM)
    monkeypatch.delenv("LZO_SIM_LAUNCH_LOG")
    names = [line.split()[0] for line in log.read_text().splitlines()]
    assert names.count("validate_list_kernel") == 1, names
    assert "readout_backward_kernel" in names  # the log spans the backward too
    assert LIB.own_lists(False) is False  # the scopes left the thread as they found it


def test_a_list_from_outside_is_validated_on_a_capped_grid(tmp_path, monkeypatch):
    """A direct op call validates its list, on at most 528 blocks (4 per SM of an H100; the kernel grid-strides):
    40000 entries would take 625 blocks of the simulator's 64 threads."""
    log = tmp_path / "launches.txt"
    ptr = torch.tensor([0, 20000, 40000], dtype=torch.int32)
    monkeypatch.setenv("LZO_SIM_LAUNCH_LOG", str(log))
    LIB.readout_forward(ptr, torch.zeros(40000, dtype=torch.int32), torch.randn(1, 2), 2, 0.9)
    monkeypatch.delenv("LZO_SIM_LAUNCH_LOG")
    launches = [line.split() for line in log.read_text().splitlines()]
    assert [v[:6] for v in launches if v[0] == "validate_list_kernel"] == [
        ["validate_list_kernel", "528", "1", "1", "64", "0"]]


@pytest.mark.parametrize("ptr,message", [
    ([0, 5, 2, 3], "row pointers must not decrease"),
    ([0, 1, 2, 9], "ptr[B*T] must not exceed the number of columns"),
    ([1, 1, 2, 3], "ptr[0] must be 0"),
])
def test_a_bad_list_stops_at_a_device_assert(ptr, message):
    """The device-side validation of a list from outside (finding 7): in a child process, since a
    device assert ends the process as it ends a CUDA context."""
    code = ("import torch; from lzo_bench.ops.backends import cuda_simulator; cuda_simulator(); "
            f"ptr = torch.tensor({ptr}, dtype=torch.int32); col = torch.zeros(3, dtype=torch.int32); "
            "torch.ops.lzo_sim.readout_forward(ptr, col, torch.randn(4, 2), 3, 0.9)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "cuda_sim: device assert failed" in r.stderr and message in r.stderr, r.stderr[-2000:]


def test_a_column_outside_the_layer_stops_at_a_device_assert():
    code = ("import torch; from lzo_bench.ops.backends import cuda_simulator; cuda_simulator(); "
            "ptr = torch.tensor([0, 1, 2, 3], dtype=torch.int32); col = torch.tensor([0, 7, 1], dtype=torch.int32); "
            "torch.ops.lzo_sim.readout_forward(ptr, col, torch.randn(4, 2), 3, 0.9)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "a column is outside [0, width)" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("dist", ["normal", "laplace", "sigmoid"])
@pytest.mark.parametrize("kern", KERNELS)
def test_gates_flush_where_the_cpu_flushes(dist, kern):
    """Potentials around the exponential's underflow (exp(x) < FLT_MIN below x = -87.33): the CUDA
    kernels flushed c·exp(x) instead of exp(x) (finding 8), so for c > 1 (δ < 0.4) they kept gate
    values the CPU drops."""
    spec = GateSpec.build("surrogate", dist, delta=0.05)
    if dist == "sigmoid":  # e = exp(-k|v|)
        edge = 87.33 / library._kinds(spec)[2]
    else:  # exp(-v^2 / (2 delta^2)), exp(-sqrt2 |v| / delta)
        edge = (2 * 87.33) ** 0.5 * 0.05 if dist == "normal" else 87.33 / 2**0.5 * 0.05
    w = (1.0 + torch.linspace(-1.03 * edge, -0.97 * edge, 512)).view(1, -1)  # one event at t = 0: v = W - θ
    ptr, col = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    table, *params = library.gate_args(spec, None, torch.device("cpu"))
    cpu = torch.ops.lzo.lif_events_forward(ptr, col, torch.zeros(0), w, table, 1, 0.9, 1.0, *params, 0, 0)[6]
    d = kern.device
    sim = kern.lib.lif_events_forward(ptr.to(d), col.to(d), torch.zeros(0, device=d), w.to(d), table.to(d), 1, 0.9, 1.0,
                                      *params, 0, 0)[6].cpu()
    assert (cpu == 0).any() and (cpu != 0).any(), "the grid must straddle the flush"
    assert torch.equal(cpu == 0, sim == 0)
    torch.testing.assert_close(sim, cpu, rtol=1e-5, atol=0)


# ---- Convolutional layers (issue 22): lzo_sim's conv ops (the CUDA kernels) against the reference, through
# tests/test_conv.py's comparison (spikes equal but for flips within rounding of θ, then gradients to rounding).
# Small frames: the simulator runs every block's threads as OS threads, so a layer costs B·T·⌈N/64⌉ block
# rankings; the shapes still take several neuron chunks and dW parts.

POOLED_PAIR = ("two conv layers, 2×2 sum pooling (odd frame: a dropped row and column), then stride 2 and padding 1; "
               "3 and 7 channels, not multiples of a warp")


def _pooled_pair():
    from lzo_bench.core.conv import ConvShape
    return [ConvShape(2, 9, 9, 3, 3, 1, 1, pool=2), ConvShape(3, 4, 4, 7, 3, 2, 1)]


@pytest.mark.parametrize("method", ["surrogate", "sparsegrad", "localzo"])
@pytest.mark.parametrize("kern", KERNELS)
def test_conv_pooled_pair_with_bias_and_graded_input(method, kern):
    from test_conv import assert_conv_same
    assert_conv_same(_pooled_pair(), method, m=3 if method == "localzo" else 1, steps=72, batch=2, bias=True,
                     graded=True, lib=kern.lib, device=kern.device)


@pytest.mark.parametrize("method,kernel,stride,padding", [("localzo", 5, 1, 2), ("sparsegrad", 1, 2, 0),
                                                          ("surrogate", 5, 2, 0)])
@pytest.mark.parametrize("kern", KERNELS)
def test_conv_kernels_1_and_5(method, kernel, stride, padding, kern):
    from test_conv import assert_conv_same

    from lzo_bench.core.conv import ConvShape
    assert_conv_same([ConvShape(2, 6, 7, 4, kernel, stride, padding)], method, m=2 if method == "localzo" else 1,
                     steps=70, batch=2, lib=kern.lib, device=kern.device)


@pytest.mark.parametrize("kern", KERNELS)
def test_conv_grid_stride_loops_take_several_passes_and_dense_current(kern):
    """Grids capped at one block: every conv kernel's grid-stride loop (rows, (b, unit) pairs, dW parts, which
    then take many rows each) takes several passes; then the forced convolution current (current_mode 2)."""
    from test_conv import assert_conv_same
    old = kern.lib.set_cuda_max_grid(1)
    try:
        assert_conv_same(_pooled_pair(), "localzo", m=2, steps=70, batch=2, bias=True, lib=kern.lib, device=kern.device)
    finally:
        kern.lib.set_cuda_max_grid(old)
    for method in ("surrogate", "sparsegrad"):
        assert_conv_same(_pooled_pair(), method, steps=70, batch=2, bias=True, lib=kern.lib, device=kern.device,
                         current="gemm")


@pytest.mark.parametrize("kern", KERNELS)
def test_conv_sparse_gradients_are_bitwise_repeatable(kern):
    """The sparse conv dW adds into per-part partials with one writer per address and sums them in order, the
    input gradient rows likewise: two runs give the conv layers the same bits, without torch's deterministic
    mode (the dense layer after them adds with atomics on a GPU, so it is left out)."""
    from test_conv import _net, _run

    from lzo_bench.core.gates import GateSpec
    convs = _pooled_pair()
    params = _net(convs, 6, 4, 0, True)
    x = (torch.rand(24, 2, convs[0].units_in, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    y = torch.arange(2) % 4
    spec = GateSpec.build("localzo", "normal", delta=0.4)
    grads = [_run("ours", params, convs, spec, x, y, kern.lib, kern.device)[1] for _ in range(2)]
    conv_params = 2 * len(convs)  # weight and bias of each conv layer
    assert all(torch.equal(a, b) for a, b in zip(grads[0][:conv_params], grads[1][:conv_params]))


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("kern", KERNELS)
def test_pool_events_equal_the_cpu_op(graded, kern):
    """Pooled lists from a spike list with empty rows, on an odd frame (dropped last row and column): the valid
    prefix equals the CPU op's list (sums of the same values in the same order)."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 3, 5 * 7 * 3, generator=gen) < 0.3).float()
    x[2, 1] = 0
    if graded:
        x = x * torch.where(torch.rand(x.shape, generator=gen) < 0.5, 0.5, 2.0)
    ptr, col, val = torch.ops.lzo.to_events(x)
    d = kern.device
    want = torch.ops.lzo.pool_events(ptr, col, val, [3, 5, 7], 2)
    got = kern.lib.pool_events(ptr.to(d), col.to(d), val.to(d), [3, 5, 7], 2)
    n = int(got[0][-1])
    assert torch.equal(got[0].cpu(), want[0]) and n == want[1].numel()
    assert torch.equal(got[1][:n].cpu(), want[1]) and torch.equal(got[2][:n].cpu(), want[2])
    # allocated at min(input length, rows * pooled width) (issue 31 item 5): here the second, 18 rows of 2*3*3
    bound = (ptr.numel() - 1) * 2 * 3 * 3
    assert bound < col.numel() and got[1].numel() == got[2].numel() == bound


def test_pool_events_fake_has_the_kernels_bound():
    """The fake kernel of the simulated pool_events gives the list length the kernel allocates (opcheck's fake
    tensor test compares them), on a list longer than rows * pooled width and on one shorter."""
    gen = torch.Generator().manual_seed(3)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for rate in (0.3, 0.02):
        ptr, col, val = torch.ops.lzo.to_events((torch.rand(6, 3, 5 * 7 * 3, generator=gen) < rate).float())
        torch.library.opcheck(LIB.pool_events.default, (ptr, col, val, [3, 5, 7], 2), test_utils=utils)


def test_the_self_check_passes_on_the_simulated_cuda_kernels():
    """The self-check a GPU runs before its first update (lzo_bench/ops/selfcheck.py: a fully connected and a conv
    network, three rules) passes on the very kernels it will run there, executed by the simulator."""
    from lzo_bench.ops import selfcheck
    verdict = selfcheck.verify(SIM, "cpu")
    assert verdict.ok, verdict.detail
    assert "fully connected and convolutional" in verdict.detail


@pytest.mark.parametrize("ns", ["lzo", "lzo_sim"])
def test_an_empty_row_pointer_tensor_is_refused_before_any_read(ns):
    """A ptr of no entries would make B*T = -1 rows; both the CPU op and the CUDA op (simulated) refuse it in
    one line instead of reading ptr[0] past an empty tensor (found by review)."""
    empty_ptr, col = torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"x_ptr must .*row pointers \(at least 1\)"):
        getattr(torch.ops, ns).pool_events(empty_ptr, col, torch.zeros(0), [2, 4, 4], 2)
    with pytest.raises(RuntimeError, match=r"s_ptr must .*row pointers \(at least 1\)"):
        getattr(torch.ops, ns).readout_forward(empty_ptr, col, torch.randn(4, 2), 1, 0.9)


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_launch_shapes_formulas_match_the_simulators_launches(arch):
    """benchmarks/launch_shapes.py computes each kernel's GPU grid from snn_cuda.cu's launch formulas after
    checking them against the simulator's launch log at the run's shape (it stops on a mismatch): a small
    batch and T, every rule."""
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import launch_shapes
    out = launch_shapes.table(arch, "nmnist", 2, batch=3)
    for rule in ("surrogate", "sparsegrad", "localzo"):
        assert f"| {rule} |" in out
    assert "validate_list_kernel" in out and ("conv_dw_kernel" if arch == "conv" else "sparse_dw_kernel") in out
