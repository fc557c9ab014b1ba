"""Data time vs compute time of a training epoch on the N-MNIST workload (issue: datasets).

Writes synthetic N-MNIST files of the real format and size (5-byte events in
``NMNIST/Train/<digit>/*.bin``, ``--events`` per sample over 300 ms, 10 000 files per split —
tonic's minimum), loads them through tonic once (binning and caching), then times, interleaved:
the data part of an update (a batch of 256 from the event cache into the reused float
[T, B, 1156] buffer, as ``lzo-bench train`` loads it)
and the compute part (forward, loss, backward, Adam step of the paper's 2 × 200 network, localzo,
fastest backend). Reports medians and their ratio.

    python benchmarks/data_loading.py --dir /tmp/nmnist-bench
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey
from lzo_bench.data import batches, load_dataset
from lzo_bench.measure.workloads import WORKLOADS, calibrate_gain
from lzo_bench.ops.backends import select_backend


def write_files(root: Path, per_split: int, events: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, zipname in (("Train", "train.zip"), ("Test", "test.zip")):
        (root / "NMNIST").mkdir(parents=True, exist_ok=True)
        (root / "NMNIST" / zipname).write_bytes(b"")
        for i in range(per_split):
            d = root / "NMNIST" / split / str(i % 10)
            d.mkdir(parents=True, exist_ok=True)
            n = rng.poisson(events)
            x, y = rng.integers(0, 34, n), rng.integers(0, 34, n)
            p, t = rng.integers(0, 2, n), np.sort(rng.integers(0, 300_000, n))
            raw = np.stack([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF], 1).astype(np.uint8)
            (d / f"{i:05d}.bin").write_bytes(raw.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/lzo-nmnist-bench")
    ap.add_argument("--files", type=int, default=10_000, help="files per split (tonic needs >= 10 000)")
    ap.add_argument("--events", type=int, default=4000, help="mean events per sample")
    ap.add_argument("--updates", type=int, default=8)
    args = ap.parse_args()
    root = Path(args.dir)
    if not (root / "NMNIST" / "Test").exists():
        t0 = time.perf_counter()
        write_files(root, args.files, args.events)
        print(f"wrote 2 x {args.files} files in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    train, test = load_dataset("nmnist", 300, root)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    train, test = load_dataset("nmnist", 300, root)
    again = time.perf_counter() - t0
    print(f"first load (tonic parse, bin, cache): {first:.1f} s; cached load: {again:.2f} s; "
          f"{len(train)} train samples, {train.events.numel() / len(train):.0f} binned spikes per sample")

    w = WORKLOADS["nmnist"]
    net = w.network()
    it = batches(train, 256, generator=torch.Generator().manual_seed(0))
    x0, _ = next(it)
    gain, rate = calibrate_gain(net, x0)
    net = w.network("normal", gain)
    model = SNN(net, torch.Generator().manual_seed(0))
    spec = GateSpec.build("localzo")
    backend = select_backend("auto", "cpu", spec)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    reg = SpikeRegularizer()
    data_t, comp_t = [], []
    loader = batches(train, 256, generator=torch.Generator().manual_seed(1), reuse_buffer=True,
                     events=backend.network is not None)  # as train() does
    for u in range(args.updates):
        t0 = time.perf_counter()
        x, y = next(loader)
        t1 = time.perf_counter()
        out = model(x, spec, DrawKey(0, u), backend)
        loss = classification_loss(out.logits, y) + reg(out.counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        data_t.append(t1 - t0)
        comp_t.append(t2 - t1)
    d, c = statistics.median(data_t[1:]), statistics.median(comp_t[1:])
    print(f"per update (batch 256, T=300, {backend.name}, localzo, hidden rate {rate:.2%}): data {1e3 * d:.1f} ms, "
          f"compute {1e3 * c:.1f} ms, data/compute {100 * d / c:.1f} % (medians of {args.updates - 1})")


if __name__ == "__main__":
    main()
