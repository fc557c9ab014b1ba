"""The recipe of a paper table block: :class:`Recipe`, read and checked from a ``profiles/*.toml``
file by :func:`load_recipe` (the TOML files and their keys are the schema; errors name the file and
the key), and :func:`with_overrides` for ``reproduce --epochs / --trials``.

A recipe names the dataset, network, methods, distribution, δ, m, epochs, trials and seeds, and
holds the paper's printed numbers for its block under ``[paper.<method>]``; ``lzo-bench reproduce``
trains its grid (:mod:`lzo_bench.experiments.grid`) and ``lzo-bench train --profile`` one of its
trials.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPE_KEYS = {"name", "title", "dataset", "methods", "dist", "k", "delta", "samples", "bth", "epochs", "trials",
                "seeds", "hidden", "batch_size", "lr", "steps", "paper", "arch"}
MAX_TRIALS = 10_000  # one run folder per (method, trial): beyond this a grid is a typo, not an experiment
PAPER_METRICS = ("train", "test", "backward", "overall")  # what a [paper.<method>] table may hold (numbers)


class RecipeError(ValueError):
    """A recipe file that cannot be read or checked; the message names the file and the key."""


@dataclass(frozen=True)
class Recipe:
    """One ``profiles/*.toml`` file, checked: a table block's grid and the paper's numbers for it."""

    name: str
    title: str
    dataset: str
    methods: tuple[str, ...]
    dist: str
    delta: float
    samples: int
    epochs: int
    trials: int
    seeds: tuple[int, ...]
    hidden: tuple[int, ...] = (200, 200)
    k: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    steps: int | None = None
    bth: float | None = None  # SparseGrad's band as the paper set it; None: δ·E[max_k |z_k|]
    paper: dict[str, dict[str, Any]] = field(default_factory=dict)
    arch: str = "fc"  # "conv": the dataset's conv layers before the hidden ones (lzo-bench train --arch conv)

    def train_kwargs(self, method: str | None = None) -> dict[str, Any]:
        """The :class:`TrainConfig` fields this recipe sets for ``method`` (``bth`` for sparsegrad only)."""
        return {"dataset": self.dataset, "dist": self.dist, "k": self.k, "delta": self.delta,
                "samples": self.samples, "epochs": self.epochs, "hidden": self.hidden,
                "batch_size": self.batch_size, "lr": self.lr, "steps": self.steps, "arch": self.arch,
                "bth": self.bth if method == "sparsegrad" else None}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_problem(key: str, value: Any) -> str | None:
    """What a recipe field must be, if ``value`` is not that; ``None`` when it is fine."""
    from lzo_bench.core.gates import Method
    from lzo_bench.data import DATASET_INFO

    if key == "name":  # the grid folder's name under runs/: no path of its own
        ok = isinstance(value, str) and value not in (".", "..") and value.replace("-", "").replace("_", "").replace(".", "").isalnum()
        return None if ok else "a folder name of letters, digits, '-', '_' and '.' (it names runs/<name>)"
    if key == "dataset":
        return None if value in DATASET_INFO else f"one of {', '.join(DATASET_INFO)}"
    if key == "arch":
        from lzo_bench.core.conv import ARCHS

        return None if value in ARCHS else f"one of {', '.join(ARCHS)}"
    if key in ("title", "dist"):
        return None if isinstance(value, str) and value else "a non-empty string"
    if key == "methods":
        valid = [m.value for m in Method]
        ok = isinstance(value, list) and value and all(m in valid for m in value) and len(set(value)) == len(value)
        return None if ok else f"a non-empty list of {', '.join(valid)}, each once"
    if key in ("delta", "lr", "k", "bth"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return None if ok else "a number > 0"
    if key == "trials":
        return None if _is_int(value) and 1 <= value <= MAX_TRIALS else f"an integer in [1, {MAX_TRIALS}]"
    if key in ("samples", "epochs", "batch_size", "steps"):
        return None if _is_int(value) and value >= 1 else "an integer ≥ 1"
    if key == "seeds":
        ok = isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value) and len(set(value)) == len(value)
        return None if ok else "a list of distinct integers ≥ 0 (a repeated seed would train one folder twice)"
    if key == "hidden":
        ok = isinstance(value, list) and value and all(_is_int(v) and v >= 1 for v in value)
        return None if ok else "a non-empty list of positive integers"
    if key == "paper":
        valid = [m.value for m in Method]

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        ok = isinstance(value, dict) and all(
            m in valid and isinstance(t, dict) and all(
                k in PAPER_METRICS and (number(v) or isinstance(v, list) and len(v) == 2 and all(map(number, v)))
                for k, v in t.items())
            for m, t in value.items())
        return None if ok else (f"tables [paper.<method>] ({', '.join(valid)}) of {', '.join(PAPER_METRICS)}, "
                                "each a number or [mean, std]")
    return None


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe (a profile file); :class:`RecipeError` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no profile at {path}; the shipped ones are in profiles/ (e.g. profiles/digits-quick.toml)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path} is not valid TOML: {e}") from None
    unknown = set(raw) - RECIPE_KEYS
    if unknown:
        raise RecipeError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(RECIPE_KEYS)}")
    missing = {"name", "dataset", "methods", "dist", "delta", "samples", "epochs", "trials"} - set(raw)
    if missing:
        raise RecipeError(f"{path}: missing keys {sorted(missing)}")
    for key, value in raw.items():
        problem = _field_problem(key, value)
        if problem:
            raise RecipeError(f"{path}: {key} must be {problem} (got {value!r})")
    trials = int(raw["trials"])
    seeds = tuple(int(s) for s in raw.get("seeds", range(trials)))
    if len(seeds) < trials:
        raise RecipeError(f"{path}: {trials} trials need {trials} seeds, got {len(seeds)}")
    recipe = Recipe(
        name=raw["name"], title=raw.get("title", raw["name"]), dataset=raw["dataset"],
        methods=tuple(raw["methods"]), dist=raw["dist"], delta=float(raw["delta"]), samples=int(raw["samples"]),
        epochs=int(raw["epochs"]), trials=trials, seeds=seeds[:trials], hidden=tuple(raw.get("hidden", (200, 200))),
        k=raw.get("k"), batch_size=raw.get("batch_size"), lr=raw.get("lr"), steps=raw.get("steps"),
        bth=raw.get("bth"), paper=raw.get("paper", {}), arch=raw.get("arch", "fc"),
    )
    check_trainable(recipe, path)
    return recipe


def check_trainable(p: Recipe, path: Path) -> None:
    """Every trial's configuration checked as train checks it, before any folder exists, with the
    error naming the TOML key (``delta``), not a command-line option reproduce does not have."""
    from lzo_bench.training.config import ConfigError, TrainConfig

    for method in p.methods:
        try:
            TrainConfig(method=method, seed=p.seeds[0], **p.train_kwargs(method)).validate()
        except ConfigError as e:
            said = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), str(e))  # options as keys
            raise RecipeError(f"{path}: {said}") from None


def with_overrides(p: Recipe, epochs: int | None = None, trials: int | None = None) -> Recipe:
    from dataclasses import replace

    trials = trials or p.trials
    seeds = p.seeds if trials <= len(p.seeds) else tuple(range(trials))
    return replace(p, epochs=epochs or p.epochs, trials=trials, seeds=seeds[:trials])
