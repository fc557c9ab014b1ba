"""Fashion-MNIST from the original idx files (``.gz`` or not), latency-coded as SparseGrad does.

Intensity ``x = pixel/255`` → one spike at step ``⌊20·ln(x/(x − 0.2))⌋`` (τ_eff = 20 steps), none
when ``x ≤ 0.2`` or the step is ``≥ T`` (:mod:`lzo_bench.data.encoding`).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from lzo_bench.data.base import DatasetInfo, EventDataset
from lzo_bench.data.cache import DatasetMissing, DatasetUnreadable, cached_split, events_dataset
from lzo_bench.data.encoding import latency_steps

FMNIST_INFO = DatasetInfo(
    "fmnist", 784, 10, 100, 1.0, "latency(tau_eff=20 steps, thr=0.2, x=pixel/255)",
    lr=2e-4, batch_size=256, init="normal", init_gain=10.0, frame=(1, 28, 28),
)
FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class IdxError(DatasetUnreadable):
    """Not an idx file of unsigned bytes, or one whose header and body disagree."""


def read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or raw): big-endian magic ``0x0000 <dtype 0x08> <ndim>``, then the sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IdxError(f"{path} cannot be read ({type(e).__name__}: {e}); replace it with an intact copy") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise IdxError(f"{path} is not an unsigned-byte idx file (magic {data[:4].hex()})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise IdxError(f"{path} is truncated: its header announces {ndim} dimensions but the file ends first")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise IdxError(f"{path} holds {body.size} values, its header says {dims}")
    return body.reshape(dims)


def find(root: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        for d in (root / "FashionMNIST", root / "FashionMNIST" / "raw"):
            if (d / name).exists():
                return d / name
    return None


def latency_events(images: np.ndarray, steps: int) -> list[np.ndarray]:
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    step = latency_steps(x)
    per = []
    for row in step:
        units = np.nonzero((row >= 0) & (row < steps))[0]
        per.append(np.sort(row[units] * x.shape[1] + units))
    return per


def _split(root: Path, train: bool, steps: int) -> tuple[EventDataset, str]:
    stems = FILES[train]
    paths = [find(root, s) for s in stems]
    if any(p is None for p in paths):
        expected = [str(root / "FashionMNIST" / f"{s}[.gz]") for s in FILES[True] + FILES[False]]
        raise DatasetMissing(
            f"Fashion-MNIST not found under {root}: expected {'; '.join(expected)} (or in FashionMNIST/raw/). "
            "Get the idx files from https://github.com/zalandoresearch/fashion-mnist (there is no --download "
            "for Fashion-MNIST)"
        )

    def build() -> EventDataset:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if len(images) != len(labels):
            raise IdxError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
        if images.shape[1:] != (28, 28):
            raise IdxError(f"{paths[0]} holds images of shape {images.shape[1:]}; Fashion-MNIST's are 28 x 28")
        return events_dataset(latency_events(images, steps), labels.astype(int).tolist(), 10, steps, 784, str(paths[1]))

    params = {"dataset": "fmnist", "train": train, "steps": steps, "tau_eff": 20.0, "threshold": 0.2}
    return cached_split(root / "FashionMNIST", "train" if train else "test", params, list(paths), build)


def load_fmnist(steps: int = 100, data_dir: str | Path = "data", download: bool = False):
    root = Path(data_dir)
    return _split(root, True, steps)[0], _split(root, False, steps)[0]
