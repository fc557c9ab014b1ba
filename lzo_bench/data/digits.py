"""The embedded dataset: scikit-learn's bundled 8×8 handwritten digits (1797 images, no download).

Intensities ``pixel / 16`` are latency-coded like Fashion-MNIST in the paper (τ_eff = 20 steps,
threshold 0.2); the train/test split is fixed (stratified, 80/20, ``random_state=0``) whatever the
training seed.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

from lzo_bench.data.base import DatasetInfo, SpikeDataset
from lzo_bench.data.encoding import latency_encode

#: T = 40 bins of 1 ms covers every latency (the dimmest spiking pixel, 4/16, fires at step 32).
#: lr, batch and init were chosen on this dataset: N(0, 40·(1−β)/√fan_in) makes both hidden
#: layers fire about once per neuron and sample at the start, so all three rules can learn.
DIGITS_INFO = DatasetInfo(
    "digits", 64, 10, 40, 1.0, "latency(tau_eff=20 steps, thr=0.2, x=pixel/16)",
    lr=3e-3, batch_size=64, init="normal", init_gain=40.0, frame=(1, 8, 8),
)
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits(steps: int = DIGITS_INFO.default_steps) -> tuple[SpikeDataset, SpikeDataset]:
    """``(train, test)`` latency-coded digits with ``steps`` time bins of 1 ms."""
    bunch = _sk_load_digits()
    x = bunch.data / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, bunch.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )
    return tuple(  # type: ignore[return-value]
        SpikeDataset(latency_encode(xs, steps), torch.as_tensor(ys, dtype=torch.long), 10)
        for xs, ys in ((x_tr, y_tr), (x_te, y_te))
    )
