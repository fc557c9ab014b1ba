"""A training run's configuration: :class:`TrainConfig` (every option of ``lzo-bench train``), its
validation, and :class:`ConfigError`, the one-line error naming the option at fault (also raised by
the run folder, the loop's setup, profile and reproduce)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from lzo_bench.core.conv import ARCHS, CONV_NETWORKS
from lzo_bench.core.gates import DIST_NAMES, SURROGATE_DISTRIBUTIONS, Method
from lzo_bench.core.rng import MAX_SAMPLES, MAX_SEED
from lzo_bench.data import DATASET_INFO
from lzo_bench.ops.backends import BackendName
from lzo_bench.runtime.threads import threads_problem
from lzo_bench.training.limits import FLOAT32_MAX, FLOAT32_TINY, LIMIT_WHY, MAX_EPOCHS, MAX_NEURONS, MAX_STEPS


class ConfigError(ValueError):
    """A bad option value; ``option`` names the command-line option at fault."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(f"{option} {message}")


def check_float32_positive(option: str, value: float, usual: str) -> None:
    """``value`` > 0, finite and inside float32's normal range, in which training computes (one check
    for train, profile and reproduce: ``profile --delta 1e-300`` used to pass where train refused it)."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(option, f"must be > 0 (got {value})")
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:
        raise ConfigError(option, f"{value:g} does not fit float32, in which training computes; choose a value around {usual}")


def check_device_option(device: str, option: str = "--device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and CUDA only where a GPU is visible."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(option, f"must be auto, cpu, cuda or cuda:N (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(option, "is cuda but no CUDA device is available here; use --device cpu")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``lzo-bench train`` takes. ``None`` means: the dataset's default."""

    dataset: str = "digits"
    arch: str = "fc"  # "fc": --hidden layers; "conv": the dataset's conv layers (lzo_bench.core.conv), then --hidden
    data_dir: str | None = None
    download: bool = False
    method: str = "localzo"
    dist: str = "normal"
    k: float | None = None
    delta: float = 0.05
    samples: int = 1
    bth: float | None = None
    epochs: int = 20
    batch_size: int | None = None
    lr: float | None = None
    hidden: tuple[int, ...] = (200, 200)
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    regularize: bool = True
    energy: bool = False
    threads: int | None = None  # torch's CPU threads for the run (None: torch's own, every core)
    out: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        if self.dataset not in DATASET_INFO:
            raise ConfigError("--dataset", f"must be one of: {', '.join(DATASET_INFO)} (got {self.dataset!r})")
        if self.arch not in ARCHS:
            raise ConfigError("--arch", f"must be one of: {', '.join(ARCHS)} (got {self.arch!r})")
        if self.arch == "conv" and self.dataset not in CONV_NETWORKS:
            raise ConfigError("--arch", f"conv needs a dataset with frames ({', '.join(CONV_NETWORKS)}); "
                                        f"{self.dataset} has none: use --arch fc")
        if self.method not in {m.value for m in Method}:
            raise ConfigError("--method", f"must be one of: {', '.join(m.value for m in Method)} (got {self.method!r})")
        if self.dist not in DIST_NAMES:
            raise ConfigError("--dist", f"must be one of: {', '.join(DIST_NAMES)} (got {self.dist!r})")
        if self.bth is not None and self.method != Method.SPARSEGRAD.value:
            raise ConfigError("--bth", f"applies to --method sparsegrad only (got --method {self.method}); "
                                       "LocalZO's band comes from δ and the draws")
        if self.k is not None and self.dist not in SURROGATE_DISTRIBUTIONS:
            raise ConfigError("--k", f"applies to --dist {' or '.join(SURROGATE_DISTRIBUTIONS)} only (got --dist {self.dist})")
        for option, value, usual in (("--delta", self.delta, "0.05"), ("--bth", self.bth, "0.05"),
                                     ("--lr", self.lr, "1e-3"), ("--k", self.k, "100")):
            if value is not None:
                check_float32_positive(option, value, usual)
        for option, value, top in (("--samples", self.samples, MAX_SAMPLES - 1), ("--epochs", self.epochs, MAX_EPOCHS),
                                   ("--batch-size", self.batch_size, None), ("--steps", self.steps, MAX_STEPS)):
            if value is not None and value < 1:
                raise ConfigError(option, f"must be ≥ 1 (got {value})")
            if value is not None and top is not None and value > top:
                raise ConfigError(option, f"must be ≤ {top} (got {value}): {LIMIT_WHY[option]}")
        if not self.hidden or any(n < 1 for n in self.hidden):
            raise ConfigError("--hidden", f"needs one or more positive layer sizes, e.g. 200,200 (got {list(self.hidden)})")
        if any(n > MAX_NEURONS for n in self.hidden):
            raise ConfigError("--hidden", f"layer sizes must be ≤ {MAX_NEURONS} (got {list(self.hidden)})")
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError("--seed", f"must lie in [0, 2^64) (got {self.seed})")
        check_device_option(self.device)
        BackendName(self.backend)
        if self.threads is not None and threads_problem(self.threads):
            raise ConfigError("--threads", threads_problem(self.threads))

    def resolved(self) -> "TrainConfig":
        """A copy with every dataset default filled in and the device made concrete."""
        info = DATASET_INFO[self.dataset]
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return replace(
            self,
            batch_size=self.batch_size or info.batch_size,
            lr=self.lr or info.lr,
            steps=self.steps or info.default_steps,
            device=device,
        )

    def default_out(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{self.dataset}-{self.method}-{self.dist}-seed{self.seed}-{stamp}"

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (``hidden`` a list): a checkpoint's and config.json's ``train``."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":  # a run saved before --arch existed is fc
        """The configuration :meth:`to_dict` wrote (``hidden`` as a list or tuple), or any dict of its
        fields; the one way a ``TrainConfig`` is rebuilt from a dict (a checkpoint's ``train``, a
        reproduce trial's arguments). An unknown field raises ``TypeError``, a missing ``hidden``
        ``KeyError``; the values are not validated (:meth:`validate`)."""
        return cls(**{**d, "hidden": tuple(d["hidden"])})

