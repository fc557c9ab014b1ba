"""Spiking Heidelberg Digits (Cramer et al. 2020) through ``tonic.datasets.SHD``.

Spike time (s, tonic converts to µs) → step ``round(t / 2 ms)``, 700 units, kept while the step
is ``< T``, at most one spike per unit and bin. 20 classes; the loss sums the readout over time.
"""

from __future__ import annotations

import math
from pathlib import Path

from lzo_bench.data.base import DatasetInfo, EventDataset
from lzo_bench.data.cache import DatasetMissing, bin_tonic, cached_split

SHD_INFO = DatasetInfo(
    "shd", 700, 20, 500, 2.0, "events: step round(t/2 ms), 700 units",
    tau_mem_ms=10.0, tau_out_ms=20.0, reduce="sum", lr=1e-3, batch_size=256, init="uniform", init_gain=1.0,
    f_up=10.0,
)
DT_US = 2000.0
assert math.isclose(math.exp(-SHD_INFO.dt_ms / SHD_INFO.tau_mem_ms), 0.8187, abs_tol=1e-4)


def expected_files(root: Path) -> list[str]:
    d = root / "SHD"
    return [str(d / "shd_train.h5"), str(d / "shd_train.h5.zip"), str(d / "shd_test.h5"), str(d / "shd_test.h5.zip")]


def _split(root: Path, train: bool, steps: int, download: bool) -> tuple[EventDataset, str]:
    name = "shd_train.h5" if train else "shd_test.h5"
    h5, zipped = root / "SHD" / name, root / "SHD" / f"{name}.zip"
    if not download and not (h5.exists() and zipped.exists()):
        raise DatasetMissing(
            f"SHD not found under {root}: expected {'; '.join(expected_files(root))} (tonic wants each .h5 "
            "beside its .zip). Get them from https://zenkelab.org/datasets/ or pass --download"
        )

    def build() -> EventDataset:
        import tonic  # only to read the source files: a missing dataset or a cache hit needs none

        ds = tonic.datasets.SHD(str(root), train=train)
        return bin_tonic(ds, lambda ev: ev["x"], DT_US, steps, 700, 20)

    params = {"dataset": "shd", "train": train, "steps": steps, "dt_us": DT_US}
    return cached_split(root / "SHD", "train" if train else "test", params, [h5], build)


def load_shd(steps: int = 500, data_dir: str | Path = "data", download: bool = False):
    root = Path(data_dir)
    (train, _), (test, _) = _split(root, True, steps, download), _split(root, False, steps, download)
    return train, test
