"""Issue 34 at the command line: signals at chosen moments (held there by runtime.signals.pause_point,
not by sleeps), full disks, exports that say what they are."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.runtime import fsio
from lzo_bench.runtime.signals import PAUSE_ENV

runner = CliRunner()
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
TINY = ["--epochs", "1", "--hidden", "12,12", "--threads", "1"]


def _signalled_at(moment: str, signame: str, *args: str):
    """Run ``lzo-bench args`` held at ``moment``, send ``signame`` there; (exit code, stderr)."""
    env = os.environ | {PAUSE_ENV: moment}
    proc = subprocess.Popen([sys.executable, "-c", "from lzo_bench.cli.entry import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # until the process says it is at the moment
        lines.append(line)
        if line.strip() == f"paused at {moment}":
            break
    else:
        proc.wait(timeout=60)
        pytest.fail(f"never reached {moment}: exit {proc.returncode}, {''.join(lines)}")
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, "".join(lines) + err


@pytest.mark.parametrize("moment,signame", [("train-start", "SIGTERM"), ("train-setup", "SIGTERM"),
                                            ("train-setup", "SIGINT")])
def test_a_signal_while_train_starts_is_one_line_and_128_plus_n(tmp_path, moment, signame):
    """Issue 34, 15: SIGTERM 3-4.3 s into train (the backend's load) exited 130 with nothing printed."""
    out = tmp_path / "run"
    code, _, err = _signalled_at(moment, signame, "train", *TINY, "--out", str(out))
    n = int(getattr(signal, signame))
    assert code == 128 + n, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: interrupted ({signame}); nothing was written (the run folder is " \
                                           "made only once the run starts)"
    assert not out.exists()


def test_reproduce_hit_while_writing_its_results_finishes_them_and_says_so(tmp_path):
    """Issue 34, 15: reproduce exited 130 with no table and without its last figure."""
    out = tmp_path / "grid"
    profile = tmp_path / "p.toml"
    profile.write_text((PROFILES / "digits-quick.toml").read_text().replace('["surrogate", "sparsegrad", "localzo"]',
                                                                             '["surrogate"]')
                       .replace("hidden = [200, 200]", "hidden = [12, 12]"))
    code, stdout, err = _signalled_at("reproduce-outputs", "SIGTERM", "reproduce", str(profile), "--trials", "1",
                                      "--epochs", "1", "--out", str(out))
    assert code == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted (SIGTERM) while writing the results; finished writing them first: "), err
    for name in last.split("first: ", 1)[1].split(", "):
        assert Path(name).is_file() and Path(name).stat().st_size > 0, name
    assert (out / "reproduce.json").is_file() and (out / "reproduce.csv").is_file()
    assert "surrogate" in stdout  # the table


def _enospc_at(name: str, stage: str = "write"):
    def hook(at, path):
        if at == stage and path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write's error: it names no file
    return hook


@pytest.mark.parametrize("name", [".lzo-run.lock", "config.json"])
def test_train_onto_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, name):
    """Issue 34, 12: "cannot write the run folder:  (No space left on device)" with no file name, and an
    empty folder with a 0-byte lock left behind."""
    out = tmp_path / "run"
    monkeypatch.setattr(fsio, "FAULT_HOOK", _enospc_at(name))
    result = runner.invoke(app, ["train", *TINY, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        f"error: cannot write the run folder: {out / name} (No space left on device)"), result.output
    assert not out.exists()


def test_reproduce_onto_a_full_disk_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    """Issue 34, 12: an OSError traceback from the run folder's lock and a stale .lzo-run.lock."""
    out = tmp_path / "grid"
    monkeypatch.setattr(fsio, "FAULT_HOOK", _enospc_at(".lzo-run.lock"))
    result = runner.invoke(app, ["reproduce", str(PROFILES / "digits-quick.toml"), "--trials", "1", "--epochs", "1",
                                 "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines()[-1].startswith(f"error: cannot write {out}/"), result.output
    assert "(No space left on device)" in result.output
    assert not list(out.rglob(".lzo-run.lock"))


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    result = runner.invoke(app, ["train", "--epochs", "2", "--hidden", "12,12", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy(run2, tmp_path):
    import shutil

    shutil.copytree(run2, tmp_path / "run")
    return tmp_path / "run"


def test_export_interrupted_during_its_check_says_the_file_is_there_unchecked(run2, tmp_path, monkeypatch):
    """Issue 34, 16: "no file was written" beside a valid, unchecked model.onnx."""
    from lzo_bench.export import run as export_run
    from lzo_bench.runtime.signals import Terminated

    run = _copy(run2, tmp_path)

    def interrupted(*a, **k):
        raise Terminated()

    monkeypatch.setattr(export_run, "check_onnx", interrupted)
    result = runner.invoke(app, ["export", str(run), "--samples", "8"])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1] == (f"error: interrupted (SIGTERM) during the check; {run / 'model.onnx'} "
                                                      "was written whole but not checked: run export again to check it")
    assert (run / "model.onnx").stat().st_size > 0


def test_exports_carry_their_epoch_and_weights_and_resume_removes_the_stale_ones(run2, tmp_path):
    """Issue 34, 7: after --resume to 3 epochs model.onnx still said epochs_trained=2 and 50.00 %."""
    import onnx

    from lzo_bench.training.checkpoint import load_checkpoint, weights_fingerprint

    run = _copy(run2, tmp_path)
    assert runner.invoke(app, ["export", str(run), "--no-check"]).exit_code == 0
    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    ckpt = load_checkpoint(run)[1]
    assert meta["checkpoint_epoch"] == "2" and meta["weights_sha256_16"] == weights_fingerprint(ckpt["state_dict"])
    kept = tmp_path / "kept.onnx"
    (run / "model.onnx").replace(kept)
    (run / "model_step.onnx").write_bytes(kept.read_bytes())  # an export of epoch 2 under another default name
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "removed model_step.onnx: it held epoch 2's weights" in " ".join(result.output.split())
    assert not (run / "model_step.onnx").exists()
    (run / "model_step.onnx").write_bytes(kept.read_bytes())  # an export taken while the run trained
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert f"warning: {run / 'model_step.onnx'} holds older weights than {run / 'checkpoint.pt'} (epoch 3)" in result.output
    result = runner.invoke(app, ["export", str(run), "--no-check"])
    assert result.exit_code == 0 and f"warning: {run / 'model_step.onnx'} holds older weights" in result.output
    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert meta["checkpoint_epoch"] == meta["epochs_trained"] == "3"


@pytest.mark.parametrize("args,message", [
    (["profile", "--updates", "1000000000000"], "error: --updates must be ≤ 100000 (got 1000000000000): profile "
                                                "keeps every measured update's phase times in memory"),
    (["profile", "--warmup", "1000000000000"], "error: --warmup must be ≤ 100000 (got 1000000000000)"),
    (["theory", "check", "--delta", "1e30"], "error: --delta must lie in [0.01, 1000] (got 1e+30): below, the sigmoid's"),
    (["theory", "check", "--delta", "1e-300"], "error: --delta must lie in [0.01, 1000] (got 1e-300)"),
    (["theory", "check", "--draws", "100000000000"], "error: --draws must be ≤ 1000000 (got 100000000000): the draws × "
                                                     "41 points are held in memory at once"),
    (["theory", "plot", "--delta", "1e30"], "error: --delta must lie in [0.01, 1000]"),
])
def test_limits_are_one_line_with_their_reason(args, message):
    """Issue 34, 14: an allocator traceback, InvalidSurrogate, OverflowError."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()] and result.output.startswith(message), \
        result.output


def test_theory_plot_onto_a_file_or_a_read_only_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["theory", "plot", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and result.output.startswith(f"error: --out cannot be written: {tmp_path / 'file'} ("), \
        result.output
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        result = runner.invoke(app, ["theory", "plot", "--out", str(ro / "plots")])
        assert result.exit_code == 2 and "(Permission denied)" in result.output, result.output
