"""`lzo-bench theory` through CliRunner."""

import json
import sys

import pytest
from typer.testing import CliRunner

from lzo_bench.cli import app

runner = CliRunner()


def test_table1_json():
    result = runner.invoke(app, ["theory", "table1", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["quantity"]: r for r in json.loads(result.output)}
    assert abs(rows["B_th/δ normal m=1"]["computed"] - 0.798) < 1e-3
    assert abs(rows["B_th/δ laplace m=5"]["computed"] - 1.615) < 1e-3
    fast = rows["fast-sigmoid B_th (k=100, δ=0.05)"]
    assert fast["paper"] == 0.0461 and not fast["agrees"] and "support" in fast["note"]


def test_table1_table():
    result = runner.invoke(app, ["theory", "table1"])
    assert result.exit_code == 0
    assert "0.79788" in result.output and "0.0461" in result.output


def test_check_passes_and_json(tmp_path):
    result = runner.invoke(app, ["theory", "check", "--draws", "4000"])
    assert result.exit_code == 0, result.output
    assert result.output.count("│   pass │") == 5
    rows = json.loads(runner.invoke(app, ["theory", "check", "--draws", "4000", "--json"]).output)
    assert {r["target"].split("(")[0] for r in rows} == {"normal", "uniform", "laplace", "sigmoid", "fast-sigmoid"}
    assert all(r["passed"] and r["draws_per_point"] == 4000 for r in rows)


def test_check_bad_input():
    result = runner.invoke(app, ["theory", "check", "--draws", "5"])
    assert result.exit_code == 2 and "--draws must be ≥ 100" in result.output


def test_plot_writes_real_pngs(tmp_path):
    result = runner.invoke(app, ["theory", "plot", "--out", str(tmp_path), "--surrogate", "fast-sigmoid", "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.output)["files"]
    assert [f.rsplit("/", 1)[1] for f in files] == ["figure1.png", "fast-sigmoid.png"]
    for f in files:
        data = open(f, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["theory", "plot", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "pip install 'lzo-bench[plot]'" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("factor", [1.04, 0.96])
def test_check_catches_a_gate_off_by_four_percent(monkeypatch, factor):
    from lzo_bench.experiments import theory_checks

    real = theory_checks.localzo_gate
    monkeypatch.setattr(theory_checks, "localzo_gate", lambda *a, **k: [g * factor for g in real(*a, **k)])
    rows = theory_checks.check()
    assert [r.passed for r in rows] == [False] * 5, [(r.target, r.worst_ratio) for r in rows]
    assert all(r.worst_ratio > 1.0 for r in rows)


def test_check_passes_with_the_default_draws():
    from lzo_bench.experiments import theory_checks

    rows = theory_checks.check()
    assert all(r.passed and r.worst_ratio < 0.8 for r in rows), [(r.target, r.worst_ratio) for r in rows]
