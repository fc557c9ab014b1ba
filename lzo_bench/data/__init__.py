"""Datasets as spike tensors. One dataset per module; ``load_dataset`` picks one by name."""

from __future__ import annotations

from lzo_bench.data.base import DatasetInfo, SpikeDataset, batches
from lzo_bench.data.digits import DIGITS_INFO, load_digits

DATASETS = {"digits": load_digits}
DATASET_INFO: dict[str, DatasetInfo] = {"digits": DIGITS_INFO}


def load_dataset(name: str, steps: int) -> tuple[SpikeDataset, SpikeDataset]:
    """``(train, test)`` of dataset ``name`` at ``steps`` time bins; the error lists the choices."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
    return loader(steps)


__all__ = ["DATASETS", "DATASET_INFO", "DIGITS_INFO", "DatasetInfo", "SpikeDataset", "batches", "load_dataset"]
