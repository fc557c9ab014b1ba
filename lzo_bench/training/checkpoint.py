"""Checkpoints: plain dicts of tensors and primitives, loadable with ``torch.load(weights_only=True)``.

Layout (``format = "lzo-bench-checkpoint"``, ``format_version = 1``)::

    {"format", "format_version", "lzo_bench_version",
     "network": NetworkSpec as dict, "dataset": DatasetInfo as dict,
     "train": TrainConfig as dict, "epoch": int,
     "state_dict": {"weights.0": W_1 [n_in, N_1], …, "weights.L": W_out [N_L, C]},
     "optimizer": the Adam state dict (moments and step count), "update": updates done,
     "run": metrics.json's contents as of this epoch (records, per-update lists, warnings)}

``optimizer`` and ``update`` are what ``lzo-bench train --resume`` needs to continue exactly: the
shuffles are keyed by (seed, epoch) and the LocalZO draws by (seed, update), so weights, Adam's
moments and the update counter are the whole state of a run between epochs. ``run`` makes the
checkpoint the epoch's commit: it is renamed into place first, and ``metrics.json`` (renamed after it)
is rebuilt from it on ``--resume``, so a process that dies between the two renames loses nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from lzo_bench import __version__
from lzo_bench.core.model import SNN, NetworkSpec, lif_problem, readout_problem
from lzo_bench.data.base import DatasetInfo
from lzo_bench.runtime.fsio import atomic_torch_save
from lzo_bench.training.limits import MAX_NEURONS, MAX_STEPS

CHECKPOINT_FORMAT = "lzo-bench-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """The file is missing, is not an lzo-bench checkpoint, or is of an incompatible version."""


class TrainRecord(Protocol):
    """What a checkpoint stores of a run's configuration (:class:`lzo_bench.training.config.TrainConfig`)."""

    def to_dict(self) -> dict: ...


def save_checkpoint(
    path: Path, model: SNN, network: NetworkSpec, dataset: DatasetInfo, cfg: TrainRecord, epoch: int,
    optimizer: torch.optim.Optimizer | None = None, update: int | None = None, run: dict | None = None,
) -> Path:
    return atomic_torch_save(path, {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "lzo_bench_version": __version__,
        "network": network.to_dict(),
        "dataset": asdict(dataset),
        "train": cfg.to_dict(),
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    } | ({} if optimizer is None else {"optimizer": optimizer.state_dict(), "update": update})
      | ({} if run is None else {"run": run}))


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """The first 16 hex digits of the sha256 of the weights' names, shapes, dtypes and bytes (in name order):
    what an exported file records to say which weights it holds (issue 34, 7)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def checkpoint_steps(ckpt: dict[str, Any]) -> int:
    """The time steps ``T`` the checkpoint's run trained at (its ``--steps``, else the dataset's)."""
    return int(ckpt["train"].get("steps") or ckpt["dataset"]["default_steps"])


def check_contents(path: Path, ckpt: dict[str, Any], network: NetworkSpec) -> None:
    """What export, evaluate, profile --run and --resume read besides the weights: the dataset (a known
    one, whose inputs and classes the network's shape matches), the training configuration (a dict,
    its steps within train's limit) and the epoch. A hand-edited checkpoint fails here in one line
    instead of with a KeyError, a shape error or a 919 GB allocation later (issue 19, D7)."""
    from lzo_bench.data import DATASET_INFO

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} {what}; use the checkpoint.pt a run of lzo-bench train wrote")

    def count(v: Any, low: int = 0) -> bool:  # an int (not a bool) of at least ``low``
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    dataset, train = ckpt.get("dataset"), ckpt.get("train")
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise bad("has no dataset record")
    info = DATASET_INFO.get(dataset["name"])
    if info is None:
        raise bad(f"names an unknown dataset {dataset['name']!r} (known: {', '.join(DATASET_INFO)})")
    if (network.n_in, network.n_out) != (info.n_units, info.n_classes):
        raise bad(f"has a network of {network.n_in} inputs and {network.n_out} outputs, but {info.name} has "
                  f"{info.n_units} inputs and {info.n_classes} classes")
    if not isinstance(train, dict):
        raise bad("has no training configuration")
    check_train_record(path, train, network)
    steps = train.get("steps")
    if steps is not None and not (count(steps, 1) and steps <= MAX_STEPS):
        raise bad(f"records steps = {steps!r}, outside [1, {MAX_STEPS}]")
    epoch = ckpt.get("epoch")
    if not count(epoch):
        raise bad(f"records epoch = {epoch!r}, not a count of finished epochs")
    if "update" in ckpt and not count(ckpt["update"]):
        raise bad(f"records update = {ckpt['update']!r}, not a count of updates")


def check_network(path: Path, network: Any) -> None:
    """The network record's constants and sizes held to the rules ``nn.LIF``/``nn.LeakyReadout`` (β, θ,
    β_out: :func:`~lzo_bench.core.model.lif_problem`) and ``train`` (sizes in [1, MAX_NEURONS]) apply,
    before a network is built from it: a β of 1.5 used to fail as "normal expects std >= 0.0", a θ of 0
    exported and resumed (issue 34, 5)."""

    def bad(field: str, value: Any, rule: str) -> CheckpointError:
        return CheckpointError(f"{path} records network.{field} = {value!r}, but {rule}; the checkpoint was edited "
                               "or damaged: use the checkpoint.pt a run of lzo-bench train wrote")

    if not isinstance(network, dict):
        raise CheckpointError(f"{path} has no network record; use the checkpoint.pt a run of lzo-bench train wrote")
    for field in ("beta", "beta_out", "theta"):  # a missing one is NetworkSpec's "missing key" below
        value = network.get(field, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(field, value, f"{field} must be a number")
    beta, theta, beta_out = (float(network.get(f, 1.0 if f == "theta" else 0.5)) for f in ("beta", "theta", "beta_out"))
    problem = lif_problem(beta, theta)
    if problem:
        raise bad(problem.split()[0], beta if problem.startswith("beta") else theta, problem)
    problem = readout_problem(beta_out)
    if problem:
        raise bad("beta_out", beta_out, problem.replace("beta", "beta_out", 1))
    hidden = network.get("hidden", [])
    if not isinstance(hidden, (list, tuple)):
        raise bad("hidden", hidden, "hidden must be a list of layer sizes")
    sizes = [(f, network[f]) for f in ("n_in", "n_out") if f in network]
    for field, value in (*sizes, *((f"hidden[{i}]", n) for i, n in enumerate(hidden))):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NEURONS:
            raise bad(field, value, f"layer sizes must be integers in [1, {MAX_NEURONS}]")


def check_train_record(path: Path, train: dict[str, Any], network: NetworkSpec) -> None:
    """The training record's ``arch`` and ``hidden`` are the network's: ``--resume`` rebuilds the network
    from them (a mismatch was a ``load_state_dict`` traceback, issue 34, 11)."""
    arch, hidden = train.get("arch", "fc"), train.get("hidden")
    if arch != network.arch:
        raise CheckpointError(f"{path} records train.arch = {arch!r} but its network is {network.arch}; the "
                              "checkpoint was edited or damaged: use the checkpoint.pt a run of lzo-bench train wrote")
    if not isinstance(hidden, (list, tuple)) or list(hidden) != list(network.hidden):
        raise CheckpointError(f"{path} records train.hidden = {hidden!r} but its network has hidden layers "
                              f"{list(network.hidden)}; the checkpoint was edited or damaged: use the checkpoint.pt a "
                              "run of lzo-bench train wrote")


def load_checkpoint(path: str | Path) -> tuple[SNN, dict[str, Any]]:
    """The network (on CPU, eval mode) and the raw checkpoint dict; a run folder works too."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run folder or its checkpoint.pt")
    try:
        with warnings.catch_warnings():  # a raw pickle's "Detected pickle protocol 4" before our one line (issue 34, 17)
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a non-checkpoint file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an lzo-bench checkpoint")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt.get('format_version')}, this lzo-bench reads "
            f"format {CHECKPOINT_VERSION}; re-train or use a matching lzo-bench version"
        )
    if "network" in ckpt:
        check_network(path, ckpt["network"])
    try:
        model = SNN(NetworkSpec.from_dict(ckpt["network"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a hand-made or damaged checkpoint
        what = f"missing key {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path} does not describe a network this lzo-bench can rebuild: {what}") from None
    check_contents(path, ckpt, model.spec)
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN/inf in {', '.join(bad)}): the run diverged; "
                              "use a checkpoint of a run that finished with finite weights")
    return model.eval(), ckpt
