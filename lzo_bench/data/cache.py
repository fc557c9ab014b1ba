"""Preprocessed datasets cached on disk next to the data, so epochs never re-bin events.

A cache file ``<root>/lzo_cache/<name>-<key>.pt`` holds one split as events (see
:class:`~lzo_bench.data.base.EventDataset`) plus metadata: the cache format version, the
preprocessing parameters (``key`` hashes them), a fingerprint of the source files (paths, sizes,
modification times) and a CRC of the arrays. A cache whose metadata or CRC does not match, or that
does not load, is stale or corrupt: it is rebuilt, and the reason is returned. A folder the cache
cannot be written to (read-only data) costs the rebuild next time, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lzo_bench.data.base import EventDataset
from lzo_bench.runtime.fsio import atomic_torch_save

CACHE_VERSION = 1


class DatasetError(Exception):
    """The dataset cannot be loaded; the message says which files and what to do."""


class DatasetMissing(DatasetError, FileNotFoundError):
    """The dataset's files are not where they are expected; the message lists them."""


class DatasetUnreadable(DatasetError, ValueError):
    """The dataset's files are there but cannot be read (truncated, damaged, another format, no permission)."""


def fingerprint(paths: list[Path]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of every file under ``paths`` (files or folders), sorted."""
    out = []
    for p in paths:
        if p.is_dir():
            for dirpath, _dirs, files in os.walk(p):
                for f in files:
                    st = os.stat(os.path.join(dirpath, f))
                    out.append((os.path.join(dirpath, f), st.st_size, st.st_mtime_ns))
        elif p.exists():
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _crc(ds: EventDataset) -> int:
    crc = 0
    for t in (ds.events, ds.offsets, ds.labels):
        crc = zlib.crc32(t.contiguous().numpy().tobytes(), crc)
    return crc


def cached_split(
    root: Path, name: str, params: dict, sources: list[Path], build: Callable[[], EventDataset]
) -> tuple[EventDataset, str]:
    """The split from its cache, or built (and cached); returns ``(dataset, what happened)``."""
    key = hashlib.sha1(json.dumps({"v": CACHE_VERSION, **params}, sort_keys=True).encode()).hexdigest()[:12]
    path = root / "lzo_cache" / f"{name}-{key}.pt"
    prints = [list(f) for f in fingerprint(sources)]
    status = "built"
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta = blob["meta"]
            ds = EventDataset(blob["events"], blob["offsets"], blob["labels"], *meta["shape"])
            if meta["version"] != CACHE_VERSION or meta["params"] != params:
                status = "rebuilt: stale cache (other preprocessing parameters)"
            elif meta["sources"] != prints:
                status = "rebuilt: stale cache (the source files changed)"
            elif meta["crc"] != _crc(ds):
                status = "rebuilt: corrupt cache (checksum mismatch)"
            else:
                return ds, "cache hit"
        except Exception as e:  # a truncated or foreign file raises many kinds of errors
            status = f"rebuilt: corrupt cache ({type(e).__name__})"
    try:
        ds = build()
    except DatasetUnreadable:
        raise
    except Exception as e:  # a damaged source file raises many kinds of errors (zip, HDF5, numpy, OS)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatasetUnreadable(f"the {name} files under {root} cannot be read ({type(e).__name__}: {first}); "
                                "replace them with intact copies") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, {
            "events": ds.events, "offsets": ds.offsets, "labels": ds.labels,
            "meta": {"version": CACHE_VERSION, "params": params, "sources": prints, "crc": _crc(ds),
                     "shape": [ds.n_classes, ds.steps, ds.n_units]},
        })
    except OSError as e:
        status += f", not cached: {path.parent} cannot be written ({e.strerror or e})"
    return ds, status


def bin_events(t_us: np.ndarray, units: np.ndarray, dt_us: float, steps: int, n_units: int) -> np.ndarray:
    """Flat sorted unique positions ``t·n_units + u`` of events binned at ``round(t/dt)``,
    keeping steps ``< steps``: at most one spike per unit and bin."""
    step = np.round(np.asarray(t_us, dtype=np.float64) / dt_us).astype(np.int64)
    keep = (step >= 0) & (step < steps)
    return np.unique(step[keep] * n_units + np.asarray(units, dtype=np.int64)[keep])


def events_dataset(per_sample: list[np.ndarray], labels: list[int], n_classes: int, steps: int, n_units: int,
                   source: str = "the dataset") -> EventDataset:
    """One split as events; a label outside ``[0, n_classes)`` is a damaged dataset, named here rather
    than as an IndexError inside the loss (issue 19, D10: Fashion-MNIST labels of 200)."""
    bad = [v for v in labels if not 0 <= v < n_classes]
    if bad:
        raise DatasetUnreadable(f"{source} holds label {bad[0]} ({len(bad)} labels outside 0..{n_classes - 1}); "
                                "replace it with an intact copy")
    counts = np.array([len(e) for e in per_sample], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    events = np.concatenate(per_sample) if per_sample else np.zeros(0, dtype=np.int64)
    dtype = torch.int32 if steps * n_units < 2**31 else torch.int64
    return EventDataset(torch.from_numpy(events).to(dtype), torch.from_numpy(offsets),
                        torch.tensor(labels, dtype=torch.long), n_classes, steps, n_units)


def bin_tonic(ds, units_of: Callable[[np.ndarray], np.ndarray], dt_us: float, steps: int, n_units: int,
              n_classes: int) -> EventDataset:
    """Every sample of a tonic event dataset, binned by :func:`bin_events` (``units_of(events)``
    gives each event's unit)."""
    per, labels = [], []
    for i in range(len(ds)):
        ev, label = ds[i]
        per.append(bin_events(ev["t"], units_of(ev), dt_us, steps, n_units))
        labels.append(int(label))
    return events_dataset(per, labels, n_classes, steps, n_units)
