"""Issue 34: a run folder that commits an epoch atomically, checkpoints validated like options, one
truth for the learning rate, and the errors of --resume in one line."""

import json
from dataclasses import replace

import pytest
import torch

from lzo_bench.runtime import fsio
from lzo_bench.training import train as train_mod
from lzo_bench.training.checkpoint import CheckpointError, load_checkpoint
from lzo_bench.training.train import ConfigError, TrainConfig, train

TINY = TrainConfig(epochs=3, hidden=(20, 20), threads=1)


class _Death(BaseException):
    """A SIGKILL, as far as the process's files go: nothing after it runs but ``finally`` blocks."""


def _weights(out):
    return load_checkpoint(out)[1]["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run, and the (stage, file) of every atomic write it made, in order."""
    out = tmp_path_factory.mktemp("straight") / "run"
    calls = []
    fsio.FAULT_HOOK = lambda stage, path: calls.append((stage, path.name))
    try:
        result = train(replace(TINY, out=str(out)))
    finally:
        fsio.FAULT_HOOK = None
    return out, result, calls


def test_a_death_at_any_write_of_an_epochs_commit_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch,
                                                                                      straight):
    """Issue 34, 1: killed between checkpoint.pt's rename and metrics.json's, every --resume refused
    ("metrics.json records 2 epoch(s) but the checkpoint 3")."""
    out_straight, result, calls = straight
    commit = [i for i, (_, name) in enumerate(calls) if name in ("checkpoint.pt", "metrics.json")]
    assert len(commit) == 3 * 2 * 3  # 3 epochs × 2 files × (write, rename, renamed)
    want = _weights(out_straight)
    for at in commit:
        out = tmp_path / f"cut{at}"
        seen = iter(range(len(calls)))

        def die(stage, path, at=at, seen=seen):
            if next(seen) == at:
                raise _Death(f"{stage} {path.name}")

        monkeypatch.setattr(fsio, "FAULT_HOOK", die)
        with pytest.raises(_Death):
            train(replace(TINY, out=str(out)))
        monkeypatch.setattr(fsio, "FAULT_HOOK", None)
        if not (out / "checkpoint.pt").exists():  # died before epoch 1's commit: nothing finished to resume
            with pytest.raises(ConfigError, match="no checkpoint at"):
                train_mod.resume_config(out)
            continue
        if calls[at] != ("renamed", "metrics.json") or at != commit[-1]:  # after the last rename the run is whole
            resumed = train(train_mod.resume_config(out), resume=True)
            assert resumed.status == "completed", calls[at]
        got = _weights(out)
        assert all(torch.equal(w, got[k]) for k, w in want.items()), calls[at]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "completed", calls[at]
        assert [h["test_acc"] for h in metrics["history"]] == [h.test_acc for h in result.history], calls[at]
        assert metrics["updates"]["loss"] == result.update_loss, calls[at]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    train(replace(TINY, epochs=1, out=str(out)))
    return out


def _damaged(one_epoch, tmp_path, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, out / "checkpoint.pt")
    return out


@pytest.mark.parametrize("field,value,message", [
    ("theta", 0.0, "network.theta = 0.0, but theta must be > 0"),
    ("theta", -1.0, "network.theta = -1.0, but theta must be > 0"),
    ("beta", -0.5, r"network.beta = -0.5, but beta must lie in \[0, 1\]"),
    ("beta", 1.5, r"network.beta = 1.5, but beta must lie in \[0, 1\]"),
    ("beta", float("nan"), r"network.beta = nan, but beta must lie in \[0, 1\]"),
    ("beta_out", 1.0, r"network.beta_out = 1.0, but beta_out must lie in \[0, 1\)"),
    ("beta", "0.9", "network.beta = '0.9', but beta must be a number"),
    ("n_out", 0, "network.n_out = 0, but layer sizes must be integers"),
])
def test_a_checkpoints_network_is_held_to_nn_lifs_rules(one_epoch, tmp_path, field, value, message):
    """Issue 34, 5: θ 0 or β_out 1 exported and resumed; β 1.5 gave "normal expects std >= 0.0"."""
    out = _damaged(one_epoch, tmp_path, lambda c: c["network"].__setitem__(field, value))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(out)
    with pytest.raises(ConfigError, match=message):
        train_mod.resume_config(out, epochs=2)


def test_nn_lif_and_checkpoints_share_one_rule():
    from lzo_bench import nn as lzo_nn
    from lzo_bench.core.model import lif_problem, readout_problem

    for beta, theta in ((-0.5, 1.0), (1.5, 1.0), (0.9, 0.0), (0.9, -1.0)):
        with pytest.raises(ValueError, match=lif_problem(beta, theta).replace("[", r"\[").replace("]", r"\]")):
            lzo_nn.LIF(4, 4, beta=beta, theta=theta)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\)"):
        lzo_nn.LeakyReadout(4, 2, beta=1.0)
    assert readout_problem(1.0) == "beta must lie in [0, 1), got 1.0" and lif_problem(1.0, 1.0) is None


@pytest.mark.parametrize("damage,message", [
    (lambda c: c["train"].__setitem__("hidden", [30, 30]), r"train.hidden = \[30, 30\] but its network has hidden "
                                                           r"layers \[20, 20\]"),
    (lambda c: c["train"].__setitem__("arch", "conv"), "train.arch = 'conv' but its network is fc"),
    (lambda c: c["optimizer"].__setitem__("param_groups", [{"params": "x"}]), "optimizer state is damaged"),
    (lambda c: c["optimizer"].__setitem__("param_groups", 7), "optimizer state is damaged"),
])
def test_resume_of_a_checkpoint_at_odds_with_itself_is_one_line(one_epoch, tmp_path, damage, message):
    """Issue 34, 11: a load_state_dict traceback, or a TypeError from Adam's state."""
    out = _damaged(one_epoch, tmp_path, damage)
    with pytest.raises(ConfigError, match=message) as e:
        train(train_mod.resume_config(out, epochs=2), resume=True)
    assert "\n" not in str(e.value)


def test_resume_trains_with_the_recorded_lr_not_the_adam_states(one_epoch, tmp_path):
    """Issue 34, 6: an edited Adam lr trained while the record said 0.003."""
    straight = tmp_path / "straight"
    train(replace(TINY, epochs=2, out=str(straight)))
    out = _damaged(one_epoch, tmp_path, lambda c: [g.__setitem__("lr", 0.5) for g in c["optimizer"]["param_groups"]])
    train(train_mod.resume_config(out, epochs=2), resume=True)
    want, got = _weights(straight), _weights(out)
    assert all(torch.equal(w, got[k]) for k, w in want.items())
    assert all(g["lr"] == load_checkpoint(out)[1]["train"]["lr"] for g in load_checkpoint(out)[1]["optimizer"]["param_groups"])


def test_resume_epochs_0_is_refused_not_taken_as_the_runs_own(one_epoch):
    """Issue 34, 17: --resume --epochs 0 echoed "--epochs 6"."""
    with pytest.raises(ConfigError, match=r"^--epochs must lie in \[1, 1000000\] \(got 0\)"):
        train_mod.resume_config(one_epoch, epochs=0)


def test_a_raw_pickle_is_one_line_without_torchs_warning(tmp_path):
    """Issue 34, 17: a 2-line torch UserWarning ("Detected pickle protocol 4") came before the error."""
    import pickle
    import warnings

    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []
