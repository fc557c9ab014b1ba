"""Terminal output through rich: the training progress bar, the summary table, the other commands' tables
and the export report."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from lzo_bench.training.reporter import Reporter
from lzo_bench.training.run_folder import EpochRecord, RunResult

console = Console()


def _pct(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


class RateColumn(ProgressColumn):
    """Steps per second of a task (batches/s, epochs/s), ``-`` until rich has measured it."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:.3g}/s", style="progress.data.speed")


def progress_columns() -> tuple:
    """The columns of every lzo-bench progress bar: what, bar, n/total, rate and time left (elapsed
    once done), compact enough for 80 columns beside a short info text."""
    return (TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(), RateColumn(),
            TimeRemainingColumn(compact=True, elapsed_when_finished=True))


class RichReporter(Reporter):
    """Two progress bars (epochs, batches of the current epoch) with loss, accuracy and active %, each
    with its rate and the time left."""

    def __init__(self, con: Console | None = None):
        self.console = con or console
        self.progress = Progress(*progress_columns(), TextColumn("{task.fields[info]}"), console=self.console,
                                 transient=False)

    def start(self, result: RunResult, n_batches: int) -> None:
        self.console.print(result.backend.describe(), highlight=False)
        self.n_batches = n_batches
        self.progress.start()
        self.epochs = self.progress.add_task("epoch", total=result.config.epochs, completed=len(result.history), info="")
        self.batches = self.progress.add_task("batch", total=n_batches, info="")

    def batch(self, epoch: int, index: int, loss: float, acc: float, active_pct: list[float]) -> None:
        self.progress.update(
            self.batches, completed=index,
            info=f"loss {loss:.3f}  acc {acc:5.1f} %  active {_pct(active_pct)} %",
        )

    def epoch(self, record: EpochRecord) -> None:
        self.progress.update(
            self.epochs, completed=record.epoch,
            info=f"train {record.train_acc:5.1f} %  test {record.test_acc:5.1f} %",
        )
        if record.epoch < self.progress.tasks[self.epochs].total:
            self.progress.reset(self.batches, total=self.n_batches, info="")

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def stop(self) -> None:
        self.progress.stop()


def method_params(g) -> str:
    """The parameters that apply to the rule: δ and m for localzo, the band B_th for sparsegrad."""
    if g.method.value == "localzo":
        return f"{g.dist.name}, δ={g.delta:g}, m={g.samples}"
    if g.method.value == "sparsegrad":
        return f"expected {g.dist.name} surrogate, δ={g.delta:g}, B_th={g.bth:.4f}"
    return f"expected {g.dist.name} surrogate, δ={g.delta:g}"


def summary_table(result: RunResult) -> Table:
    """Final accuracies, active % per layer and mean phase times per update."""
    final = result.final or {}
    g = result.gate
    table = Table(title=f"lzo-bench train — {result.config.dataset}, {g.method.value}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("method", f"{g.method.value} ({method_params(g)})"),
        ("status", result.status),
        ("epochs", str(final.get("epoch", 0))),
        ("train accuracy", f"{final['train_acc']:.2f} %" if final else "n/a"),
        ("test accuracy", f"{final['test_acc']:.2f} %" if final else "n/a"),
    ]
    for i, p in enumerate(final.get("active_pct", [])):
        rows.append((f"active neurons, layer {i + 1} (last epoch)", f"{p:.3g} %"))
    if final:
        rows += [
            ("forward per update", f"{final['fwd_ms']:.2f} ms"),
            ("backward per update", f"{final['bwd_ms']:.2f} ms"),
            ("optimizer per update", f"{final['opt_ms']:.2f} ms"),
            ("wall time", f"{final['wall_s']:.1f} s"),
        ]
    if result.energy.get("requested"):
        rows.append(("energy", f"{final['energy_j']:.1f} J" if final and final.get("energy_j") is not None
                     else f"n/a ({result.energy.get('reason')})"))
    rows += [("backend", result.backend.name)]  # the run folder follows the table on a line of its own
    for name, value in rows:
        table.add_row(name, value)
    return table


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def profile_table(report: dict) -> Table:
    """One row per method: phase times, speedups against ``surrogate``, active %, memory and — when
    measured — power and energy (energy columns are left out when energy is unavailable)."""
    w = report["workload"]
    energy = report["energy"]["available"]
    table = Table(title=f"lzo-bench profile — {w['name']} ({w['source']}), T={w['steps']}, B={w['batch']}, "
                        f"{report['device']}; medians of {report['config']['updates']} updates; × = speed-up vs surrogate")
    cols = ["method", "fwd ms", "bwd ms", "opt ms", "bwd ×", "all ×", "active %", "MiB"]
    if energy:
        cols += ["avg W", "J/update", "fwd J", "bwd J", "opt J", "J ×", "gap %"]
    table.add_column("method", no_wrap=True, min_width=13)
    for c in cols[1:]:
        table.add_column(c, justify="right")
    for r in report["rows"]:
        cells = [
            r["method"], f"{r['fwd_ms']:.1f}", f"{r['bwd_ms']:.1f}", f"{r['opt_ms']:.2f}",
            f"{r['bwd_speedup_vs_surrogate']:.2f}", f"{r['overall_speedup_vs_surrogate']:.2f}",
            _pct(r["active_pct"]), f"{r['peak_mib']:.1f}",
        ]
        if energy:
            std = "" if r["j_per_update_std"] is None else f" ±{r['j_per_update_std']:.2g}"
            cells += [_num(r["avg_w"], ".1f"), _num(r["j_per_update"], ".3g") + std, _num(r["fwd_j"], ".3g"),
                      _num(r["bwd_j"], ".3g"), _num(r["opt_j"], ".3g"), _num(r["energy_ratio_vs_surrogate"], ".2f"),
                      _num(r["sampled_vs_counter_gap_pct"], "+.1f")]
        table.add_row(*cells)
    return table


def evaluate_table(report: dict) -> Table:
    """``lzo-bench evaluate``: the NeuroBench metrics, per sample where NeuroBench counts per sample."""
    m = report["metrics"]
    ops = m["SynapticOperations"]
    table = Table(title=f"lzo-bench evaluate — {report['dataset']} {report['split']} set, {report['samples']} samples, "
                        f"T={report['steps']} (NeuroBench 2.3 definitions)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("accuracy", f"{100 * m['ClassificationAccuracy']:.2f} %"),
        ("ActivationSparsity", f"{m['ActivationSparsity']:.5f}"),
        *((f"  ActivationSparsity {name}", f"{v:.5f}") for name, v in m["ActivationSparsityByLayer"].items()),
        ("SynapticOperations Dense / sample", f"{ops['Dense']:,.0f}"),
        ("SynapticOperations Effective MACs / sample", f"{ops['Effective_MACs']:,.2f}"),
        ("SynapticOperations Effective ACs / sample", f"{ops['Effective_ACs']:,.2f}"),
        ("MembraneUpdates / sample", f"{m['MembraneUpdates']:,.2f}"),
        ("ParameterCount", f"{m['ParameterCount']:,}"),
        ("Footprint (bytes)", f"{m['Footprint']:,}"),
        ("ConnectionSparsity", f"{m['ConnectionSparsity']:.5f}"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def doctor_table(checks: list) -> Table:
    """``lzo-bench doctor``: one row per check (:mod:`lzo_bench.cli.doctor_checks`)."""
    table = Table(title="lzo-bench doctor — what works here")
    table.add_column("item")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    colour = {"ok": "green", "missing": "yellow", "n/a": "red"}
    for c in checks:
        table.add_row(escape(c.item), f"[{colour.get(c.status, 'white')}]{c.status}[/]", escape(c.detail))
    return table


class PeerColumn(NamedTuple):
    """One column of :func:`peers_table`: its header, the cell of a row, and how it sits."""

    header: str
    cell: Callable[[dict], str]
    justify: str = "right"
    no_wrap: bool = False


#: ``profile --peers``'s columns
PEER_COLUMNS = (
    PeerColumn("library", lambda r: r["name"], "left"),
    PeerColumn("version", lambda r: r["version"], "left"),
    PeerColumn("fwd ms", lambda r: f"{r['fwd_ms']:.1f}"),
    PeerColumn("bwd ms", lambda r: f"{r['bwd_ms']:.1f}"),
    PeerColumn("opt ms", lambda r: f"{r['opt_ms']:.2f}"),
    PeerColumn("total ms", lambda r: f"{r['total_ms']:.1f}"),
    PeerColumn("×", lambda r: _num(r["x_vs_localzo"], ".2f")),
    PeerColumn("rate l1 %", lambda r: f"{100 * r['rate_l1']:.3f}"),
    # a network with one hidden layer has no layer 2 (spikes_vs_ours_l2 None)
    PeerColumn("forward vs ours", lambda r: "identical" if r["spikes_vs_ours"] == 0 and r["spikes_vs_ours_l2"] in (0, None)
               else "differs (reset order)", "left"),
)


def peers_table(peers: dict, title: str | None = None, columns: Sequence[PeerColumn] = PEER_COLUMNS) -> Table:
    """One full update per library, interleaved with lzo localzo: ``profile --peers``'s table by default;
    ``benchmarks/peers.py`` passes its own title and columns. Cells are text, never markup."""
    table = Table(title=title or "the same network in other libraries — one full update (forward, loss, backward, "
                                 "Adam); × = how many times slower than lzo localzo")
    for c in columns:
        table.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap)
    for r in peers["rows"]:
        table.add_row(*(escape(c.cell(r)) for c in columns))  # '[dense input]' is no markup
    return table


def reproduce_table(summary: dict) -> Table:
    """The paper's layout: train / test accuracy (mean ± std), backward and overall speed-up, with
    the paper's value under each of ours."""
    prof = summary["profile"]
    table = Table(title=f"{prof['title']} — {prof['trials']} trial(s) × {prof['epochs']} epoch(s); paper in grey")

    def pm(mean, std):
        return f"{mean:.2f} ± {std:.2f}"

    def paper(v):
        return "" if v is None else ("\n[grey62]" + (f"{v[0]:.2f} ± {v[1]:.2f}" if isinstance(v, list) else f"{v:g}") + "[/]")

    for c in ("method", "train %", "test %", "back ×", "over ×", "active %"):
        table.add_column(c, justify="left" if c == "method" else "right")
    for r in summary["rows"]:
        table.add_row(
            r["method"],
            pm(r["train_mean"], r["train_std"]) + paper(r["paper_train"]),
            pm(r["test_mean"], r["test_std"]) + paper(r["paper_test"]),
            _num(r["backward_speedup"], ".2f") + paper(r["paper_backward"]),
            _num(r["overall_speedup"], ".2f") + paper(r["paper_overall"]),
            _pct(r["active_pct"]),
        )
    return table


def print_export_report(form: str, report: dict[str, Any]) -> None:
    """The report of :func:`lzo_bench.export.run.check_nir` or :func:`~lzo_bench.export.run.check_onnx` as tables and
    lines on the console."""
    fmt = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.2f}"  # noqa: E731
    if form == "nir":
        console.print(f"NIR read back: {len(report['nodes'])} nodes ({', '.join(report['nodes'])}); "
                      + ("parameters and weights match" if report["passed"] else "; ".join(report["problems"])),
                      highlight=False)
        c = report["reset_cost"]
        cost = Table(title=f"NIR reset cost: {c.samples} samples of the {c.inputs}, T = {c.steps}, simulated through nirtorch")
        for col in ("network", "reset", "accuracy %", "spikes / sample per layer"):
            cost.add_column(col, justify="left" if col in ("network", "reset") else "right")
        cost.add_row("lzo-bench (trained)", "subtract θ", fmt(c.acc_subtractive), " / ".join(f"{v:.1f}" for v in c.spikes_subtractive))
        cost.add_row("NIR graph", "to 0", fmt(c.acc_nir), " / ".join(f"{v:.1f}" for v in c.spikes_nir))
        console.print(cost)
        console.print(f"predictions unchanged by the reset: {c.agreement_pct:.2f} %; the same simulation with the "
                      f"subtractive reset {'reproduces' if c.subtractive_sim_matches else 'DIFFERS from'} the network (spike "
                      f"counts, and logits to {c.max_dlogit:.2g} against a rounding bound of {c.dlogit_bound:.2g})",
                      highlight=False)
        return
    f16 = report["dtype"] != "float32"
    table = Table(title=f"ONNX parity ({report['nodes']} nodes, independent of T; opset {report['opset']}, IR {report['ir_version']}"
                        + (f"; {report['dtype']} weights vs the network with weights rounded alike" if f16 else "")
                        + "; Δlogit: max |ORT − torch|, spikes ≠: entries that differ)")
    cols = ["provider", "T", "batch", "Δlogit", "spikes ≠", "ORT acc", "torch acc"]  # short: 80 columns
    cols += ["≠ float32", "Δacc f32"] if f16 else []
    for col in (*cols, "result"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for r in report["parity"]:
        extra = [f"{100 * r.spike_flips_vs_float32:.4f} %", f"{r.ort_acc - r.float32_acc:+.2f}"] if f16 and r.float32_acc is not None else []
        table.add_row(r.provider.replace("ExecutionProvider", ""), str(r.steps), str(r.batch), f"{r.max_abs_dlogit:.2e}", f"{100 * r.spike_mismatch:.4f} %",
                      fmt(r.ort_acc), fmt(r.torch_acc), *extra, "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    console.print(table)
    if report["latency"]:
        lat = Table(title=f"Latency per sample, medians (ms), {report['threads']} thread(s) each (torch.set_num_threads = "
                          "onnxruntime intra_op_num_threads); lzo: our backend (cpp on the CPU, cuda on a GPU); "
                          "ORT × lzo: onnxruntime's time in multiples of ours")
        for col in ("provider", "batch", "thr", "ORT ms", "lzo ms", "torch ms", "ORT × lzo"):
            lat.add_column(col, justify="left" if col == "provider" else "right")
        for r in report["latency"]:  # ORT's time as a multiple of our backend's: no "speed-up" below 1
            ours = "n/a" if r.backend_ms_per_sample is None else f"{r.backend_ms_per_sample:.3f}"
            ratio = "n/a" if r.backend_ms_per_sample is None else f"{r.ort_ms_per_sample / r.backend_ms_per_sample:.2f}×"
            lat.add_row(r.provider.replace("ExecutionProvider", ""), str(r.batch), str(r.threads), f"{r.ort_ms_per_sample:.3f}",
                        ours, f"{r.torch_ms_per_sample:.3f}", ratio)
        console.print(lat)
        for note in sorted({r.backend_note for r in report["latency"] if r.backend_note}):
            console.print(f"lzo backend not timed: {note}", highlight=False)
    import onnxruntime as ort

    used = sorted({r.session_providers for r in report["parity"] if r.session_providers})
    console.print(f"onnxruntime {ort.__version__}: available providers {', '.join(ort.get_available_providers())}; "
                  f"sessions ran on {' / '.join(used) or 'n/a'}", highlight=False)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        console.print("CUDA: not checked — this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu; README).",
                      highlight=False)
