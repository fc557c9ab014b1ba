"""Latency coding against hand computations and the embedded digits split."""

import math

import numpy as np
import torch

from lzo_bench.data import batches, load_dataset
from lzo_bench.data.encoding import latency_encode, latency_steps


def test_latency_steps_hand_values():
    x = np.array([1.0, 0.5, 0.25, 0.2, 0.1, 0.0, 0.21])
    # ⌊20·ln(x/(x−0.2))⌋: 1 → ⌊4.46⌋, 0.5 → ⌊10.22⌋, 0.25 → ⌊32.19⌋, 0.21 → ⌊20·ln 21⌋ = ⌊60.89⌋
    assert latency_steps(x).tolist() == [4, 10, 32, -1, -1, -1, 60]
    assert math.floor(20 * math.log(0.21 / 0.01)) == 60


def test_latency_encode_drops_late_and_dim_pixels():
    x = np.array([[1.0, 0.5, 0.21, 0.1]])
    s = latency_encode(x, steps=40)
    assert s.shape == (1, 40, 4) and s.dtype == torch.bool
    assert s[0, 4, 0] and s[0, 10, 1]
    assert s.sum() == 2  # 0.21 would fire at step 60 ≥ T, 0.1 never fires
    assert (s.sum(1) <= 1).all()


def test_digits_fixed_split_and_encoding():
    train, test = load_dataset("digits", 40)
    assert (len(train), len(test)) == (1437, 360)
    assert train.n_units == 64 and train.steps == 40 and train.n_classes == 10
    assert torch.bincount(test.labels, minlength=10).min() >= 35
    again, _ = load_dataset("digits", 40)
    assert torch.equal(train.spikes, again.spikes) and torch.equal(train.labels, again.labels)
    # each unit spikes at most once; every image has spikes
    assert train.spikes.sum(1).max() == 1 and (train.spikes.sum((1, 2)) > 0).all()


def test_batches_cover_everything_once():
    train, _ = load_dataset("digits", 40)
    seen = []
    for x, y in batches(train, 100, generator=torch.Generator().manual_seed(0)):
        assert x.shape[0] == 40 and x.shape[2] == 64 and x.dtype == torch.float32
        seen.append(y)
    assert sum(len(y) for y in seen) == len(train)
    assert torch.equal(torch.cat(seen).sort().values, train.labels.sort().values)
