"""Readout, regularisers and network construction against hand computations."""

import math

import numpy as np
import pytest
import torch

from lzo_bench.core.model import SNN, NetworkSpec, SpikeRegularizer, leaky_readout


def test_leaky_readout_closed_form():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(9, 3, 5, generator=g) < 0.4).double()
    w = torch.randn(5, 2, generator=g, dtype=torch.float64)
    beta = 0.8
    o = leaky_readout(s, w, beta)
    a = torch.einsum("tbn,nc->tbc", s, w)
    for t in range(9):
        ref = sum(beta ** (t - k) * (1 - beta) * a[k] for k in range(t + 1))
        torch.testing.assert_close(o[t], ref)


def test_regularizer_hand_computation():
    s = np.zeros((4, 2, 3))
    s[:, 0, 0] = 1          # sample 0: neuron 0 fires 4 times, others silent
    s[0:2, 1, :] = 1        # sample 1: every neuron fires twice
    reg = SpikeRegularizer(lambda_up=0.06, f_up=1.0, lambda_low=100.0, f_low=1e-3)
    # sample 0: mean count 4/3 > 1 → 0.06·(1/3); two silent neurons → 100·2·(1e-3)²/3
    # sample 1: mean count 2 → 0.06·1; no silent neuron
    expected = (0.06 / 3 + 100 * 2 * 1e-6 / 3 + 0.06) / 2
    got = float(reg([torch.tensor(s).sum(0)]))
    assert got == pytest.approx(expected, rel=1e-12)
    assert float(SpikeRegularizer(enabled=False)([torch.tensor(s).sum(0)])) == 0.0


def test_init_scales():
    spec = NetworkSpec(400, (300,), 10, beta=0.9, beta_out=0.9, init="normal", init_gain=10.0)
    w = SNN(spec, torch.Generator().manual_seed(0)).weights[0].detach()
    assert float(w.std()) == pytest.approx(10 * 0.1 / math.sqrt(400), rel=0.02)
    spec = NetworkSpec(400, (300,), 10, beta=0.9, beta_out=0.9, init="uniform", init_gain=1.0)
    w = SNN(spec, torch.Generator().manual_seed(0)).weights[0].detach()
    assert float(w.abs().max()) <= 1 / 20 and float(w.abs().max()) > 0.99 / 20


def test_layer_shapes_and_sum_reduce():
    spec = NetworkSpec(6, (5, 4, 3), 2, beta=0.9, beta_out=0.9, reduce="sum", init="uniform", init_gain=3.0)
    model = SNN(spec, torch.Generator().manual_seed(0))
    assert [tuple(w.shape) for w in model.weights] == [(6, 5), (5, 4), (4, 3), (3, 2)]
    x = (torch.rand(8, 2, 6) < 0.5).float()
    out = model(x)
    torch.testing.assert_close(out.logits, leaky_readout(out.spikes[-1], model.weights[-1], 0.9).sum(0))


@pytest.mark.parametrize("kwargs", [{"hidden": ()}, {"hidden": (0,)}, {"reduce": "mean"}, {"init": "xavier"}])
def test_bad_network_spec(kwargs):
    base = dict(n_in=2, hidden=(3,), n_out=2, beta=0.9, beta_out=0.9)
    with pytest.raises(ValueError):
        NetworkSpec(**{**base, **kwargs})
