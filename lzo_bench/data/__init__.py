"""Datasets as spike tensors, one per module: ``digits`` (embedded), ``nmnist``, ``shd``, ``fmnist``;
``base`` (the dataset classes and batches), ``encoding`` (latency coding), ``cache`` (the preprocessed
cache and the missing-file errors); ``load_dataset`` picks one by name.
"""

from __future__ import annotations

import os
from pathlib import Path

from lzo_bench.data.base import DatasetInfo, EventDataset, SpikeDataset, batches
from lzo_bench.data.cache import DatasetError, DatasetMissing, DatasetUnreadable
from lzo_bench.data.digits import DIGITS_INFO, load_digits
from lzo_bench.data.fmnist import FMNIST_INFO, load_fmnist
from lzo_bench.data.nmnist import NMNIST_INFO, load_nmnist
from lzo_bench.data.shd import SHD_INFO, load_shd

DATASETS = {"digits": load_digits, "nmnist": load_nmnist, "shd": load_shd, "fmnist": load_fmnist}
DATASET_INFO: dict[str, DatasetInfo] = {i.name: i for i in (DIGITS_INFO, NMNIST_INFO, SHD_INFO, FMNIST_INFO)}


def default_data_dir() -> Path:
    """``$LZO_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("LZO_DATA_DIR", "data"))


def load_dataset(name: str, steps: int, data_dir: str | Path | None = None, download: bool = False,
                 channels: bool = False):
    """``(train, test)`` of dataset ``name`` at ``steps`` time bins; the error lists the choices.
    ``channels``: units as the channels-last frames of ``DatasetInfo.frame`` (N-MNIST's polarities apart).

    :class:`DatasetMissing` (a ``FileNotFoundError``) lists the files expected and where;
    :class:`DatasetUnreadable` (a ``ValueError``) names files that are there but damaged. Both are
    :class:`DatasetError`.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
    if name == "digits":
        return loader(steps)
    if name == "nmnist":
        return loader(steps, data_dir or default_data_dir(), download, channels)
    return loader(steps, data_dir or default_data_dir(), download)


__all__ = ["DATASETS", "DATASET_INFO", "DIGITS_INFO", "DatasetError", "DatasetInfo", "DatasetMissing",
           "DatasetUnreadable", "EventDataset",
           "SpikeDataset", "batches", "default_data_dir", "load_dataset"]
