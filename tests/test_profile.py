"""`lzo-bench profile` end to end on the CPU, and `train --energy`."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.core.model import SNN, NetworkSpec
from lzo_bench.measure.profile import neurobench

runner = CliRunner()


def test_profile_digits_end_to_end(tmp_path):
    out = tmp_path / "p"
    result = runner.invoke(app, ["profile", "--workload", "digits", "--updates", "3", "--warmup", "1",
                                 "--energy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for method in ("autograd-loop", "surrogate", "sparsegrad", "localzo"):
        assert method in result.output
    assert "energy: n/a — the run is on the CPU" in " ".join(result.output.split())
    report = json.loads((out / "profile.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["autograd-loop", "surrogate", "sparsegrad", "localzo"]
    assert report["energy"]["available"] is False and "CPU" in report["energy"]["reason"]
    row = {r["method"]: r for r in report["rows"]}
    base, sur = row["autograd-loop"], row["surrogate"]
    for r in report["rows"]:  # every speedup is a ratio of the medians this JSON reports, the reference's over the row's
        assert r["bwd_speedup_vs_surrogate"] == pytest.approx(sur["bwd_ms"] / r["bwd_ms"])
        assert r["bwd_speedup_vs_autograd_loop"] == pytest.approx(base["bwd_ms"] / r["bwd_ms"])
        assert r["overall_speedup_vs_surrogate"] == pytest.approx((sur["fwd_ms"] + sur["bwd_ms"]) / (r["fwd_ms"] + r["bwd_ms"]))
        assert r["overall_speedup_vs_autograd_loop"] == pytest.approx((base["fwd_ms"] + base["bwd_ms"])
                                                                      / (r["fwd_ms"] + r["bwd_ms"]))
        assert 0 < r["fwd_ms"] < 60_000 and 0 < r["bwd_ms"] < 60_000  # milliseconds of a digits update, not seconds
    assert all(row[m]["j_per_update"] is None for m in row)          # never 0 for "unmeasured"
    assert row["surrogate"]["active_pct"] == [100.0, 100.0]
    assert all(0 <= p < 5 for p in row["localzo"]["active_pct"])
    assert row["localzo"]["peak_mib"] < row["surrogate"]["peak_mib"]
    nb = row["localzo"]["neurobench"]
    assert 0 < nb["ActivationSparsity"] < 1 and nb["SynapticOperations"]["Effective_MACs"] == 0
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert [r["method"] for r in rows] == ["autograd-loop", "surrogate", "sparsegrad", "localzo"]
    assert rows[0]["j_per_update"] == ""
    for c, j in zip(rows, report["rows"]):  # the CSV, written by another route, holds the JSON's numbers
        assert float(c["bwd_speedup_vs_autograd_loop"]) == pytest.approx(j["bwd_speedup_vs_autograd_loop"], rel=1e-5)
        assert [float(c["active_pct_l1"]), float(c["active_pct_l2"])] == pytest.approx(j["active_pct"], rel=1e-5)


def test_profile_json_to_stdout_and_synthetic_workload(tmp_path):
    result = runner.invoke(app, ["profile", "--workload", "shd", "--updates", "3", "--warmup", "0",
                                 "--methods", "surrogate,localzo", "--out", str(tmp_path / "p"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["workload"]["source"].startswith("synthetic spikes at 1.0%")
    assert report["workload"]["n_in"] == 700 and report["workload"]["steps"] == 500
    assert [r["method"] for r in report["rows"]] == ["autograd-loop", "surrogate", "localzo"]


@pytest.mark.parametrize("args,message", [
    (["--methods", "surrogate,magic"], "--methods must be a comma-separated subset"),
    (["--workload", "cifar"], "--workload must be one of: digits, nmnist, shd, fmnist"),
    (["--updates", "1"], "--updates must be ≥ 3"),
    (["--delta", "0"], "--delta must be > 0"),
    (["--device", "cuda"], "--device is cuda but no CUDA device is available here"),
])
def test_profile_bad_input(args, message, tmp_path):
    result = runner.invoke(app, ["profile", *args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert message in result.output


def test_neurobench_counts_by_hand():
    spec = NetworkSpec(3, (2,), 2, beta=0.9, beta_out=0.9, init="uniform", init_gain=1.0)
    model = SNN(spec)
    x = torch.zeros(4, 1, 3)
    x[0, 0, 0] = x[2, 0, 1] = 1.0                     # 2 input events, fan-out 2 → 4 ACs
    spikes = [torch.zeros(4, 1, 2)]
    spikes[0][1, 0, 1] = 1.0                          # 1 hidden spike, fan-out 2 → 2 ACs
    m = neurobench(model, x, spikes)
    assert m["SynapticOperations"] == {"Dense": 4 * (3 * 2 + 2 * 2), "Effective_ACs": 6.0, "Effective_MACs": 0.0}
    assert m["ActivationSparsity"] == pytest.approx(1 - 1 / 8)
    assert m["ParameterCount"] == 10 and m["Footprint"] == 40 and m["ConnectionSparsity"] == 0.0
    x[1, 0, 2] = 0.5                                  # a non-binary input makes that step's layer-1 ops MACs
    m = neurobench(model, x, spikes)
    assert m["SynapticOperations"]["Effective_MACs"] == 1 * 2 and m["SynapticOperations"]["Effective_ACs"] == 6.0


def test_train_energy_records_the_reason(tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--epochs", "1", "--hidden", "8,8", "--energy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["energy"]["requested"] and not metrics["energy"]["available"]
    assert "CPU" in metrics["energy"]["reason"]
    assert metrics["history"][0]["energy_j"] is None and metrics["final"]["energy_j"] is None


def test_a_refused_profile_leaves_no_folder(tmp_path, monkeypatch):
    """Issue 19, D10: profile --backend cuda --out pr left pr/ behind when the backend was refused."""
    from lzo_bench.measure import profile as profile_mod
    from lzo_bench.ops.backends import BackendUnavailable

    def refuse(cfg, progress=None):
        raise BackendUnavailable("the extension was built without CUDA")

    monkeypatch.setattr(profile_mod, "run_profile", refuse)
    result = runner.invoke(app, ["profile", "--updates", "3", "--out", str(tmp_path / "pr")])
    assert result.exit_code == 2 and "is unavailable: the extension was built without CUDA" in result.output
    assert not (tmp_path / "pr").exists()


def test_a_damaged_dataset_is_not_profiled_as_synthetic_spikes(tmp_path):
    """Issue 19, D13: profile --workload fmnist on a damaged folder silently profiled synthetic spikes."""
    d = tmp_path / "data" / "FashionMNIST"
    d.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / stem).write_bytes(b"\x00\x00\x08\x03\x00")  # header cut short
    result = runner.invoke(app, ["profile", "--workload", "fmnist", "--updates", "3", "--data-dir", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: --data-dir holds a damaged fmnist dataset: ") and "move it away" in line
    assert not (tmp_path / "p").exists()


def test_a_full_disk_at_the_report_is_one_line(tmp_path, monkeypatch):
    """Issue 19, D4: profile ended in a traceback when its report hit a full disk."""
    import errno

    from lzo_bench.measure import profile as profile_mod

    def full(report, target, sampler=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(profile_mod, "write_report", full)
    result = runner.invoke(app, ["profile", "--updates", "3", "--warmup", "0", "--methods", "localzo",
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: cannot write the profile into {tmp_path / 'p'} "
                                                             "(No space left on device)")
