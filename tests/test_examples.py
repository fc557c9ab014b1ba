"""The examples run, at a tiny size, and learn: each prints JSON lines; the LocalZO spike function
trains snnTorch's and SpikingJelly's conv networks above chance, and the 2 × 200 network trains
identically as nn.Sequential and as SNN (one implementation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--epochs", "2", "--limit", "512", "--steps", "20", "--threads", "1"]


def _run(script: str, *args: str, size: list[str] = TINY) -> list[dict]:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *size, *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("rule", ["localzo", "atan"])
@pytest.mark.parametrize("script,module", [("snntorch_conv.py", "snntorch"),
                                           ("spikingjelly_conv.py", "spikingjelly")])
def test_conv_examples_learn_with_localzo_and_with_the_librarys_surrogate(script, module, rule):
    pytest.importorskip(module)
    (row,) = _run(script, "--rule", rule)
    assert row["library"] == module and row["rule"] == rule
    assert row["test_acc"] > 0.25  # chance is 0.1; 16 updates on 512 samples
    # every batch of every epoch was one timed update, on the thread count asked for
    assert row["train_samples"] == 512 and row["updates"] == 2 * -(-512 // row["batch_size"])
    assert row["threads"] == 1 and row["update_ms"] > 0


def test_nn_stack_example_trains_sequential_and_snn_identically():
    rows = _run("nn_stack.py", "--rule", "localzo", size=["--epochs", "2", "--steps", "20", "--threads", "1"])
    assert [r["network"].split()[0] for r in rows] == ["nn.Sequential", "nn.Sequential.from_snn", "SNN"]
    assert all(r["backend"] == "cpp" for r in rows)
    assert rows[1]["test_acc"] == rows[2]["test_acc"] > 0.5  # 46 updates on all 1437 samples
    assert rows[0]["test_acc"] > 0.25


def test_examples_refuse_bad_options_in_one_line():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "nn_stack.py"), "--epochs", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--epochs must be ≥ 1" in proc.stderr


def test_nn_conv_example_learns_with_conv_layers_on_events():
    (row,) = _run("nn_conv.py", "--rule", "localzo")
    assert row["backend"] == "cpp" and row["network"].startswith("nn.Sequential conv")
    assert row["test_acc"] > 0.25  # chance is 0.1; 16 updates on 512 samples
