"""Peer libraries (lzo_bench.measure.peers): the same network, weights and input in snnTorch (a test
dependency) and, where installed, SpikingJelly and Norse; a missing peer is one clear line."""

import builtins
import json

import pytest
from typer.testing import CliRunner

from lzo_bench.measure import peers
from lzo_bench.cli import app
from lzo_bench.measure.workloads import Workload

TINY = Workload("tiny", 12, 4, 25, 0.9, 0.85, "max", "normal", 1.0, 0.2, batch=6, hidden=(10, 8))


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
    assert by["lzo localzo"]["x_vs_localzo"] == 1.0
    assert by["snntorch"]["x_vs_localzo"] == pytest.approx(by["snntorch"]["total_ms"] / by["lzo localzo"]["total_ms"])


def test_missing_peer_is_one_line_with_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_snntorch(name, *args, **kwargs):
        if name.split(".")[0] == "snntorch":
            raise ImportError("No module named 'snntorch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_snntorch)
    monkeypatch.setattr(peers.importlib, "import_module", lambda m: no_snntorch(m))
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
    peers.print_table(rows, config)
    out = capsys.readouterr().out
    assert peers.DENSE_SUFFIX in out  # not swallowed as rich markup
    assert out.splitlines()[0].startswith("CPU ") and "torch threads" in out.splitlines()[0]


def test_peers_main_refuses_an_unknown_input_mode(capsys):
    with pytest.raises(SystemExit) as e:
        peers.main(["--input", "sparse"])
    assert e.value.code == 2 and "invalid choice: 'sparse'" in capsys.readouterr().err
