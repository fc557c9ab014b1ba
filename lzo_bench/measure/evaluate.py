"""``lzo-bench evaluate RUN``: a trained network's NeuroBench metrics on its run's test set.

The network runs its inference forward (the pure-PyTorch reference of :mod:`lzo_bench.core.lif`) batch
by batch; the metrics follow NeuroBench 2.3's definitions (:mod:`lzo_bench.measure.nbmetrics`), so they equal
what ``neurobench.benchmarks.Benchmark`` reports on :class:`~lzo_bench.measure.nbmetrics.NeuroBenchNet`
(tested), without NeuroBench installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from lzo_bench import __version__
from lzo_bench.data import batches, load_dataset
from lzo_bench.measure.nbmetrics import NeuroBenchTally, layer_names, static_metrics
from lzo_bench.training.checkpoint import checkpoint_steps, load_checkpoint


@torch.no_grad()
def evaluate_run(run: str | Path, data_dir: str | None = None, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """NeuroBench metrics of the network in ``run`` (a run folder or its checkpoint.pt) on the test
    set of the dataset it trained on, at its ``T``; ``data_dir`` defaults to the run's own.

    Raises :class:`~lzo_bench.training.checkpoint.CheckpointError` for a missing or damaged run and
    :class:`~lzo_bench.data.DatasetError` for a missing or damaged dataset.
    """
    model, ckpt = load_checkpoint(run)
    name, steps = ckpt["dataset"]["name"], checkpoint_steps(ckpt)
    data_dir = data_dir or ckpt["train"].get("data_dir")
    _, test = load_dataset(name, steps, data_dir, channels=model.spec.arch == "conv")
    tally = NeuroBenchTally(layer_names(model))
    for x, y in batches(test, batch_size):
        out = model(x)
        tally.add(model, x, out.spikes, out.logits, y)
        if progress:
            progress(tally.samples, len(test))
    spec = model.spec
    return {
        "lzo_bench_version": __version__,
        "run": str(run),
        "dataset": name,
        "split": "test",
        "samples": tally.samples,
        "steps": steps,
        "network": {"n_in": spec.n_in, "hidden": list(spec.hidden), "n_out": spec.n_out, "arch": spec.arch,
                    "conv": [c.to_dict() for c in spec.conv_shapes()]},
        "epoch": ckpt.get("epoch"),
        "method": ckpt["train"].get("method"),
        "metrics": tally.result() | static_metrics(model),
    }
