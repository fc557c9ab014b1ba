"""The reference backend's gradients against an independent hand-written dense BPTT.

The test runs its own forward (same float operations, so the same potentials), asks the gate
function for γ at those potentials, and back-propagates by hand with the reset detached:

    readout:  ĝ_o[t] = ∂L/∂o[t] + β_r·ĝ_o[t+1],   ∂L/∂a[t] = (1 − β_r)·ĝ_o[t]
    layer:    e[t] = ∂L/∂s[t]·γ[t],  ĝ_u[t] = e[t] + β·ĝ_u[t+1],
              ∂L/∂W = Σ_t x[t]ᵀ ĝ_u[t],  ∂L/∂x[t] = ĝ_u[t] Wᵀ

including max-over-time (ties share the gradient equally, as ``amax`` does), log-softmax NLL
and both spike-count regularisers. Everything runs in float64.
"""

import pytest
import torch

from lzo_bench.core.gates import GateSpec, gate_values
from lzo_bench.core.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey

T, B, N_IN, HIDDEN, C = 13, 5, 9, (7, 6), 4


def hand_forward_backward(ws, x, y, spec, key, net, reg):
    beta, theta, beta_r = net.beta, net.theta, net.beta_out
    xs, vs, ss, gs = [x], [], [], []
    h = x
    for layer, w in enumerate(ws[:-1]):
        cur = (h.reshape(T * B, -1) @ w).view(T, B, -1)
        u = torch.zeros(B, w.shape[1], dtype=x.dtype)
        s = torch.zeros_like(u)
        v_list = []
        for t in range(T):
            u = beta * u + cur[t] - theta * s
            v_t = u - theta
            s = (v_t > 0).to(x.dtype)
            v_list.append(v_t)
        v = torch.stack(v_list)
        h = (v > 0).to(x.dtype)
        vs.append(v)
        ss.append(h)
        gs.append(gate_values(v, spec, key, layer))
        xs.append(h)
    w_out = ws[-1]
    a = (h.reshape(T * B, -1) @ w_out).view(T, B, -1)
    o = torch.zeros(T, B, C, dtype=x.dtype)
    prev = torch.zeros(B, C, dtype=x.dtype)
    for t in range(T):
        prev = beta_r * prev + (1 - beta_r) * a[t]
        o[t] = prev
    logits = o.max(0).values
    p = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(y, C).to(x.dtype)
    d_logits = (p - onehot) / B
    ties = (o == logits.unsqueeze(0)).to(x.dtype)
    d_o = ties / ties.sum(0, keepdim=True) * d_logits.unsqueeze(0)
    d_a = torch.zeros_like(a)
    acc = torch.zeros(B, C, dtype=x.dtype)
    for t in reversed(range(T)):
        acc = d_o[t] + beta_r * acc
        d_a[t] = (1 - beta_r) * acc
    grads = [None] * len(ws)
    grads[-1] = h.reshape(T * B, -1).T @ d_a.reshape(T * B, -1)
    d_s = d_a @ w_out.T
    for layer in reversed(range(len(ws) - 1)):
        s = ss[layer]
        n = s.shape[2]
        count = s.sum(0)
        # spike-count regularisers, averaged over the batch
        up = reg.lambda_up * (count.mean(1) > reg.f_up).to(x.dtype) / n
        low = -2 * reg.lambda_low * torch.clamp(reg.f_low - count, min=0) / n
        d_s = d_s + ((up.unsqueeze(1) + low) / B).unsqueeze(0)
        e = d_s * gs[layer]
        d_u = torch.zeros_like(e)
        acc = torch.zeros(B, n, dtype=x.dtype)
        for t in reversed(range(T)):
            acc = e[t] + net.beta * acc
            d_u[t] = acc
        x_in = xs[layer]
        grads[layer] = x_in.reshape(T * B, -1).T @ d_u.reshape(T * B, -1)
        d_s = d_u @ ws[layer].T
    return grads, [int(torch.count_nonzero(g)) for g in gs]


@pytest.mark.parametrize("method,dist,m", [
    ("surrogate", "normal", 1), ("sparsegrad", "normal", 1), ("localzo", "normal", 1),
    ("surrogate", "laplace", 1), ("sparsegrad", "uniform", 5), ("localzo", "laplace", 3),
    ("localzo", "uniform", 2), ("localzo", "sigmoid", 1), ("sparsegrad", "fast-sigmoid", 1),
    ("localzo", "fast-sigmoid", 2),
])
def test_reference_equals_hand_bptt(method, dist, m):
    torch.manual_seed(0)
    net = NetworkSpec(N_IN, HIDDEN, C, beta=0.9, beta_out=0.8, init="uniform", init_gain=3.0)
    model = SNN(net, torch.Generator().manual_seed(4)).double()
    x = (torch.rand(T, B, N_IN, generator=torch.Generator().manual_seed(5)) < 0.3).double()
    y = torch.tensor([0, 1, 2, 3, 1])
    spec = GateSpec.build(method, dist, delta=0.4, samples=m)
    key = DrawKey(11, 3)
    reg = SpikeRegularizer(f_up=0.5, f_low=0.5)

    out = model(x, spec, key)
    loss = classification_loss(out.logits, y) + reg(out.counts)
    loss.backward()
    ws = [w.detach() for w in model.weights]
    expected, active = hand_forward_backward(ws, x, y, spec, key, net, reg)

    if method != "surrogate":
        assert out.active == active
        assert all(a > 0 for a in active), "the test must exercise active neurons in every layer"
    for w, g in zip(model.weights, expected):
        assert g.abs().max() > 0
        torch.testing.assert_close(w.grad, g, rtol=1e-10, atol=1e-12)


def test_same_seed_same_gradients_other_seed_other_localzo_gradients():
    net = NetworkSpec(N_IN, HIDDEN, C, beta=0.9, beta_out=0.8, init="uniform", init_gain=3.0)
    x = (torch.rand(T, B, N_IN, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    y = torch.tensor([0, 1, 2, 3, 1])
    spec = GateSpec.build("localzo", "normal", delta=0.4)

    def grads(seed):
        model = SNN(net, torch.Generator().manual_seed(4))
        classification_loss(model(x, spec, DrawKey(seed, 0)).logits, y).backward()
        return [w.grad.clone() for w in model.weights]

    a, b, c = grads(1), grads(1), grads(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_inference_forward_equals_training_forward():
    """Exact, on any CPU: both forwards are one computation (lif_layer: the same GEMM, then the same
    scan, in the same order), not two implementations to compare within rounding (lzo_bench.core.floatcmp)."""
    net = NetworkSpec(N_IN, HIDDEN, C, beta=0.9, beta_out=0.8, init="uniform", init_gain=3.0)
    model = SNN(net, torch.Generator().manual_seed(4))
    x = (torch.rand(T, B, N_IN, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    train_out = model(x, GateSpec.build("localzo"), DrawKey(0, 0))
    with torch.no_grad():
        infer = model(x)
    torch.testing.assert_close(train_out.logits.detach(), infer.logits, rtol=0, atol=0)
    for a, b in zip(train_out.spikes, infer.spikes):
        assert torch.equal(a.detach(), b)
