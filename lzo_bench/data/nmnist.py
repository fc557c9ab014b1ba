"""N-MNIST (Orchard et al. 2015) through ``tonic.datasets.NMNIST``, binned as SparseGrad does.

Event time (µs) → step ``round(t / 1 ms)``, unit ``x + 34·y`` (the two polarities merged: 1156
units), kept while the step is ``< T``, at most one spike per unit and bin. For a convolutional network
(``channels=True``) the polarities stay apart as two channels: unit ``(x + 34·y)·2 + p`` (2312 units,
channels-last frames 2×34×34).
"""

from __future__ import annotations

from pathlib import Path

from lzo_bench.data.base import DatasetInfo, EventDataset
from lzo_bench.data.cache import DatasetMissing, bin_tonic, cached_split

NMNIST_INFO = DatasetInfo(
    "nmnist", 1156, 10, 300, 1.0, "events: step round(t/1 ms), unit x + 34*y (polarities merged)",
    lr=2e-4, batch_size=256, init="uniform", init_gain=1.0, frame=(2, 34, 34),
)
DT_US = 1000.0


def expected_files(root: Path) -> list[str]:
    d = root / "NMNIST"
    return [str(d / "train.zip"), str(d / "Train" / "<digit 0-9>" / "*.bin") + " (60 000 files)",
            str(d / "test.zip"), str(d / "Test" / "<digit 0-9>" / "*.bin") + " (10 000 files)"]


def _split(root: Path, train: bool, steps: int, download: bool, channels: bool = False) -> tuple[EventDataset, str]:
    folder = root / "NMNIST" / ("Train" if train else "Test")
    zipname = root / "NMNIST" / ("train.zip" if train else "test.zip")
    if not download and not (zipname.exists() and folder.is_dir() and any(folder.glob("*/*.bin"))):
        # tonic downloads whatever it does not find: an empty folder must stop here, not reach the network
        raise DatasetMissing(
            f"N-MNIST not found under {root}: expected {'; '.join(expected_files(root))}. Get it from "
            "https://www.garrickorchard.com/datasets/n-mnist (train.zip, test.zip, extracted beside them) "
            "or pass --download"
        )

    def build() -> EventDataset:
        import tonic  # only to read the source files: a missing dataset or a cache hit needs none

        ds = tonic.datasets.NMNIST(str(root), train=train)
        if channels:
            return bin_tonic(ds, lambda ev: (ev["x"] + 34 * ev["y"]) * 2 + ev["p"], DT_US, steps, 2312, 10)
        return bin_tonic(ds, lambda ev: ev["x"] + 34 * ev["y"], DT_US, steps, 1156, 10)

    params = {"dataset": "nmnist", "train": train, "steps": steps, "dt_us": DT_US,
              "units": "(x+34y)*2+p" if channels else "x+34y"}
    return cached_split(root / "NMNIST", f"{'train' if train else 'test'}", params, [zipname, folder], build)


def load_nmnist(steps: int = 300, data_dir: str | Path = "data", download: bool = False, channels: bool = False):
    root = Path(data_dir)
    (train, _), (test, _) = _split(root, True, steps, download, channels), _split(root, False, steps, download, channels)
    return train, test
