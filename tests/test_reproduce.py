"""Profiles, `lzo-bench reproduce` (grid, resume, table, files) and `train --profile`."""

import json
import re
import statistics
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.core.gates import DIST_NAMES
from lzo_bench.data import DATASET_INFO
from lzo_bench.experiments.recipe import RecipeError, load_recipe
from lzo_bench.experiments.summary import summarize
from lzo_bench.runtime.signals import Terminated

runner = CliRunner()
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
VALID = ('name = "x"\ndataset = "digits"\ndist = "normal"\ndelta = 0.05\nsamples = 1\nmethods = ["surrogate"]\n'
         'epochs = 3\ntrials = 1\n')


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_profiles_load(path):
    p = load_recipe(path)
    assert p.dataset in DATASET_INFO and p.dist in DIST_NAMES and p.delta == 0.05
    assert p.methods == ("surrogate", "sparsegrad", "localzo") and len(p.seeds) == p.trials
    if p.name.endswith("-quick"):  # local checks, no paper numbers
        assert not p.paper
        assert p.arch == ("conv" if "conv" in p.name else "fc")
        assert p.train_kwargs("localzo")["arch"] == p.arch
    else:
        assert p.arch == "fc"  # the paper's tables are fully connected
        assert (p.epochs, p.trials) == (20, 5)
        assert {"sparsegrad", "localzo"} <= set(p.paper)
        for row in p.paper.values():
            assert len(row["train"]) == 2 and len(row["test"]) == 2 and row["backward"] > 0


def test_table_blocks_cover_the_paper():
    names = {p.stem for p in PROFILES.glob("table*.toml")}
    assert names == {f"table2-{d}-m{m}" for d in ("normal", "laplace", "uniform") for m in (1, 5)} | {
        "table3-sigmoid", "table3-fast-sigmoid", "table3-fast-sigmoid-computed", "table4-shd-normal", "table4-shd-sigmoid",
        "table4-fmnist-normal", "table4-fmnist-sigmoid"}
    assert load_recipe(PROFILES / "table2-laplace-m5.toml").paper["localzo"]["backward"] == 69.4
    printed, computed = (load_recipe(PROFILES / f"table3-fast-sigmoid{s}.toml") for s in ("", "-computed"))
    assert (printed.bth, computed.bth) == (0.0461, None)  # the paper's §5.2 value; δ·E|z| = 0.0514 otherwise
    assert [p.bth for p in map(load_recipe, PROFILES.glob("table*.toml")) if p.bth is not None] == [0.0461]


def test_a_profiles_bth_reaches_sparsegrad_trials_only(tmp_path):
    (tmp_path / "p.toml").write_text(VALID.replace('methods = ["surrogate"]', 'methods = ["sparsegrad", "localzo"]')
                                     + "bth = 0.0461\nhidden = [12, 12]\n")
    out = tmp_path / "grid"
    result = runner.invoke(app, ["reproduce", str(tmp_path / "p.toml"), "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    gate = {m: json.loads((out / f"{m}-seed0" / "config.json").read_text())["gate"] for m in ("sparsegrad", "localzo")}
    assert gate["sparsegrad"]["bth"] == 0.0461 and gate["sparsegrad"]["bth_is_expected_threshold"] is False
    assert gate["localzo"]["bth"] != 0.0461
    for method in ("sparsegrad", "localzo"):  # train --profile too, without "--bth applies to sparsegrad only"
        run = tmp_path / f"run-{method}"
        result = runner.invoke(app, ["train", "--profile", str(tmp_path / "p.toml"), "--method", method, "--out", str(run)])
        assert result.exit_code == 0, result.output
        bth = json.loads((run / "config.json").read_text())["gate"]["bth"]
        assert (bth == 0.0461) == (method == "sparsegrad")


@pytest.mark.parametrize("text,message", [
    ("name = 'x'\nbogus = 1", "unknown keys ['bogus']"),
    ("name = 'x'\ndataset = 'digits'", "missing keys"),
    ("name = ", "is not valid TOML"),
    (VALID.replace("epochs = 3", 'epochs = "two"'), "epochs must be an integer ≥ 1 (got 'two')"),
    (VALID.replace("methods = [", "methods = [] #"), "methods must be a non-empty list of surrogate, sparsegrad, localzo"),
    (VALID + "hidden = ['abc']\n", "hidden must be a non-empty list of positive integers"),
    (VALID + "lr = 'fast'\n", "lr must be a number > 0 (got 'fast')"),
    (VALID + "bth = -1\n", "bth must be a number > 0 (got -1)"),
    (VALID + 'arch = "cnn"\n', "arch must be one of fc, conv (got 'cnn')"),
    (VALID.replace('dataset = "digits"', 'dataset = "shd"') + 'arch = "conv"\n', "arch conv needs a dataset with frames"),
    # issue 19, D9
    (VALID.replace("trials = 1", "trials = 1000000000000"), "trials must be an integer in [1, 10000]"),
    (VALID.replace('dataset = "digits"', 'dataset = "imagenet"'), "dataset must be one of digits, nmnist, shd, fmnist"),
    (VALID + '[paper]\nlocalzo = "x"\n', "paper must be tables [paper.<method>]"),
    (VALID.replace('methods = ["surrogate"]', 'methods = ["surrogate", "surrogate"]'), "methods must be a non-empty list of surrogate, sparsegrad, localzo, each once"),
    (VALID.replace('name = "x"', 'name = "../../escape"'), "name must be a folder name of letters, digits"),
    (VALID.replace("trials = 1", "trials = 2") + "seeds = [3, 3]\n", "seeds must be a list of distinct integers"),
    (VALID.replace("delta = 0.05", "delta = 1e-300"), "delta 1e-300 does not fit float32"),
    (VALID.replace('dist = "normal"', 'dist = "normal"\nk = 3'), "k applies to dist sigmoid or fast-sigmoid only (got dist normal)"),
])
def test_bad_profiles(tmp_path, text, message):
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(tmp_path / "p.toml")
    result = runner.invoke(app, ["reproduce", str(tmp_path / "p.toml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message.split(" [")[0] in result.output


def test_reproduce_digits_quick_and_resume(tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", str(PROFILES / "digits-quick.toml"), "--trials", "2", "--epochs", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for m in ("surrogate", "sparsegrad", "localzo"):
        assert m in text
    assert "trained 6 run(s), reused 0 finished" in text
    for f in ("reproduce.json", "reproduce.csv", "figure2_loss.png", "figure3_active_speedup.png"):
        assert (out / f).exists() and (out / f).stat().st_size > 0
    assert (out / "figure2_loss.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "reproduce.csv").read_text().splitlines()
    assert rows[0].startswith("method,trials,train_mean") and len(rows) == 4

    # interrupt one trial: only that one is trained again
    victim = out / "localzo-seed1"
    metrics = json.loads((victim / "metrics.json").read_text())
    metrics["status"] = "interrupted"
    (victim / "metrics.json").write_text(json.dumps(metrics))
    before = {p.name: (p / "checkpoint.pt").stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained 1 run(s), reused 5 finished" in " ".join(result.output.split())
    after = {p.name: (p / "checkpoint.pt").stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    assert [n for n in before if before[n] != after[n]] == ["localzo-seed1"]


def fake_run(path: Path, train_acc, test_acc, fwd, bwd, active, process="p1"):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({
        "status": "completed", "process": process,
        "final": {"train_acc": train_acc, "test_acc": test_acc, "active_pct": active},
        "updates": {"fwd_ms": fwd, "bwd_ms": bwd, "loss": [1.0] * len(fwd), "active_pct": [active] * len(fwd)},
    }))


def test_summary_statistics_by_hand(tmp_path):
    p = load_recipe(PROFILES / "digits-quick.toml")
    fake_run(tmp_path / "surrogate-seed0", 90, 80, [10, 10], [40, 20], [100, 100])
    fake_run(tmp_path / "surrogate-seed1", 92, 84, [10, 10], [30, 30], [100, 100])
    fake_run(tmp_path / "sparsegrad-seed0", 80, 70, [5, 5], [4, 4], [0.2, 0.4])
    fake_run(tmp_path / "sparsegrad-seed1", 84, 72, [5, 5], [3, 6], [0.4, 0.6])
    fake_run(tmp_path / "localzo-seed0", 85, 75, [10, 10], [20, 20], [0.1, 0.1])
    fake_run(tmp_path / "localzo-seed1", 85, 77, [10, 10], [10, 10], [0.3, 0.3])
    rows = {r["method"]: r for r in summarize(p, tmp_path)["rows"]}
    sg = rows["sparsegrad"]
    assert (sg["train_mean"], sg["test_mean"]) == (82, 71)
    assert sg["train_std"] == pytest.approx(statistics.stdev([80, 84]))
    assert sg["backward_speedup"] == pytest.approx(statistics.fmean([40 / 4, 20 / 4, 30 / 3, 30 / 6]))
    assert sg["overall_speedup"] == pytest.approx(statistics.fmean([50 / 9, 30 / 9, 40 / 8, 40 / 11]))
    assert sg["active_pct"] == pytest.approx([0.3, 0.5])
    assert rows["surrogate"]["backward_speedup"] == 1.0
    assert rows["localzo"]["backward_speedup"] == pytest.approx(statistics.fmean([2, 1, 3, 3]))


def test_train_with_a_profile(tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--profile", str(PROFILES / "digits-quick.toml"), "--epochs", "1",
                                 "--hidden", "16,16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["epochs"] == 1 and cfg["hidden"] == [16, 16]        # given on the command line
    assert cfg["method"] == "localzo" and cfg["dist"] == "normal"  # from the profile
    result = runner.invoke(app, ["train", "--profile", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "no profile at" in result.output


def test_reproduce_missing_dataset_lists_files(tmp_path):
    result = runner.invoke(app, ["reproduce", str(PROFILES / "table2-normal-m1.toml"), "--data-dir", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "NMNIST/train.zip" in result.output and "--download" in result.output


def test_speedups_only_between_runs_timed_by_one_process_and_diverged_trials_counted(tmp_path):
    p = load_recipe(PROFILES / "digits-quick.toml")
    fake_run(tmp_path / "surrogate-seed0", 90, 80, [10, 10], [40, 20], [100, 100], process="A")
    fake_run(tmp_path / "surrogate-seed1", 92, 84, [10, 10], [30, 30], [100, 100], process="A")
    fake_run(tmp_path / "sparsegrad-seed0", 80, 70, [5, 5], [4, 4], [0.2, 0.4], process="A")
    fake_run(tmp_path / "sparsegrad-seed1", 84, 72, [5, 5], [3, 6], [0.4, 0.6], process="B")   # resumed later
    fake_run(tmp_path / "localzo-seed0", 85, 75, [10, 10], [20, 20], [0.1, 0.1], process="B")
    (tmp_path / "localzo-seed1").mkdir()
    (tmp_path / "localzo-seed1" / "metrics.json").write_text(json.dumps({"status": "diverged"}))
    rows = {r["method"]: r for r in summarize(p, tmp_path)["rows"]}
    assert rows["sparsegrad"]["backward_speedup"] == pytest.approx(statistics.fmean([40 / 4, 20 / 4]))  # seed 0 only
    assert rows["localzo"]["backward_speedup"] is None and "one process" in rows["localzo"]["speedup_note"]
    assert (rows["localzo"]["trials"], rows["localzo"]["diverged"]) == (1, 1)
    assert rows["localzo"]["test_mean"] == 75


@pytest.mark.parametrize("signal_error,code", [(KeyboardInterrupt, 130), (Terminated, 143)], ids=["ctrl-c", "sigterm"])
def test_reproduce_interrupted_prints_the_finished_trials_and_exits_128_plus_the_signal(tmp_path, monkeypatch,
                                                                                       signal_error, code):
    from lzo_bench.training import train as train_mod

    real = train_mod.classification_loss
    calls = {"n": 0}

    def interrupted(logits, labels):
        calls["n"] += 1
        if calls["n"] == 40:  # 23 updates per epoch: in the second run
            raise signal_error()
        return real(logits, labels)

    monkeypatch.setattr(train_mod, "classification_loss", interrupted)
    out = tmp_path / "grid"
    result = runner.invoke(app, ["reproduce", str(PROFILES / "digits-quick.toml"), "--trials", "1", "--epochs", "1",
                                 "--out", str(out)])
    assert result.exit_code == code, result.output  # issue 19, D5: SIGTERM exited 143 with no table
    text = " ".join(result.output.split())
    assert "interrupted after 1 trained run(s)" in text and "surrogate" in text
    assert json.loads((out / "surrogate-seed0" / "metrics.json").read_text())["status"] == "completed"


def test_non_utf8_profile_is_one_line(tmp_path):
    (tmp_path / "p.toml").write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(RecipeError, match="is not UTF-8 text"):
        load_recipe(tmp_path / "p.toml")
    assert load_recipe_ok(tmp_path)


def load_recipe_ok(tmp_path) -> bool:
    (tmp_path / "ok.toml").write_text(VALID)
    return load_recipe(tmp_path / "ok.toml").methods == ("surrogate",)



def test_engine_ray_without_ray_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = runner.invoke(app, ["reproduce", str(PROFILES / "digits-quick.toml"), "--engine", "ray",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --engine ray needs Ray: pip install 'lzo-bench[ray]' "
                                                  "(or pip install ray)"]
    assert not list((tmp_path / "o").iterdir())


def test_a_missing_dataset_leaves_no_grid_folder(tmp_path):
    """Issue 19, D10: reproduce with an empty --data-dir left its grid folder behind."""
    (tmp_path / "p.toml").write_text(VALID.replace('dataset = "digits"', 'dataset = "shd"'))
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["reproduce", str(tmp_path / "p.toml"), "--data-dir", str(tmp_path / "empty"),
                                 "--out", str(tmp_path / "grid")])
    assert result.exit_code == 2 and "--data-dir does not hold the dataset" in result.output
    assert not (tmp_path / "grid").exists()


def test_a_full_disk_at_the_summary_is_one_line(tmp_path, monkeypatch):
    """Issue 19, D4: reproduce ended in a traceback when its summary or figures hit a full disk."""
    import errno

    from lzo_bench.experiments import summary

    def full(summary, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(summary, "write_outputs", full)
    (tmp_path / "p.toml").write_text(VALID.replace("epochs = 3", "epochs = 1"))
    result = runner.invoke(app, ["reproduce", str(tmp_path / "p.toml"), "--out", str(tmp_path / "grid")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: cannot write the summary into {tmp_path / 'grid'} "
                                                             "(No space left on device); the finished trials are kept")


def test_the_running_trials_epochs_reach_the_progress(tmp_path):
    """Issue 19, output: reproduce's bar counted trials only; the serial local engine also hands its
    reporter to the running trial (its epochs: 0 at its start, then each finished one)."""
    from lzo_bench.experiments.grid import run_grid
    from lzo_bench.training.reporter import Reporter

    (tmp_path / "p.toml").write_text(VALID.replace("epochs = 3", "epochs = 2").replace("trials = 1", "trials = 2")
                                     + "hidden = [12, 12]\n")
    seen: list[tuple[str, int, int]] = []
    trials: list[tuple[int, int, str]] = []

    class Seen(Reporter):
        def start(self, result, n_batches):
            self.out, self.total = Path(result.out).name, result.config.epochs
            seen.append((self.out, 0, self.total))

        def epoch(self, record):
            seen.append((self.out, record.epoch, self.total))

        def grid_progress(self, done, total, out):
            trials.append((done, total, Path(out).name if out else ""))

    counts = run_grid(load_recipe(tmp_path / "p.toml"), tmp_path / "grid", reporter=Seen())
    assert counts["trained"] == 2
    assert seen == [(f"surrogate-seed{s}", e, 2) for s in (0, 1) for e in (0, 1, 2)]
    assert trials == [(0, 2, ""), (1, 2, "surrogate-seed0"), (2, 2, "surrogate-seed1")]
