"""`lzo-bench reproduce --engine ray` on a local Ray of 2 CPUs: same results as the local engine,
a killed worker's trial retried (or reported lost), resume across engines, Ctrl-C."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lzo_bench
from lzo_bench.cli import app
from lzo_bench.experiments.grid import run_grid
from lzo_bench.experiments.recipe import load_recipe, with_overrides

ray = pytest.importorskip("ray")

runner = CliRunner()
ROOT = Path(lzo_bench.__file__).resolve().parent.parent
QUICK = ROOT / "profiles" / "digits-quick.toml"
SMALL = ('name = "small"\ndataset = "digits"\ndist = "normal"\ndelta = 0.05\nsamples = 1\n'
         'methods = ["surrogate", "localzo"]\nepochs = 1\ntrials = 1\nhidden = [32, 32]\n')


@pytest.fixture(scope="module")
def kill_markers(tmp_path_factory):
    """A local Ray of 2 CPUs whose workers exit hard at the start of a trial named by a marker file
    ``<folder>/<method>-seed<seed>`` (consuming it): a worker lost mid-grid, once per marker."""
    markers = tmp_path_factory.mktemp("kill")

    def setup_worker():
        import lzo_bench.experiments.grid as grid

        real = grid._train_job

        def train_job(kwargs, threads):
            marker = markers / f"{kwargs['method']}-seed{kwargs['seed']}"
            if marker.exists():
                marker.unlink()
                os._exit(1)
            return real(kwargs, threads)

        grid._train_job = train_job

    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": setup_worker, "env_vars": {"PYTHONPATH": pythonpath}})
    try:
        where = ray.get(ray.remote(lambda: __import__("lzo_bench").__file__).remote())
        assert where == lzo_bench.__file__  # the workers train this checkout's code
        yield markers
    finally:
        ray.shutdown()


def _small_profile(tmp_path: Path) -> Path:
    (tmp_path / "small.toml").write_text(SMALL)
    return tmp_path / "small.toml"


def _metrics(out: Path, name: str) -> dict:
    return json.loads((out / name / "metrics.json").read_text())


def test_ray_grid_matches_the_local_engine(tmp_path, kill_markers):
    import torch

    prof = with_overrides(load_recipe(QUICK), epochs=1, trials=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 Ray trials below: losses are bitwise equal only at equal threads
    try:
        local = run_grid(prof, tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    result = runner.invoke(app, ["reproduce", str(QUICK), "--trials", "1", "--epochs", "1", "--engine", "ray",
                                 "--jobs", "2", "--out", str(tmp_path / "ray")])
    assert result.exit_code == 0, result.output
    assert local["trained"] == 3 and "trained 3 run(s), reused 0 finished" in " ".join(result.output.split())
    for name in ("surrogate-seed0", "sparsegrad-seed0", "localzo-seed0"):
        a, b = _metrics(tmp_path / "local", name), _metrics(tmp_path / "ray", name)
        assert b["status"] == "completed"
        assert (a["final"]["train_acc"], a["final"]["test_acc"]) == (b["final"]["train_acc"], b["final"]["test_acc"])
        assert a["updates"]["loss"] == b["updates"]["loss"]
        config = json.loads((tmp_path / "ray" / name / "config.json").read_text())
        assert config["train"]["out"] == str(tmp_path / "ray" / name)  # not the worker's scratch folder
        assert config["environment"]["threads"] == 1
    summary = json.loads((tmp_path / "ray" / "reproduce.json").read_text())
    assert summary["grid"]["engine"] == "ray"
    assert {(t["host"], t["device"]) for t in summary["trials"]} == {(os.uname().nodename, "cpu")}
    assert all(t["device_name"] for t in summary["trials"])
    assert f"ran on {os.uname().nodename} · " in result.output


def test_killed_worker_is_retried_and_resume_skips_finished_trials_of_either_engine(tmp_path, kill_markers):
    out = tmp_path / "grid"
    args = ["reproduce", str(_small_profile(tmp_path)), "--out", str(out)]
    (kill_markers / "localzo-seed0").touch()
    result = runner.invoke(app, args + ["--engine", "ray", "--retries", "1"])
    assert result.exit_code == 0, result.output
    assert not (kill_markers / "localzo-seed0").exists()  # the first attempt's worker did die
    assert "trained 2 run(s), reused 0 finished" in " ".join(result.output.split())
    assert _metrics(out, "localzo-seed0")["status"] == "completed"

    metrics = _metrics(out, "localzo-seed0")
    metrics["status"] = "interrupted"
    (out / "localzo-seed0" / "metrics.json").write_text(json.dumps(metrics))
    before = (out / "surrogate-seed0" / "checkpoint.pt").stat().st_mtime_ns
    result = runner.invoke(app, args)  # --engine local resumes the Ray grid
    assert result.exit_code == 0, result.output
    assert "trained 1 run(s), reused 1 finished" in " ".join(result.output.split())
    assert (out / "surrogate-seed0" / "checkpoint.pt").stat().st_mtime_ns == before
    result = runner.invoke(app, args + ["--engine", "ray"])
    assert result.exit_code == 0, result.output
    assert "trained 0 run(s), reused 2 finished" in " ".join(result.output.split())


def test_a_trial_whose_worker_dies_past_the_retries_is_reported_unfinished(tmp_path, kill_markers):
    out = tmp_path / "grid"
    (kill_markers / "surrogate-seed0").touch()
    result = runner.invoke(app, ["reproduce", str(_small_profile(tmp_path)), "--out", str(out), "--engine", "ray",
                                 "--retries", "0"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "never finished (worker lost): surrogate-seed0: WorkerCrashedError" in text
    assert "surrogate: 0 trial(s) completed, 0 diverged, 0 failed, 1 unfinished" in text
    assert not (out / "surrogate-seed0").exists() and _metrics(out, "localzo-seed0")["status"] == "completed"


def test_ctrl_c_on_the_driver_cancels_the_rest_and_exits_130(tmp_path, kill_markers, monkeypatch):
    from lzo_bench.experiments import grid

    real = grid.store_trial
    stored = []

    def store_then_interrupt(path, files):
        if stored:
            raise KeyboardInterrupt
        stored.append(path.name)
        real(path, files)

    monkeypatch.setattr(grid, "store_trial", store_then_interrupt)
    out = tmp_path / "grid"
    result = runner.invoke(app, ["reproduce", str(QUICK), "--trials", "1", "--epochs", "1", "--engine", "ray",
                                 "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "interrupted after 1 trained run(s)" in " ".join(result.output.split())
    finished = [p.name for p in out.iterdir() if (p / "metrics.json").exists()]
    assert finished == stored and _metrics(out, stored[0])["status"] == "completed"
