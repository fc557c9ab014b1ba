"""PNG figures (matplotlib is the optional ``plot`` extra; without it, :class:`PlotUnavailable`):
the paper's Figure 1 and a surrogate's sampling figure (``lzo-bench theory plot``), and a
reproduce grid's Figure 2 (training loss per update) and Figure 3 (active % and overall speed-up
per update)."""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lzo_bench.core.distributions import DISTRIBUTIONS, TableDistribution
from lzo_bench.core.gates import GateSpec, Method, localzo_gate, surrogate_gate
from lzo_bench.core.rng import DrawKey, draw_uniform
from lzo_bench.runtime.fsio import atomic_write_bytes

if TYPE_CHECKING:
    from lzo_bench.experiments.recipe import Recipe


class PlotUnavailable(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            "plotting needs matplotlib, which is not installed: pip install 'lzo-bench[plot]'"
        ) from None
    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def figure1(path: Path) -> Path:
    """The paper's Figure 1: expected surrogates (eqs. 10–12) for δ → 0, 0.5 and 1."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    u = torch.linspace(-3, 3, 1201, dtype=torch.float64)
    titles = {"normal": "z ~ Normal(0, 1)", "uniform": "z ~ Unif(−√3, √3)", "laplace": "z ~ Laplace(0, 1/√2)"}
    for ax, (name, dist) in zip(axes, DISTRIBUTIONS.items()):
        ax.axvline(0.0, color="k", ls=":", lw=1, label="δ → 0 (Dirac δ(u))")
        for delta in (0.5, 1.0):
            ax.plot(u, dist.expected_surrogate(u, delta), label=f"δ = {delta:g}")
        ax.set_title(titles[name])
        ax.set_xlabel("u = membrane potential − threshold")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("E[G²(u; z, δ)]")
    plt.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def surrogate_figure(spec: GateSpec, path: Path, draws: int = 200_000) -> Path:
    """Sampled ``|z|`` histogram against the density of ``|z|``, and MC ``c·E[G²]`` against ``g``."""
    plt = _pyplot()
    dist, delta = spec.dist, spec.delta
    idx = torch.arange(draws, dtype=torch.int64)
    zero = torch.zeros_like(idx)
    z = dist.abs_icdf(draw_uniform(DrawKey(0, 0), 0, zero, zero, idx, 0)).double().numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    hi = float(np.quantile(z, 0.995))
    left.hist(z, bins=200, range=(0, hi), density=True, alpha=0.5, label=f"{draws} draws of |z|")
    grid = np.linspace(1e-4, hi, 800)
    left.plot(grid, dist.abs_pdf(grid), "k", lw=1, label="2λ(z) (Theorem 3)")
    left.set_xlabel("|z|")
    left.legend(fontsize=8)
    u = torch.linspace(-4 * delta, 4 * delta, 81, dtype=torch.float32)
    n = 20_000
    g = localzo_gate(u.expand(1, n, -1).contiguous(), spec, DrawKey(1, 0), 0)[0].double()
    right.plot(u, surrogate_gate(u, spec), "k", lw=1, label="target g(u)")
    right.errorbar(u, g.mean(0), yerr=2 * g.std(0) / math.sqrt(n), fmt=".", ms=3,
                   label=f"LocalZO c·E[G²], {n} draws/point")
    right.set_xlabel("u")
    right.legend(fontsize=8)
    title = dist.surrogate.describe() if isinstance(dist, TableDistribution) else dist.name  # type: ignore[union-attr]
    fig.suptitle(f"{title}, δ = {delta:g}, α = {dist.alpha}")
    plt.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def theory_plots(out_dir: Path, surrogate: str, delta: float, k: float | None) -> list[Path]:
    """Figure 1 and the chosen surrogate's sampling figure, written into ``out_dir``."""
    _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = GateSpec.build(Method.LOCALZO, surrogate, delta=delta, k=k)
    return [figure1(out_dir / "figure1.png"), surrogate_figure(spec, out_dir / f"{surrogate}.png")]


def _moving_average(v: list[float], n: int) -> list[float]:
    if n <= 1 or len(v) < n:
        return v
    acc, out = 0.0, []
    for i, x in enumerate(v):
        acc += x
        if i >= n:
            acc -= v[i - n]
        out.append(acc / min(i + 1, n))
    return out


def figures(p: Recipe, out: Path) -> list[Path]:
    """Figure 2 (training loss per update) and Figure 3 (active % and overall speed-up per update)."""
    from lzo_bench.experiments.grid import run_dir
    from lzo_bench.experiments.summary import completed_metrics

    plt = _pyplot()
    completed = {m: [completed_metrics(run_dir(out, m, s)) for s in p.seeds] for m in p.methods}
    metrics = {m: [r for r in runs if r is not None] for m, runs in completed.items()}
    mean_over_trials = lambda series: [statistics.fmean(v) for v in zip(*series)]  # noqa: E731
    color = {m: f"C{i}" for i, m in enumerate(p.methods)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, runs in metrics.items():
        ax.plot(mean_over_trials([r["updates"]["loss"] for r in runs]), label=m, lw=1, color=color[m])
    ax.set_xlabel("gradient update")
    ax.set_ylabel("training loss (mean over trials)")
    ax.set_title(p.title, fontsize=9)
    ax.legend()
    paths = [_save(fig, out / "figure2_loss.png")]
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    ref = metrics.get("surrogate")
    for m, runs in metrics.items():
        active = mean_over_trials([[statistics.fmean(a) for a in r["updates"]["active_pct"]] for r in runs])
        a1.plot(active, label=m, lw=1, color=color[m])
        if ref is not None and m != "surrogate":
            tot = lambda r: [f + b for f, b in zip(r["updates"]["fwd_ms"], r["updates"]["bwd_ms"])]  # noqa: E731
            same = [(a, b) for a, b in zip(completed["surrogate"], completed[m])  # one process timed both
                    if a is not None and b is not None and a.get("process") == b.get("process")]
            if not same:
                continue
            ratios = mean_over_trials([[x / y for x, y in zip(tot(a), tot(b))] for a, b in same])
            a2.plot(_moving_average(ratios, 10), label=m, lw=1, color=color[m])
    a1.set_xlabel("gradient update")
    a1.set_ylabel("active neurons % (mean over layers and trials)")
    a1.set_yscale("log")
    a1.legend()
    a2.set_xlabel("gradient update")
    a2.set_ylabel("overall speed-up vs surrogate (10-update mean)")
    if a2.lines:
        a2.legend()
    else:
        a2.text(0.5, 0.5, "no speed-up to show: no surrogate run\ntimed by the same process", ha="center",
                va="center", transform=a2.transAxes)
    fig.suptitle(p.title, fontsize=9)
    paths.append(_save(fig, out / "figure3_active_speedup.png"))
    plt.close(fig)
    return paths
