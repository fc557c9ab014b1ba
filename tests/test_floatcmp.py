"""lzo_bench.core.floatcmp's spike comparator: the potential bound of the LIF recursion holds against
float64 for float32 computations in several orders, and the comparator accepts a spike that flips
within it (and everything downstream of that flip) but reports real defects: a reset to zero, a
threshold off by 1e-3, a single wrong spike, too many flips."""

import pytest
import torch

from lzo_bench.core.floatcmp import MAX_FLIP_FRACTION, lif_potential_bound, network_spikes_agree, spikes_agree


def _recursion(current, beta, theta, spikes=None, reset="subtract", threshold=None):
    """u[t] = β·u[t−1] + I[t] − θ·s[t−1] in the dtype of ``current``; ``spikes`` given: the reset uses
    them (a float64 recursion along a float32 computation's spikes), else the recursion's own."""
    threshold = theta if threshold is None else threshold
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(u)
    us, ss = [], []
    for t, i_t in enumerate(current.unbind(0)):
        u = beta * u * (1 - s) + i_t if reset == "zero" else beta * u + i_t - theta * s
        s = (u - threshold > 0).to(u.dtype) if spikes is None else spikes[t].to(u.dtype)
        us.append(u)
        ss.append((u - threshold > 0).to(u.dtype))
    return torch.stack(us), torch.stack(ss)


def _gemm(h, w):
    steps, batch, n = h.shape
    return (h.reshape(steps * batch, n) @ w).view(steps, batch, -1)


def _sequential(h, w, reverse=False):
    """The current as a float32 loop over inputs, first to last or last to first (an event kernel's order)."""
    order = range(w.shape[0] - 1, -1, -1) if reverse else range(w.shape[0])
    acc = torch.zeros(*h.shape[:2], w.shape[1], dtype=h.dtype)
    for i in order:
        acc = acc + h[:, :, i:i + 1] * w[i]
    return acc


def _case(steps, batch, n_in, n, seed, beta_gain=2.0, graded=False):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(steps, batch, n_in, generator=gen) < 0.3).float()
    if graded:
        x = x * torch.where(torch.rand(x.shape, generator=gen) < 0.5, 0.37, 2.3)
    w = (torch.rand(n_in, n, generator=gen) * 2 - 1) * beta_gain / n_in**0.5
    return x, w


@pytest.mark.parametrize("steps,n_in,beta,graded", [(80, 11, 0.9, False), (60, 300, 0.9, False), (50, 40, 0.0, True),
                                                    (120, 20, 0.99, True)])
def test_potential_bound_holds_against_float64(steps, n_in, beta, graded):
    """Every float32 computation (one GEMM, a loop over inputs either way) is within half the bound of
    the float64 recursion along its own spikes; the bound is far below the potentials' scale."""
    x, w = _case(steps, 4, n_in, 16, seed=n_in, graded=graded)
    worst = 0.0
    for current in (_gemm(x, w), _sequential(x, w), _sequential(x, w, reverse=True)):
        u32, s32 = _recursion(current, beta, 1.0)
        u64, _ = _recursion(_gemm(x.double(), w.double()), beta, 1.0, spikes=s32)
        bound = lif_potential_bound(x, w, beta, 1.0, s32)
        err = (u32.double() - u64).abs()
        assert (err <= bound / 2).all(), float((err / bound).max())
        worst = max(worst, float((err / bound).max()))
        assert float(bound.max()) < 1e-3 * max(1.0, float(u64.abs().max()))
    assert worst > 0  # the float32 computations do round


def test_potential_bound_decays_with_beta_instead_of_growing_with_t():
    x, w = _case(400, 2, 10, 8, seed=1)
    x[200:] = 0  # no input after step 200: the potential and the bound decay
    s = _recursion(_gemm(x, w), 0.5, 1.0)[1]
    bound = lif_potential_bound(x, w, 0.5, 1.0, s)
    assert float(bound[150:200].max()) < 2 * float(bound[:50].max())
    assert float(bound[-1].max()) < 1e-30


# ---- the comparator: two networks of two hidden layers, the reference and a variant of it


def _crafted():
    """Row 1's first input makes neuron 0 of layer 0 reach u = 1 + 2⁻²³ at t = 0 and t = 1, one ulp
    above θ: a variant that rounds its current down by one ulp does not spike there. Layer 1's
    neuron 0 follows it with weight 2, so the flip runs downstream."""
    x, w0 = _case(30, 3, 5, 6, seed=3)
    w1 = _case(30, 3, 6, 4, seed=4)[1]
    x[:, 1, 0] = 0.0
    x[0:2, 1, 0] = 1.0
    x[0:2, 1, 1:] = 0.0
    w0[0, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    w1[0, 0] = 2.0
    return x, [w0, w1]


def _variant(x, weights, beta=0.9, theta=1.0, current=None, reset="subtract", threshold=None):
    """The network's hidden spikes with ``current(h, w, layer)`` (the reference's GEMM by default)."""
    current = current or (lambda h, w, layer: _gemm(h, w))
    h, spikes = x, []
    for layer, w in enumerate(weights):
        h = _recursion(current(h, w, layer), beta, theta, reset=reset, threshold=threshold)[1]
        spikes.append(h)
    return spikes


def _one_ulp_down_in_layer_0(h, w, layer):
    cur = _gemm(h, w)
    return torch.nextafter(cur, torch.tensor(-float("inf"))) if layer == 0 else cur


def test_reference_against_itself_agrees_exactly():
    x, ws = _crafted()
    a = network_spikes_agree(_variant(x, ws), x, ws, 0.9, 1.0)
    assert a.equal and a.legitimate and bool(a.rows_equal.all())


def test_a_flip_within_rounding_and_everything_downstream_of_it_is_legitimate():
    x, ws = _crafted()
    ours = _variant(x, ws, current=_one_ulp_down_in_layer_0)
    a = network_spikes_agree(ours, x, ws, 0.9, 1.0)
    assert a.legitimate, str(a)
    assert a.primary == 1 and a.near == 1 and a.worst <= 1.0
    assert a.flips >= 3, "the flip runs on: the neuron's own next step and layer 1"
    assert a.rows_equal.tolist() == [True, False, True]
    # the downstream flip at t = 1 is far from θ: judged as primary, it would be a defect
    f0 = ours[0] != _variant(x, ws)[0]
    assert bool(f0[1, 1, 0])


def test_too_many_flips_are_not_legitimate_even_within_the_bound():
    x, ws = _crafted()
    x[:, 2] = x[:, 1]  # the crafted row twice: two primary flips
    ours = _variant(x, ws, current=_one_ulp_down_in_layer_0)
    a = network_spikes_agree(ours, x, ws, 0.9, 1.0)
    assert a.entries == 30 * 3 * 10 and a.entries * MAX_FLIP_FRACTION < 2
    assert a.primary == 2 and a.within and not a.few and not a.legitimate
    assert network_spikes_agree(ours, x, ws, 0.9, 1.0, max_fraction=2 / a.entries).legitimate


@pytest.fixture
def random_net():
    x, w0 = _case(100, 8, 20, 30, seed=7, beta_gain=3.0)
    return x, [w0, _case(100, 8, 30, 20, seed=8, beta_gain=3.0)[1]]


def test_a_reset_to_zero_is_a_defect(random_net):
    x, ws = random_net
    a = network_spikes_agree(_variant(x, ws, reset="zero"), x, ws, 0.9, 1.0)
    assert not a.within and not a.legitimate, str(a)
    assert a.worst > 100


def test_a_threshold_off_by_1e_3_is_a_defect(random_net):
    x, ws = random_net
    a = network_spikes_agree(_variant(x, ws, threshold=1.0 + 1e-3), x, ws, 0.9, 1.0)
    assert a.primary > 0 and not a.within and not a.legitimate, str(a)


def test_a_single_wrong_spike_is_a_defect(random_net):
    x, ws = random_net
    ours = _variant(x, ws)
    ours[1] = ours[1].clone()
    ours[1][40, 3, 5] = 1 - ours[1][40, 3, 5]
    a = network_spikes_agree(ours, x, ws, 0.9, 1.0)
    assert a.primary == 1 and not a.within and not a.legitimate
    assert a.rows_equal.tolist() == [i != 3 for i in range(8)]


def test_spikes_agree_takes_layers_in_order():
    """A flip in layer 0 makes layer 1's flips in that row (at or after it) downstream, not before it."""
    s0 = torch.zeros(4, 1, 1)
    s1 = torch.zeros(4, 1, 1)
    o0, o1 = s0.clone(), s1.clone()
    o0[2] = 1
    o1[1] = 1  # before the upstream flip: primary
    o1[3] = 1  # after it: downstream
    u = [torch.full((4, 1, 1), 1.0), torch.full((4, 1, 1), 1.0)]
    bound = [torch.full((4, 1, 1), 1e-6)] * 2
    a = spikes_agree([o0, o1], [s0, s1], u, 1.0, bound)
    assert (a.flips, a.primary, a.near) == (3, 2, 2)


@pytest.mark.parametrize("steps,batch,n_in,hidden,seed", [
    (80, 3, 11, (13, 9), 0),         # tests/test_event_network.py LONG
    (40, 3, 300, (300, 270), 11),    # its layers wider than a thread block
    (75, 7, 300, (260, 40), 6),      # its CUDA grid-stride case
    (35, 5, 70, (70, 33), 6),        # tests/test_cuda_sim.py grid-stride case
])
def test_few_cannot_fail_a_correct_computation_of_the_kernel_test_cases(steps, batch, n_in, hidden, seed):
    """The kernel tests' networks have fewer potentials within the bound of θ than primary flips are
    allowed, so a correct computation passes ``few`` however it rounds (the wide layers do have some:
    there a flip on another CPU is plausible)."""
    from lzo_bench.core.model import SNN, NetworkSpec

    model = SNN(NetworkSpec(n_in, hidden, 4, beta=0.9, beta_out=0.85, init="uniform", init_gain=2.0),
                torch.Generator().manual_seed(seed))
    x = (torch.rand(steps, batch, n_in, generator=torch.Generator().manual_seed(seed + 1)) < 0.2).float()
    h, near, entries = x, 0, 0
    for w in list(model.weights)[:-1]:
        w = w.detach()
        u, s = _recursion(_gemm(h, w), 0.9, 1.0)
        near += int(((u.double() - 1.0).abs() <= lif_potential_bound(h, w, 0.9, 1.0, s)).sum())
        entries += u.numel()
        h = s
    assert near <= max(1, int(MAX_FLIP_FRACTION * entries))
