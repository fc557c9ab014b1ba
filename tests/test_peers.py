"""Peer libraries (the harness lzo_bench.measure.peers, the adapters lzo_bench.measure.peer_models, the
command line benchmarks/peers.py): the same network, weights and input in snnTorch (a test dependency)
and, where installed, SpikingJelly and Norse; a missing peer is one clear line."""

import builtins
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.cli.report import peers_table
from lzo_bench.measure import peer_models, peers
from lzo_bench.measure.workloads import Workload, conv_workload

TINY = Workload("tiny", 12, 4, 25, 0.9, 0.85, "max", "normal", 1.0, 0.2, batch=6, hidden=(10, 8))


def _bench():
    """benchmarks/peers.py, the harness's command line, as a module."""
    spec = importlib.util.spec_from_file_location("bench_peers", Path(__file__).parents[1] / "benchmarks" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_snntorch_forward_is_ours_and_localzo_row_present():
    x, y = peers.make_inputs(TINY)
    weights, _, rate = peers.initial_weights(TINY, x)
    assert rate > 0
    rows = peers.run_contenders(["snntorch", peers.REFERENCE], x, y, weights, TINY, repeats=2, warmup=1,
                                log=lambda m: None)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"snntorch", "lzo localzo"}
    assert by["snntorch"]["spikes_vs_ours"] == 0 and by["snntorch"]["spikes_vs_ours_l2"] == 0
    assert by["snntorch"]["spike_entries_differing_l1"] == 0
    assert [r["name"] for r in rows] == ["snntorch", "lzo localzo"] and all(r["repeats"] == 2 for r in rows)


def test_phase_times_are_milliseconds_and_the_ratios_are_the_medians(monkeypatch):
    """A peer whose forward sleeps 30 ms: its fwd_ms and total_ms are at least 30 (ms, not s), each phase
    median is at most the total's, and x_vs_localzo is the row's total over localzo's, both read from the rows."""
    real = peer_models.snntorch_factory

    def slow(shape, weights):
        net, fl, detail = real(shape, weights)

        def forward_loss(x, y, update):
            time.sleep(0.03)
            return fl(x, y, update)
        return net, forward_loss, detail

    monkeypatch.setitem(peers.PEER_FACTORIES, "snntorch", ("snntorch", slow))
    x, y = peers.make_inputs(TINY)
    weights, _, _ = peers.initial_weights(TINY, x)
    rows = peers.run_contenders([peers.REFERENCE, "snntorch"], x, y, weights, TINY, repeats=3, warmup=1,
                                log=lambda m: None)
    by = {r["name"]: r for r in rows}
    s, ref = by["snntorch"], by[peers.REFERENCE]
    assert 30 <= s["fwd_ms"] <= s["total_ms"] and s["bwd_ms"] <= s["total_ms"] and s["opt_ms"] <= s["total_ms"]
    assert s["total_ms"] < 30_000
    for r in rows:
        assert r["x_vs_localzo"] == pytest.approx(r["total_ms"] / ref["total_ms"])
        assert r["bwd_x_vs_localzo"] == pytest.approx(r["bwd_ms"] / ref["bwd_ms"])
        assert r["cpu_x_vs_localzo"] == pytest.approx(r["cpu_ms"] / ref["cpu_ms"])


def test_benchmark_json_rows_in_order_with_ratios_from_their_medians(capsys):
    """benchmarks/peers.py --json: the rows in the order asked for, every ratio the row's median over localzo's."""
    assert _bench().main(["--steps", "6", "--batch", "4", "--repeats", "2", "--warmup", "1", "--threads", "1",
                          "--only", "snntorch,lzo localzo,lzo surrogate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [r["name"] for r in rows] == ["snntorch", "lzo localzo", "lzo surrogate"]
    ref = rows[1]
    for r in rows:
        assert r["x_vs_localzo"] == pytest.approx(r["total_ms"] / ref["total_ms"])
        assert r["bwd_x_vs_localzo"] == pytest.approx(r["bwd_ms"] / ref["bwd_ms"])
        assert r["repeats"] == 2 and r["threads"] == 1
    assert out["config"]["steps"] == 6 and out["config"]["batch"] == 4


def test_one_hidden_layer_has_no_layer_2_columns():
    """profile --arch conv --peers (digits: one conv layer) raised IndexError reading hidden layer 2's spikes."""
    w = dataclasses.replace(conv_workload("digits"), steps=4, batch=2)
    x, y = peers.make_inputs(w)
    weights, _, _ = peers.initial_weights(w, x)
    rows = peers.run_contenders(["snntorch", peers.REFERENCE], x, y, weights, w, repeats=1, warmup=0, log=lambda m: None)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"snntorch", peers.REFERENCE}
    for r in rows:
        assert r["rate_l2"] is None and r["spikes_vs_ours_l2"] is None and 0 <= r["rate_l1"] <= 1
    assert by[peers.REFERENCE]["spikes_vs_ours"] == 0
    table = peers_table({"rows": rows})
    assert list(table.columns[-1].cells)[1] == "identical"


def test_missing_peer_is_one_line_with_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_snntorch(name, *args, **kwargs):
        if name.split(".")[0] == "snntorch":
            raise ImportError("No module named 'snntorch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_snntorch)
    monkeypatch.setattr(peer_models.importlib, "import_module", lambda m: no_snntorch(m))
    x, y = peers.make_inputs(TINY)
    weights, _, _ = peers.initial_weights(TINY, x)
    said: list[str] = []
    rows = peers.run_contenders(["snntorch", peers.REFERENCE], x, y, weights, TINY, repeats=1, warmup=0, log=said.append)
    assert [r["name"] for r in rows] == ["lzo localzo"]
    assert len(said) == 1 and said[0].startswith("skipped snntorch:") and 'pip install -e ".[bench]"' in said[0]


def test_profile_peers_cli(tmp_path):
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["profile", "--workload", "digits", "--updates", "3", "--warmup", "1", "--peers",
                                      "--methods", "localzo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "profile.json").read_text())
    p = report["peers"]
    names = [r["name"] for r in p["rows"]]
    assert p["available"] and "snntorch" in names and "lzo localzo" in names
    for lib in ("spikingjelly", "norse"):  # installed with the bench extra, else named as skipped
        assert lib in names or any(s.startswith(f"skipped {lib}") for s in p["skipped"])
    assert "peers:" in result.output and "other libraries" in " ".join(result.output.split())


def test_input_both_times_our_rows_from_the_dense_tensor_too(capsys):
    """``--input both``: each of our rows twice, once from events made outside the update and once from the
    dense tensor every peer gets (converted inside the update); same spikes, and the table names both."""
    x, y = peers.make_inputs(TINY)
    weights, _, _ = peers.initial_weights(TINY, x)
    rows = peers.run_contenders([peers.REFERENCE, "snntorch"], x, y, weights, TINY, repeats=2, warmup=1,
                                log=lambda m: None, input_mode="both")
    by = {r["name"]: r for r in rows}
    dense = f"{peers.REFERENCE} {peers.DENSE_SUFFIX}"
    assert set(by) == {peers.REFERENCE, dense, "snntorch"}
    assert (by[peers.REFERENCE]["input"], by[dense]["input"], by["snntorch"]["input"]) == ("events", "dense", "dense")
    assert by[dense]["spikes_vs_ours"] == 0 and by[dense]["spike_entries_differing_l1"] == 0
    assert by[dense]["x_vs_localzo"] == pytest.approx(by[dense]["total_ms"] / by[peers.REFERENCE]["total_ms"])
    config = {"shape": "tiny", "steps": TINY.steps, "batch": TINY.batch, "n_in": TINY.n_in, "hidden": list(TINY.hidden),
              "n_out": TINY.n_out, "gain": 1.0, "repeats": 2, "warmup": 1, "input": "both",
              "machine": peers.machine_info()}
    _bench().print_table(rows, config)
    out = capsys.readouterr().out
    assert peers.DENSE_SUFFIX in out  # not swallowed as rich markup
    assert out.splitlines()[0].startswith("CPU ") and "torch threads" in out.splitlines()[0]


def test_peers_main_refuses_an_unknown_input_mode(capsys):
    with pytest.raises(SystemExit) as e:
        _bench().main(["--input", "sparse"])
    assert e.value.code == 2 and "invalid choice: 'sparse'" in capsys.readouterr().err
