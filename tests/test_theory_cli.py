"""`lzo-bench theory` through CliRunner."""

import json
import sys

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
    assert result.output.count("pass") == 5
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
