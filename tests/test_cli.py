"""The command line through Typer's CliRunner: help, a tiny run, and every bad input."""

import json
import re

import pytest
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.training import train as train_mod

runner = CliRunner()


def plain(text: str) -> str:
    """Output without ANSI codes, box drawing and line wrapping."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"[│╭╮╰╯─]", " ", text)
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_help_lists_train_options():
    out = plain(runner.invoke(app, ["train", "--help"]).output)
    for option in ("--method", "--dist", "--delta", "--samples", "--bth", "--epochs", "--batch-size",
                   "--lr", "--hidden", "--steps", "--seed", "--device", "--out", "--backend"):
        assert option in out


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("lzo-bench ")


def test_tiny_train_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--epochs", "1", "--hidden", "16,12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "backend: cpp (lzo C++ ops on the CPU, event-driven end to end)" in text and "test accuracy" in text and "active neurons, layer 2" in text
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.json", "checkpoint.pt"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert {"train_acc", "test_acc", "active_pct"} <= metrics["final"].keys()
    assert len(metrics["final"]["active_pct"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["hidden"] == [16, 12] and config["gate"]["method"] == "localzo"


def test_resume_trains_a_finished_run_further_with_its_own_configuration(tmp_path):
    out, straight = tmp_path / "run", tmp_path / "straight"
    for target, epochs in ((out, "1"), (straight, "2")):
        result = runner.invoke(app, ["train", "--epochs", epochs, "--hidden", "16,12", "--seed", "3", "--out", str(target)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--resume", str(out), "--lr", "0.1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: --resume continues {out} with its own configuration; only "
                                                  "--epochs and --energy may be given with it (got --lr)"]
    result = runner.invoke(app, ["train", "--resume", str(out)])
    assert result.exit_code == 2 and "has already finished 1 epoch(s); pass --epochs N > 1" in plain(result.output)
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    history = [json.loads((p / "metrics.json").read_text())["history"] for p in (out, straight)]
    assert [h["test_acc"] for h in history[0]] == [h["test_acc"] for h in history[1]]
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("args,message", [
    (["--method", "magic"], "'magic' is not one of 'surrogate', 'sparsegrad', 'localzo'"),
    (["--dist", "cauchy"], "'cauchy' is not one of 'normal', 'uniform', 'laplace', 'sigmoid', 'fast-sigmoid'"),
    (["--dist", "normal", "--k", "3"], "error: --k applies to --dist sigmoid or fast-sigmoid only"),
    (["--dist", "sigmoid", "--k", "0"], "error: --k must be > 0 (got 0.0)"),
    (["--dist", "sigmoid", "--k", "1e38"], "error: --k 1e+38 gives no usable distribution for --dist sigmoid: c = 0"),  # D13
    (["--delta", "1e300"], "error: --delta 1e+300 does not fit float32, in which training computes; choose a value around 0.05"),
    (["--lr", "1e39"], "error: --lr 1e+39 does not fit float32, in which training computes; choose a value around 1e-3"),
    (["--delta", "0"], "error: --delta must be > 0 (got 0.0)"),
    (["--delta", "-0.1"], "error: --delta must be > 0 (got -0.1)"),
    (["--samples", "0"], "error: --samples must be ≥ 1 (got 0)"),
    (["--epochs", "0"], "error: --epochs must be ≥ 1 (got 0)"),
    (["--epochs", "99999999999999999999999"], "error: --epochs must be ≤ 1000000 (got 99999999999999999999999)"),  # D13
    (["--hidden", ""], "error: --hidden needs one or more positive layer sizes"),
    (["--hidden", "200,,x"], "error: --hidden needs one or more positive layer sizes"),
    (["--method", "sparsegrad", "--bth", "0"], "error: --bth must be > 0 (got 0.0)"),
    (["--bth", "0.04"], "error: --bth applies to --method sparsegrad only (got --method localzo)"),
    (["--hidden", "200,"], "error: --hidden needs one or more positive layer sizes, e.g. 200,200 (got '200,')"),
    (["--seed", "18446744073709551616"], "error: --seed must lie in [0, 2^64) (got 18446744073709551616)"),
    (["--samples", "1000000"], "error: --samples must be ≤ 65535 (got 1000000): the kernels count LocalZO samples"),
    (["--steps", "1000000000"], "error: --steps must be ≤ 100000 (got 1000000000)"),
    (["--hidden", "10000000000"], "error: --hidden layer sizes must be ≤ 1048576"),
    (["--device", "tpu"], "error: --device must be auto, cpu, cuda or cuda:N (got 'tpu')"),
    (["--device", "cuda"], "error: --device is cuda but no CUDA device is available here"),
])
def test_bad_input_exit_code_and_message(args, message, tmp_path):
    result = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in plain(result.output)
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_unwritable_out_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["train", "--epochs", "1", "--out", str(blocker / "run")])
    assert result.exit_code == 2
    assert "error: --out cannot be written" in plain(result.output)


def test_ctrl_c_keeps_finished_epochs_and_exits_130(tmp_path, monkeypatch):
    real = train_mod.classification_loss
    calls = {"n": 0}

    def interrupted(logits, labels):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(logits, labels)

    monkeypatch.setattr(train_mod, "classification_loss", interrupted)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--epochs", "3", "--hidden", "16,16", "--out", str(out)])
    assert result.exit_code == 130
    assert "interrupted after 1 finished epoch(s)" in plain(result.output)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["history"]) == 1
    assert (out / "checkpoint.pt").exists()


def test_nan_loss_exits_1_naming_epoch_and_update(tmp_path, monkeypatch):
    real = train_mod.classification_loss
    monkeypatch.setattr(train_mod, "classification_loss", lambda lo, la: real(lo, la) * float("nan"))
    result = runner.invoke(app, ["train", "--epochs", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "loss became NaN/inf at epoch 1, update 0" in plain(result.output)


@pytest.mark.parametrize("args,message", [
    (["--device", "tpu"], "error: --device must be auto, cpu, cuda or cuda:N (got 'tpu')"),
    (["--delta", "inf"], "error: --delta must be > 0 (got inf)"),
    (["--delta", "1e-300"], "error: --delta 1e-300 does not fit float32, in which training computes"),  # D13: train refused it
    (["--energy-seconds", "nan"], "error: --energy-seconds must be > 0 and finite (got nan)"),          # D13: bare NaN in JSON
    (["--methods", "localzo,localzo"], "error: --methods names a method twice ('localzo,localzo')"),     # D13: duplicate rows
    (["--samples", "70000"], "error: --samples must lie in [1, 65535] (got 70000)"),
])
def test_profile_bad_input_is_one_line_exit_2(args, message, tmp_path):
    result = runner.invoke(app, ["profile", *args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert message in plain(result.output)


def test_a_damaged_dataset_is_one_line_and_leaves_no_folder(tmp_path):
    d = tmp_path / "data" / "FashionMNIST"
    d.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / stem).write_bytes(b"\x00\x00\x08\x03\x00")  # header cut short
    result = runner.invoke(app, ["train", "--dataset", "fmnist", "--data-dir", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data-dir holds a damaged dataset: ")
    assert "train-images-idx3-ubyte is truncated" in lines[0] and not (tmp_path / "run").exists()


def test_doctor_says_plainly_what_works_here(monkeypatch):
    import torch

    from lzo_bench.cli import doctor_checks as doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["item"]: r for r in json.loads(result.output)}
    assert rows["GPU"]["status"] == "n/a" and rows["GPU"]["detail"].startswith("no GPU here")
    assert rows["CUDA ops"]["status"] == "n/a" and rows["NVML energy"]["status"] == "n/a"
    assert rows["C++ ops"]["status"] == "ok" and "torch_extensions" in rows["C++ ops"]["detail"]
    assert rows["torch"]["detail"].startswith(torch.__version__)
    assert {m for m, *_ in doctor.EXTRAS} <= set(rows)
    for module, dist, extra, _use in doctor.EXTRAS:
        if rows[module]["status"] == "missing":
            assert f"lzo-bench[{extra}]" in rows[module]["detail"] or dist in rows[module]["detail"]
    table = plain(runner.invoke(app, ["doctor"]).output)
    assert "lzo-bench doctor" in table and "no GPU here" in table


def test_doctor_reports_the_onnxruntime_clash(monkeypatch):
    from importlib import metadata

    from lzo_bench.cli import doctor_checks as doctor

    real = list(metadata.distributions())

    class Fake:
        metadata = {"Name": "onnxruntime-gpu"}

    monkeypatch.setattr(doctor.metadata, "distributions", lambda: real + [Fake()])
    check = doctor.onnxruntime_check()
    assert check.status == "n/a" and "both installed and clash" in check.detail


def _edit_json(name, edit):
    def apply(out):
        path = out / name
        path.write_text(edit(json.loads(path.read_text())) if callable(edit) else edit)
    return apply


def _edit_ckpt(edit):
    def apply(out):
        import torch

        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        edit(ckpt)
        torch.save(ckpt, out / "checkpoint.pt")
    return apply


@pytest.mark.parametrize("damage,expect", [
    # issue 19, D6: each was a traceback, five of them with a stale lock
    (_edit_json("config.json", lambda c: json.dumps([1, 2, 3])), None),
    (_edit_json("config.json", "{not json"), None),
    (lambda out: (out / "config.json").unlink(), None),
    (_edit_json("config.json", lambda c: json.dumps(c | {"environment": "x"})), None),
    # issue 34, 1: the checkpoint carries the run's records, metrics.json is rebuilt from it on --resume
    (_edit_json("metrics.json", lambda m: "[]"), None),
    (_edit_json("metrics.json", lambda m: json.dumps(m | {"updates": "oops"})), None),
    (_edit_json("metrics.json", lambda m: json.dumps(m | {"history": [m["history"][0] | {"extra": 1}]})), None),
    (_edit_json("metrics.json", lambda m: json.dumps(m | {"final": {"wall_s": "abc"}})), None),
    (_edit_json("metrics.json", "{not json"), None),
    (_edit_ckpt(lambda c: c["run"].__setitem__("updates", "oops")), "its checkpoint's run records are damaged"),
    (_edit_ckpt(lambda c: c["run"].__setitem__("history", [c["run"]["history"][0] | {"extra": 1}])),
     "its checkpoint's run records are damaged (TypeError"),
    (_edit_ckpt(lambda c: c["run"].__setitem__("final", {"wall_s": "abc"})),
     "its checkpoint's run records are damaged (ValueError"),
])
def test_resume_of_hand_edited_files_is_one_line_or_resumes(tmp_path, damage, expect):
    """config.json is informational (the checkpoint holds the configuration): its damage does not stop
    a resume; a damaged metrics.json is one line, exit 2. Never a traceback, never a stale lock."""
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--epochs", "1", "--hidden", "8,8", "--out", str(out)]).exit_code == 0
    damage(out)
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    if expect is None:
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["environment"]["resumed"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "completed" and [h["epoch"] for h in metrics["history"]] == [1, 2]
    else:
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --resume cannot continue") and expect in lines[0], lines
    assert not (out / ".lzo-run.lock").exists()


def test_steps_too_large_for_the_memory_are_one_line(tmp_path, monkeypatch):
    """Issue 19, D12: --steps 100000 (the documented maximum) on digits asked the allocator for 9–11 GB
    and died with a traceback where that memory was not free; now one line, exit 2, no folder."""
    from lzo_bench.data import encoding

    monkeypatch.setattr(encoding, "available_bytes", lambda: 2 * 2**30)
    result = runner.invoke(app, ["train", "--steps", "100000", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: --steps 100000 is too many for this machine: 1437 samples × 100000 steps × 64 "
                                "units of spikes need 8.6 GiB, more than half of the 2.0 GiB available")
    assert not (tmp_path / "run").exists()


def test_resume_names_the_checkpoints_bad_value_not_an_option(tmp_path):
    """Issue 19, D13: a checkpoint with lr -1 was blamed on --lr, which the user never typed."""
    import torch

    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--epochs", "1", "--hidden", "8,8", "--out", str(out)]).exit_code == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["train"]["lr"] = -1.0
    torch.save(ckpt, out / "checkpoint.pt")
    result = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: --resume cannot continue {out}: its checkpoint records lr = "
                                                  "-1.0, which must be > 0 (got -1.0); the checkpoint was edited or damaged"]


def test_help_shows_extras_literally_and_flags_plainly():
    """Issue 19, output: rich markup ate '[bench]' from the help ('pip install -e .'), and every flag
    showed '<bool>'."""
    out = runner.invoke(app, ["profile", "--help"], terminal_width=80).output
    assert "'.[bench]'" in out and "<bool>" not in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_the_run_folder_is_printed_whole_at_80_columns(tmp_path):
    """Issue 19, output: the summary table cut the run folder at 80 columns, so it could not be copied."""
    out = tmp_path / ("a-rather-long-folder-name-" * 3) / "digits-localzo-normal-seed0-20261204-192600"
    result = runner.invoke(app, ["train", "--epochs", "1", "--hidden", "8,8", "--out", str(out)], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"run folder: {out}"


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "from lzo_bench.cli.entry import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_is_one_line(signame):
    """Issue 19, D5: SIGINT during the imports was a KeyboardInterrupt traceback, SIGTERM a silent
    default-action death. The entry point installs the handling before any heavy import."""
    import signal
    import time

    proc = _cli("train", "--epochs", "1")
    time.sleep(0.15)  # inside the imports of torch and typer (they take seconds)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    n = int(getattr(signal, signame))
    if proc.returncode == 0:  # the machine imported everything within 0.15 s: nothing to test
        pytest.skip("start-up finished before the signal")
    assert proc.returncode == 128 + n, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted")


def test_sigterm_right_after_the_run_folder_appears_keeps_no_lock(tmp_path):
    """Issue 19, D5: SIGTERM within ms of config.json appearing died by default action with a stale
    lock and a config without metrics; now the run stops in one line, exit 143, nothing left."""
    import signal
    import time

    out = tmp_path / "run"
    proc = _cli("train", "--epochs", "3", "--hidden", "8,8", "--out", str(out))
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted after ")
    assert not (out / ".lzo-run.lock").exists()
    assert not out.exists() or (out / "metrics.json").exists()  # removed, or it kept a finished epoch


def test_progress_bars_show_rate_and_time_left_within_80_columns():
    """Issue 19, output: bars had no ETA or rate."""
    from rich.console import Console
    from rich.progress import Progress

    from lzo_bench.cli.report import progress_columns

    con = Console(width=80, record=True, force_terminal=False, color_system=None)
    with Progress(*progress_columns(), console=con, auto_refresh=False) as bar:
        task = bar.add_task("batch", total=23)
        for i in range(5):
            bar.update(task, completed=i + 1)
        bar.refresh()
    text = con.export_text()
    line = [ln for ln in text.splitlines() if "batch" in ln][-1]
    assert "5/23" in line and "/s" in line and ":" in line and len(line) <= 80


def test_train_threads_sets_torchs_threads_for_the_run_only(tmp_path):
    """Issue 19, output: two runs that each took every core of the shared 2-core machine slowed each
    other 10–40×; --threads gives a run the cores that are free, recorded in config.json."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--epochs", "1", "--hidden", "8,8", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["threads"] == 1 and config["train"]["threads"] == 1
    assert torch.get_num_threads() == before
    bad = runner.invoke(app, ["train", "--threads", "100000", "--out", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "error: --threads must lie in [1, " in plain(bad.output)


@pytest.mark.parametrize("signal_class,code,name", [(KeyboardInterrupt, 130, "SIGINT"), (None, 143, "SIGTERM")])
@pytest.mark.parametrize("command,patch", [
    (["doctor"], "lzo_bench.cli.doctor_checks.run_checks"),
    (["evaluate", "somewhere"], "lzo_bench.measure.evaluate.evaluate_run"),
    (["theory", "check"], "lzo_bench.experiments.theory_checks.check"),
])
def test_an_interrupt_after_start_up_is_one_line_and_128_plus_the_signal(monkeypatch, command, patch, signal_class,
                                                                         code, name):
    """Issue 19, D5: Ctrl-C or SIGTERM inside export, profile, evaluate, doctor or theory was click's
    'Aborted!' and exit 1; now one line naming the signal and what was kept, exit 128 + signal."""
    from lzo_bench.runtime.signals import Terminated

    def interrupted(*args, **kwargs):
        raise (signal_class or Terminated)()

    module, name_ = patch.rsplit(".", 1)
    monkeypatch.setattr(__import__(module, fromlist=[name_]), name_, interrupted)
    result = runner.invoke(app, command)
    lines = result.output.strip().splitlines()
    assert result.exit_code == code and "Aborted" not in result.output, result.output
    assert lines[-1].startswith(f"error: interrupted ({name}); ")
