"""Convolutional LIF layers (issue 22): the C++ event ops (``lzo::conv_*``, kernels/cpu_conv.cpp) against the
pure-PyTorch reference (``conv2d`` over all rows, the LIF scan with the reset detached, autograd), for all three
rules — T ≥ 70, stride 1 and 2, padding 0 and 1, kernels 1, 3 and 5, m > 1, graded inputs, channel counts that
are not multiples of the 8-lane vectors, a bias, sum pooling between layers. Spikes must be equal except for
flips within rounding of θ (then the other samples are compared); gradients equal to float rounding (each entry
within 1e-5 of the reference, relative to itself or to the tensor's largest entry: a conv weight's gradient sums
T·B·positions terms, with cancellation)."""

import pytest
import torch

from lzo_bench.core.conv import ConvShape, channels_last, conv_current, pool_dense, pool_events, unpool_dense
from lzo_bench.core.events import SpikeEvents
from lzo_bench.core.floatcmp import lif_potential_bound
from lzo_bench.core.forward import Forward
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.lif import layer_current, lif_layer, lif_membrane, lif_potentials
from lzo_bench.core.model import SpikeRegularizer, classification_loss
from lzo_bench.core.network import Hidden, Readout, Stack, dense_network, with_bias_unit
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops import extension as ops
from lzo_bench.ops import library
from lzo_bench.ops.event_network import as_events, event_network
from lzo_bench.runtime.devices import fp32_convolutions

ops.build()
KEY = DrawKey(5, 9)


def _net(convs, fc, n_out, seed, bias, gain=1.0):
    """Parameters of conv layers ``convs`` (ConvShape), one dense layer of ``fc`` and a readout."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for c in convs:
        fan_in = c.c_in * c.kernel ** 2
        params.append(torch.randn(c.c_out, c.c_in, c.kernel, c.kernel, generator=gen) * 2.5 * gain / fan_in ** 0.5)
        params.append(torch.randn(c.c_out, generator=gen) * 0.1 if bias else None)
    n_flat = convs[-1].units_next
    params.append(torch.randn(n_flat, fc, generator=gen) * 3.0 / n_flat ** 0.5)
    params.append(torch.randn(fc, generator=gen) * 0.1 if bias else None)
    params.append(torch.randn(fc, n_out, generator=gen) * 1.0 / fc ** 0.5)
    return [p.requires_grad_() if p is not None else None for p in params]


def _stack(params, convs, spec):
    betas = [0.9, 0.8, 0.85]
    hidden = [Hidden(params[2 * i], params[2 * i + 1], betas[i % 3], 1.0, spec, KEY if spec else None, c)
              for i, c in enumerate(convs)]
    hidden.append(Hidden(params[-3], params[-2], 0.9, 1.0, spec, KEY if spec else None))
    return Stack(tuple(hidden), Readout(params[-1], None, 0.85, "max"))


def _run(path, params, convs, spec, x, y, lib=None, device="cpu", current="auto"):
    """One step of the reference (``path == "ref"``) or of the event ops of ``lib`` (default ``torch.ops.lzo``;
    ``torch.ops.lzo_sim``: the CUDA kernels, simulated) on ``device`` with the ``current`` mode; -> (output,
    gradients on the CPU)."""
    if device != "cpu":
        params = [None if p is None else p.detach().to(device).requires_grad_() for p in params]
        x, y = x.to(device), y.to(device)
    for p in params:
        if p is not None:
            p.grad = None
    stack = _stack(params, convs, spec)
    with fp32_convolutions():  # on a GPU, cuDNN's default TF32 would differ from the fp32 reference by ~1e-3
        out = dense_network(stack, x, lif_layer) if path == "ref" else event_network(stack, x, current=current, lib=lib)
        loss = classification_loss(out.logits, y) + SpikeRegularizer(f_up=0.3)(out.counts)
        loss.backward()
    if device != "cpu":
        out = Forward(out.logits.cpu(), [c.cpu() for c in out.counts], out.active, [s.cpu() for s in out.spikes])
    return out, [None if p is None else p.grad.cpu().clone() for p in params]


def _flips_within_rounding(ref_spikes, our_spikes, params, convs, x):
    """At the first layer whose spikes differ (its input agrees), every flipped entry's reference
    potential lies within rounding of θ; returns the samples whose spikes all agree."""
    h = x
    for i, (a, b) in enumerate(zip(ref_spikes, our_spikes)):
        diff = a != b
        if diff.any():
            conv = convs[i] if i < len(convs) else None
            w, bias = params[2 * i], params[2 * i + 1]
            current = layer_current(h, w.detach(), None if bias is None else bias.detach(), conv)
            v = lif_potentials(current, 0.9 if conv is None else [0.9, 0.8, 0.85][i % 3], 1.0)
            assert float(v[diff].abs().max()) < 1e-4, "a spike flipped far from θ: a real defect"
            break
        h = pool_dense(a, convs[i]) if i < len(convs) else a
    keep = torch.ones(x.shape[1], dtype=torch.bool)
    for a, b in zip(ref_spikes, our_spikes):
        keep &= (a == b).all(2).all(0)
    return keep


def assert_conv_same(convs, method, m=1, steps=72, batch=3, bias=False, graded=False, seed=0, density=0.2, lib=None,
                     device="cpu", current="auto"):
    """The event ops of ``lib`` on ``device`` (default: the CPU ops) with the ``current`` mode against the
    reference."""
    spec = GateSpec.build(method, "normal", delta=0.4, samples=m)
    params = _net(convs, 6, 4, seed, bias)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(steps, batch, convs[0].units_in, generator=gen) < density).float()
    if graded:
        x = x * torch.where(torch.rand(x.shape, generator=gen) < 0.5, 0.5, 2.0)
    y = torch.arange(batch) % 4
    ref, ref_grads = _run("ref", params, convs, spec, x, y)
    ours, grads = _run("ours", params, convs, spec, x, y, lib, device, current)
    if not all(torch.equal(a, b) for a, b in zip(ref.spikes, ours.spikes)):
        keep = _flips_within_rounding(ref.spikes, ours.spikes, params, convs, x)
        if not keep.any():
            pytest.skip("every sample has a spike flipped within rounding of θ")
        x, y = x[:, keep], y[keep]
        ref, ref_grads = _run("ref", params, convs, spec, x, y)
        ours, grads = _run("ours", params, convs, spec, x, y, lib, device, current)
    assert ours.active == ref.active
    if spec.is_sparse:
        assert all(a > 0 for a in ref.active), "every hidden layer must have active entries"
    for a, b in zip(grads, ref_grads):
        assert (a is None) == (b is None)
        if b is not None:  # sums of T·B·positions terms: rounding measured against the tensor's scale
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    torch.testing.assert_close(ours.logits, ref.logits, rtol=1e-5, atol=1e-6)


METHODS = ["surrogate", "sparsegrad", "localzo"]


def _near_theta(stack: Stack, x: torch.Tensor) -> int:
    """Entries whose reference potential lies within the rounding bound of θ
    (:func:`lzo_bench.core.floatcmp.lif_potential_bound`, conv layers and biases included): where there are none,
    two float32 computations of the network give the same spikes on any CPU, so comparing their spikes,
    spike counts or logits as equal is sound."""
    h, near = x, 0
    for hid in stack.hidden:
        w = hid.weight.detach()
        b = None if hid.bias is None else hid.bias.detach()
        v = lif_membrane(layer_current(h, w, b, hid.conv), hid.beta, hid.theta) - hid.theta
        s = (v > 0).float()
        near += int((v.double().abs() <= lif_potential_bound(h, w, hid.beta, hid.theta, s, hid.conv, b)).sum())
        h = pool_dense(s, hid.conv) if hid.conv else s
    return near


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stride,padding,kernel", [(1, 0, 3), (1, 1, 3), (2, 1, 3), (2, 0, 5), (1, 2, 5), (1, 0, 1),
                                                   (2, 0, 1)])
def test_conv_gradients_equal_reference(method, stride, padding, kernel):
    conv = ConvShape(3, 9, 10, 5, kernel, stride, padding)
    assert_conv_same([conv], method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bias", [False, True])
def test_two_conv_layers_pooled_with_bias_and_graded_input(method, bias):
    """Sum pooling 2×2 (with a dropped last row and column: 9 → 4), a strided second layer, channel counts 13
    and 7 (not multiples of 8), graded input values."""
    convs = [ConvShape(2, 9, 9, 13, 3, 1, 0, pool=2), ConvShape(13, 3, 3, 7, 3, 2, 1)]
    assert_conv_same(convs, method, m=3 if method == "localzo" else 1, bias=bias, graded=True, steps=75)


@pytest.mark.parametrize("method", ["surrogate", "localzo"])
def test_dense_input_takes_the_conv2d_path_with_equal_results(method):
    """Input dense enough for the one-conv2d current (and oneDNN's dense dW): same results as the reference."""
    assert_conv_same([ConvShape(2, 6, 6, 5, 3, 1, 1)], method, density=0.7, bias=True)


@pytest.mark.parametrize("graded", [False, True])
def test_pool_events_equal_dense_pooling_and_unpool_is_its_adjoint(graded):
    shape = ConvShape(1, 7, 7, 3, 3, 1, 1, pool=3)  # 7×7×3 → 2×2×3, the last row and column dropped
    gen = torch.Generator().manual_seed(0)
    s = (torch.rand(4, 2, shape.units_out, generator=gen) < 0.3).float()
    if graded:
        s = s * torch.where(torch.rand(s.shape, generator=gen) < 0.5, 0.5, 2.0)
    pooled = pool_events(as_events(s), shape)
    assert pooled.width == shape.units_next == 12
    torch.testing.assert_close(pooled.dense(), pool_dense(s, shape), rtol=0, atol=0)
    for r in range(8):  # each row's pooled units in increasing order, as every event list
        cols = pooled.col[pooled.ptr[r]:pooled.ptr[r + 1]]
        assert bool((cols[1:] > cols[:-1]).all())
    # <pool(s), g> = <s, unpool(g)>: unpool is the pooling's transpose
    g = torch.randn(8, shape.units_next, generator=gen)
    lhs = (pool_dense(s, shape).reshape(8, -1) * g).sum()
    rhs = (s.reshape(8, -1) * unpool_dense(g, shape)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_conv_current_is_torch_conv2d_on_channels_last_units():
    shape = ConvShape(3, 5, 6, 4, 3, 2, 1)
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 3, 3, 5, 6, generator=gen)
    w = torch.randn(4, 3, 3, 3, generator=gen)
    ours = conv_current(channels_last(frames), w, None, shape)
    ref = torch.nn.functional.conv2d(frames.reshape(6, 3, 5, 6), w, stride=2, padding=1)
    torch.testing.assert_close(ours, channels_last(ref.reshape(2, 3, 4, 3, 3)))


def _conv_samples(method: int):
    """Inputs of the conv ops, made by the ops themselves (T = 5, B = 2, 2×5×5 → 3×5×5 → 4×3×3)."""
    gen = torch.Generator().manual_seed(0)
    c1, c2 = ConvShape(2, 5, 5, 3, 3, 1, 1), ConvShape(3, 5, 5, 4, 3, 2, 1)
    x = (torch.rand(5, 2, c1.units_in, generator=gen) < 0.5).float()
    w1 = torch.randn(3, 2 * 9, generator=gen) * 0.8
    w2 = torch.randn(4, 3 * 9 + 1, generator=gen) * 0.8  # with a bias column
    lib = torch.ops.lzo
    ptr, col, val = lib.to_events(x)
    spec = GateSpec.build(("surrogate", "sparsegrad", "localzo")[method], "normal", delta=0.6)
    table, *params = library.gate_args(spec, DrawKey(1, 2), torch.device("cpu"))
    l1 = lib.conv_lif_forward(ptr, col, val, w1, c1.kernel_args(), table, 5, 0.9, 1.0, *params, 0, 0)
    h = with_bias_unit(SpikeEvents(l1[0], l1[1], torch.zeros(0), 5, 2, c1.units_out))
    l2 = lib.conv_lif_forward(h.ptr, h.col, h.val, w2, c2.kernel_args(), table, 5, 0.9, 1.0, *params, 1, 0)
    return {
        "conv_lif_forward": (h.ptr, h.col, h.val, w2, c2.kernel_args(), table, 5, 0.9, 1.0, *params, 1, 0),
        "conv_sparse_backward": (torch.randn(l2[4].numel(), generator=gen), l2[3], l2[4], l2[5],
                                 torch.randn(2, c2.units_out, generator=gen), h.ptr, h.col, h.val, w2,
                                 c2.kernel_args(), 0.9, 5, l1[3], l1[4]),
        "conv_dense_backward": (torch.randn(10, c2.units_out, generator=gen), l2[6], torch.zeros(0), h.ptr, h.col,
                                h.val, w2, c2.kernel_args(), 0.9, 5, True, 0),
        "pool_events": (l1[0], l1[1], torch.zeros(0), [3, 5, 5], 2),
    }


CONV_OPCHECK = [(0, "conv_lif_forward"), (1, "conv_lif_forward"), (2, "conv_lif_forward"),
                (0, "conv_dense_backward"), (1, "conv_sparse_backward"), (2, "conv_sparse_backward"), (0, "pool_events")]


@pytest.mark.parametrize("ns", ["lzo", "lzo_sim"])
@pytest.mark.parametrize("method,op", CONV_OPCHECK, ids=[f"m{m}-{o}" for m, o in CONV_OPCHECK])
def test_opcheck_conv_ops(method, op, ns):
    """Schema, fake kernel, autograd registration and AOT dispatch of the conv ops on real lists, on the CPU
    ops and on the CUDA kernels' ops as the simulator runs them (lists they make are bound-sized, with a tail
    no one writes: AOT's output comparison is left out for those, as tests/test_ops.py does)."""
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if ns == "lzo_sim":
        from lzo_bench.ops.backends import cuda_simulator
        cuda_simulator()
        if op in ("conv_lif_forward", "pool_events"):
            utils = utils[:3]
    torch.library.opcheck(getattr(getattr(torch.ops, ns), op).default, _conv_samples(method)[op], test_utils=utils)


@pytest.mark.parametrize("shape,weight,match", [
    ([2, 5, 5, 3, 7, 1, 0], (3, 2 * 49), "kernel 7 is larger than the padded input 5x5"),
    ([2, 5, 5, 3, 3, 0, 0], (3, 18), "must be >= 1"),
    ([2, 5, 5, 3, 3, 1, 0], (3, 17), r"weight must be \[C_out, C_in\*K\*K\] = \[3, 18\]"),
    ([2, 5, 5, 3], (3, 18), "shape must be"),
])
def test_conv_forward_rejects_bad_geometry(shape, weight, match):
    ptr, col, val = torch.ops.lzo.to_events(torch.zeros(2, 1, 50))
    table, *params = library.gate_args(None, None, torch.device("cpu"))
    with pytest.raises(RuntimeError, match=match):
        torch.ops.lzo.conv_lif_forward(ptr, col, val, torch.zeros(weight), shape, table, 2, 0.9, 1.0, *params, 0, 0)


def test_conv_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="kernel 5 is larger than the padded input 3×3"):
        ConvShape(1, 3, 3, 2, 5)
    with pytest.raises(ValueError, match="pooling window 4 is larger than the conv output 3×3"):
        ConvShape(1, 5, 5, 2, 3, pool=4)
    with pytest.raises(ValueError, match="the last hidden layer cannot pool"):
        params = _net([ConvShape(1, 4, 4, 2, 3, 1, 1, pool=2)], 3, 2, 0, False)
        Stack((Hidden(params[0], None, 0.9, 1.0, None, None, ConvShape(1, 4, 4, 2, 3, 1, 1, pool=2)),),
              Readout(torch.zeros(8, 2), None, 0.9, "max"))


def _conv_sequential(rule_name: str, backend: str = "auto", input_shape=(2, 9, 9)):
    from lzo_bench import nn, spike
    make = {"surrogate": lambda s: spike.Surrogate("normal", delta=0.4),
            "sparsegrad": lambda s: spike.SparseGrad("normal", delta=0.4),
            "localzo": lambda s: spike.LocalZO(delta=0.4, m=2, seed=s)}[rule_name]
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(
        nn.ConvLIF(2, 6, 3, padding=1, beta=0.9, rule=make(1), bias=True, init_gain=4.0, generator=g), nn.SumPool2d(2),
        nn.ConvLIF(6, 5, 3, stride=2, padding=1, beta=0.8, theta=0.8, rule=make(2), init_gain=6.0, generator=g), nn.Flatten(),
        nn.LIF(20, 7, beta=0.9, rule=make(3), generator=g),
        nn.LeakyReadout(7, 3, beta=0.85, generator=g),
        input_shape=input_shape, backend=backend)
    with torch.no_grad():
        net.layers[0].bias.normal_(0.0, 0.3, generator=g)
    return net


@pytest.mark.parametrize("rule", METHODS)
def test_sequential_with_conv_layers_equals_the_reference(rule):
    """nn.Sequential(ConvLIF, SumPool2d, ConvLIF, Flatten, LIF, LeakyReadout) on frames [T, B, C, H, W]: the
    C++ event ops and the pure-PyTorch reference give the same logits and gradients."""
    gen = torch.Generator().manual_seed(9)  # a draw with no potential within rounding of θ (_near_theta)
    frames = (torch.rand(72, 3, 2, 9, 9, generator=gen) < 0.25).float()
    assert _near_theta(_conv_sequential(rule).stack(False), channels_last(frames)) == 0
    grads = []
    for backend in ("cpp", "torch"):
        net = _conv_sequential(rule, backend)
        logits = net(frames)
        logits.square().sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in net.parameters()]))
    (la, ga), (lb, gb) = grads
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_lone_conv_modules_are_the_dense_layers_of_the_sequential():
    """ConvLIF, SumPool2d and Flatten on their own (dense, the rule as spike function) compute the network's
    inference: logits equal to the event path."""
    net = _conv_sequential("surrogate").eval()
    gen = torch.Generator().manual_seed(5)
    frames = (torch.rand(40, 2, 2, 9, 9, generator=gen) < 0.25).float()
    assert _near_theta(net.stack(False), channels_last(frames)) == 0
    h = frames
    for m in net.layers[:-1]:
        h = m(h)
    assert h.shape == (40, 2, 7)
    readout = net.layers[-1]
    torch.testing.assert_close(readout(h), net(frames), rtol=1e-5, atol=1e-6)


def test_conv_sequential_refuses_bad_stacks_with_the_reason():
    from lzo_bench import nn
    with pytest.raises(TypeError, match="must end in nn.Flatten"):
        nn.Sequential(nn.ConvLIF(1, 2, 3), nn.LeakyReadout(8, 2), input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"flatten to 2×2×2 = 8 units but LeakyReadout takes 9"):
        nn.Sequential(nn.ConvLIF(1, 2, 3), nn.Flatten(), nn.LeakyReadout(9, 2), input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="conv channels do not chain: 2 outputs feed 3"):
        nn.Sequential(nn.ConvLIF(1, 2, 3), nn.ConvLIF(3, 2, 1), nn.Flatten(), nn.LeakyReadout(8, 2))
    net = nn.Sequential(nn.ConvLIF(1, 2, 3), nn.Flatten(), nn.LeakyReadout(8, 2))
    with pytest.raises(ValueError, match=r"needs input_shape=\(C, H, W\)"):
        net(torch.zeros(3, 1, 16))
    assert net(torch.zeros(3, 1, 1, 4, 4)).shape == (1, 2)  # frames give the shape
    with pytest.raises(ValueError, match=r"frames are \(1, 5, 5\) but input_shape is \(1, 4, 4\)"):
        net(torch.zeros(3, 1, 1, 5, 5))


def _conv_snn(seed=0):
    from lzo_bench.core.conv import ConvLayer
    from lzo_bench.core.model import SNN, NetworkSpec

    spec = NetworkSpec(n_in=2 * 9 * 9, hidden=(6,), n_out=3, beta=0.9, beta_out=0.8, init_gain=25.0,
                       conv=(ConvLayer(4, 3, 1, 1, pool=2), ConvLayer(5, 3, 2, 1)), frame=(2, 9, 9))
    model = SNN(spec, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(25, 6, spec.n_in, generator=gen) < 0.3).float()
    return model, x


def _export_source(model):
    from lzo_bench.export.source import ExportSource

    return ExportSource(model.spec, [w.detach().numpy().copy() for w in model.weights], 1.0, 25, "test", "digits",
                        {"method": "localzo", "dist": "normal", "seed": 0})


def test_conv_network_exports_to_onnx_with_conv_inside_the_scan():
    """Conv and the pooling (a depthwise Conv of ones) inside the Scan body: onnxruntime's spikes and logits
    equal the network's up to rounding, at two T (the graph does not depend on T); the step model too."""
    import numpy as np
    import onnxruntime as ort

    from lzo_bench.core.floatcmp import network_spikes_agree
    from lzo_bench.export.onnx_model import initial_step_state, sequence_model, step_model
    from lzo_bench.export.parity import ATOL, RTOL

    model, x = _conv_snn()
    src = _export_source(model)
    onnx_model = sequence_model(src)
    ops_in_body = {n.op_type for n in onnx_model.graph.node if n.op_type == "Scan" for n in n.attribute[0].g.node}
    assert {"Conv", "Transpose", "Reshape"} <= ops_in_body
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for steps in (25, 7):
        xs = x[:steps]
        outs = sess.run(None, {"spikes": xs.numpy()})
        with torch.no_grad():
            ref = model(xs)
        spikes = [torch.from_numpy(o) for o in outs[4:]]
        assert all(float(s.sum()) > 0 for s in ref.spikes), "every layer must spike"
        agreement = network_spikes_agree(spikes, xs, list(model.weights)[:-1], 0.9, 1.0, convs=model.spec.conv_shapes())
        assert agreement.legitimate, str(agreement)
        keep = agreement.rows_equal.numpy()
        assert keep.any()
        np.testing.assert_allclose(outs[0][keep], ref.logits.numpy()[keep], rtol=1e-5, atol=1e-5)
    step = ort.InferenceSession(step_model(src).SerializeToString(), providers=["CPUExecutionProvider"])
    state = initial_step_state(src, x.shape[1])
    names = [o.name for o in step.get_outputs()]
    for t in range(x.shape[0]):
        out = dict(zip(names, step.run(None, {"x_t": x[t].numpy(), **state})))
        state = {k: out[f"next_{k}"] for k in state}
    # the step and the sequence model run the same nodes, each session on its own (the export check's criterion)
    np.testing.assert_allclose(state["m"], sess.run(None, {"spikes": x.numpy()})[0], rtol=RTOL, atol=ATOL)


def test_conv_network_exports_to_nir_conv2d_sumpool_flatten(tmp_path):
    """NIR Conv2d / SumPool2d / Flatten nodes (NCHW, the readout's rows in NIR's flatten order): read back
    equal, and simulated with the subtractive reset the graph reproduces the network."""
    import nir

    from lzo_bench.core.floatcmp import compare_logits, readout_bound
    from lzo_bench.export.nir_graph import nir_graph, read_back, write_nir
    from lzo_bench.export.nir_sim import simulate

    model, x = _conv_snn(11)  # a draw with no potential within rounding of θ (_near_theta)
    src = _export_source(model)
    path = write_nir(nir_graph(src), tmp_path / "m.nir")
    report = read_back(path, src)
    assert report["passed"], report["problems"]
    g = nir.read(path)
    assert isinstance(g.nodes["conv0"], nir.Conv2d) and isinstance(g.nodes["pool0"], nir.SumPool2d)
    assert isinstance(g.nodes["flatten"], nir.Flatten)
    with torch.no_grad():
        ref = model(x)
    assert _near_theta(model.stack(None, None), x) == 0  # so NIR's conv and ours give the same spikes on any CPU
    sim = simulate(g, x, "subtract", "max")
    for ours, theirs in zip(sim.counts.values(), ref.counts):
        torch.testing.assert_close(ours, theirs)
    bound = readout_bound(ref.spikes[-1], model.weights[-1], 0.8, "max")
    match = compare_logits(sim.logits, ref.logits, bound, list(zip(sim.counts.values(), ref.counts)))
    assert match.agree


def test_train_arch_conv_stores_the_architecture_evaluates_and_exports(tmp_path):
    """`lzo-bench train --arch conv` on digits: the checkpoint and config hold the conv layers and frame,
    evaluate reads them back and counts the conv fan-out, export writes a checked ONNX file."""
    import json

    from typer.testing import CliRunner

    from lzo_bench.cli import app
    from lzo_bench.training.checkpoint import load_checkpoint

    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--arch", "conv", "--epochs", "1", "--hidden", "32", "--steps", "16",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["arch"] == "conv"
    model, ckpt = load_checkpoint(out)
    assert ckpt["network"]["frame"] == [1, 8, 8] and ckpt["network"]["conv"][0]["channels"] == 16
    assert model.spec.layer_sizes == (16 * 8 * 8, 32) and model.weights[0].shape == (16, 1, 3, 3)
    res = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output[res.output.index("{"):])
    syn = metrics["metrics"]["SynapticOperations"]
    # dense conv ops per step: every output position's valid taps (padding 1: 8·8·9 minus the border's) × 16
    dense_conv = 16 * sum((min(y + 1, 7) - max(y - 1, 0) + 1) * (min(x + 1, 7) - max(x - 1, 0) + 1)
                          for y in range(8) for x in range(8))
    assert syn["Dense"] == 16 * (dense_conv + 1024 * 32 + 32 * 10)
    res = runner.invoke(app, ["export", str(out), "--samples", "32"])
    assert res.exit_code == 0, res.output
    assert (out / "model.onnx").exists()


def test_arch_conv_on_a_dataset_without_frames_is_one_line():
    from typer.testing import CliRunner

    from lzo_bench.cli import app

    res = CliRunner().invoke(app, ["train", "--arch", "conv", "--dataset", "shd", "--epochs", "1"])
    assert res.exit_code != 0
    assert "--arch conv needs a dataset with frames" in res.output and "Traceback" not in res.output
