"""ONNX (sequence and step) and NIR export against the PyTorch network."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from lzo_bench import export_check
from lzo_bench.checkpoint import load_checkpoint
from lzo_bench.cli import app
from lzo_bench.data import load_dataset
from lzo_bench.export import ExportSource, initial_step_state, node_count, sequence_model, step_model
from lzo_bench.train import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    train(TrainConfig(epochs=2, hidden=(24, 16), out=str(out)))
    return out


def ort_session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("steps", [1, 7, 40, 120])
@pytest.mark.parametrize("batch", [1, 33])
def test_sequence_model_parity(run_dir, steps, batch):
    model, ckpt = load_checkpoint(run_dir)
    src = ExportSource.from_checkpoint(ckpt)
    _, test = load_dataset("digits", steps)
    x = test.spikes[:batch].float().transpose(0, 1).contiguous()
    outs = ort_session(sequence_model(src)).run(None, {"spikes": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(outs[0], ref.logits.numpy(), rtol=1e-4, atol=1e-5)
    for l, s in enumerate(ref.spikes):
        assert np.array_equal(outs[3 + l], s.numpy())           # spike trains
        assert np.array_equal(outs[1 + l], s.sum(0).numpy())    # spike counts
    assert outs[3].shape == (steps, batch, 24)


def test_graph_is_valid_symbolic_and_independent_of_T(run_dir, tmp_path):
    _, ckpt = load_checkpoint(run_dir)
    src = ExportSource.from_checkpoint(ckpt)
    model = sequence_model(src)
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["T", "B"] and dims[2].dim_value == 64
    assert any(n.op_type == "Scan" for n in model.graph.node)
    # a network trained with another T exports to the same graph size
    other = tmp_path / "t10"
    train(TrainConfig(epochs=1, hidden=(24, 16), steps=10, out=str(other)))
    src10 = ExportSource.from_checkpoint(load_checkpoint(other)[1])
    assert src10.steps == 10 and src.steps == 40
    assert node_count(sequence_model(src10)) == node_count(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["time_steps_in_training"] == "40" and meta["reset"].startswith("subtractive")
    assert float(meta["beta"]) == pytest.approx(np.exp(-0.1)) and meta["n_classes"] == "10"


def test_step_cell_matches_sequence_model(run_dir):
    _, ckpt = load_checkpoint(run_dir)
    src = ExportSource.from_checkpoint(ckpt)
    _, test = load_dataset("digits", 40)
    x = test.spikes[:9].float().transpose(0, 1).numpy()
    seq = ort_session(sequence_model(src)).run(None, {"spikes": x})
    step = ort_session(step_model(src))
    names = [o.name for o in step.get_outputs()]
    state = initial_step_state(src, 9)
    for t in range(40):
        out = dict(zip(names, step.run(None, {"x_t": x[t], **state})))
        state = {k: out[f"next_{k}"] for k in state}
        assert np.array_equal(out["spikes_0"], seq[3][t]) and np.array_equal(out["spikes_1"], seq[4][t])
    np.testing.assert_allclose(state["m"], seq[0], rtol=1e-6, atol=1e-7)
    assert np.array_equal(state["count0"], seq[1])


def test_cli_onnx_export_with_parity_table(run_dir, tmp_path):
    target = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(target), "--samples", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["check"]["passed"] and target.exists()
    assert {r["steps"] for r in report["check"]["parity"]} == {1, 7, 40, 120}
    assert all(r["spike_mismatch"] == 0 for r in report["check"]["parity"])
    assert {r["batch"] for r in report["check"]["latency"]} == {1, 256}
    assert not list(tmp_path.glob(".*tmp"))


def test_cli_step_and_nir(run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir), "--format", "onnx-step", "--out", str(tmp_path / "s.onnx")])
    assert result.exit_code == 0, result.output
    assert "pass" in result.output and "FAIL" not in result.output
    result = runner.invoke(app, ["export", str(run_dir), "--format", "nir", "--out", str(tmp_path / "m.nir")])
    assert result.exit_code == 0, result.output
    assert "NIR's LIF resets to v_reset" in result.output and "parameters and weights match" in result.output


def test_nir_graph_reads_back_with_the_model_parameters(run_dir, tmp_path):
    import nir

    runner.invoke(app, ["export", str(run_dir), "--format", "nir", "--out", str(tmp_path / "m.nir"), "--no-check"])
    g = nir.read(tmp_path / "m.nir")
    _, ckpt = load_checkpoint(run_dir)
    w = [ckpt["state_dict"][f"weights.{i}"].numpy() for i in range(3)]
    beta, dt = ckpt["network"]["beta"], 1e-3
    assert isinstance(g.nodes["lif0"], nir.LIF) and isinstance(g.nodes["li_out"], nir.LI)
    assert isinstance(g.nodes["fc0"], nir.Linear) and isinstance(g.nodes["input"], nir.Input)
    np.testing.assert_allclose(g.nodes["lif1"].tau, np.full(16, dt / (1 - beta)))
    np.testing.assert_allclose(g.nodes["lif1"].r, np.full(16, 1 / (1 - beta)))
    np.testing.assert_allclose(g.nodes["lif0"].v_threshold, np.ones(24))
    np.testing.assert_allclose(g.nodes["li_out"].tau, np.full(10, dt / (1 - ckpt["network"]["beta_out"])))
    assert np.array_equal(g.nodes["fc0"].weight, w[0].T) and np.array_equal(g.nodes["fc_out"].weight, w[2].T)
    assert ("lif1", "fc_out") in g.edges and "subtract" in str(g.metadata.get("reset_note", ""))


@pytest.mark.parametrize("make_args,message", [
    (lambda run, tmp: [str(tmp / "missing")], "no checkpoint at"),
    (lambda run, tmp: [str((tmp / "junk.pt").write_bytes(b"junk") and tmp / "junk.pt")], "is not a readable checkpoint"),
    (lambda run, tmp: [str(run), "--opset", "9", "--out", str(tmp / "x.onnx")], "--opset 9 is not supported; choose 13..21"),
    (lambda run, tmp: [str(run), "--out", str((tmp / "f").write_text("x") and tmp / "f" / "x.onnx")], "--out cannot be written"),
    (lambda run, tmp: [str(run), "--samples", "0"], "--samples must be ≥ 1"),
])
def test_bad_input(run_dir, tmp_path, make_args, message):
    result = runner.invoke(app, ["export", *make_args(run_dir, tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp"))


def test_incompatible_checkpoint_version(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["format_version"] = 0
    torch.save(ckpt, tmp_path / "old.pt")
    result = runner.invoke(app, ["export", str(tmp_path / "old.pt")])
    assert result.exit_code == 2 and "has checkpoint format 0" in result.output
    assert not list(tmp_path.glob("*.onnx"))


def test_parity_failure_exits_1_with_the_table(run_dir, tmp_path, monkeypatch):
    real = export_check.parity

    def broken(*args, **kwargs):
        rows = real(*args, **kwargs)
        rows[0].passed = False
        return rows

    monkeypatch.setattr(export_check, "parity", broken)
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.onnx"), "--samples", "16"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "parity check failed" in result.output


def test_parity_criteria_cpu_exact_cuda_can_fail():
    import numpy as np

    from lzo_bench.export_check import CPU, CUDA, parity_passed

    ref = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)
    assert parity_passed(CPU, 0.0, ref.copy(), ref)
    assert not parity_passed(CPU, 1e-6, ref.copy(), ref)                  # one spike off: CPU must be exact
    assert not parity_passed(CPU, 0.0, ref + 1e-3, ref)
    assert parity_passed(CUDA, 0.0, ref * (1 + 5e-4), ref)                # summation order: within 1e-3
    assert not parity_passed(CUDA, 0.0, ref + 0.05, ref)                  # identical spikes, logits off
    assert parity_passed(CUDA, 5e-5, ref + 0.05, ref)                     # a rare flipped spike moves logits
    assert not parity_passed(CUDA, 2e-4, ref.copy(), ref)                 # too many flips fails


def test_cuda_session_disables_tf32_and_cpu_fallback(monkeypatch):
    import onnxruntime as ort

    from lzo_bench import export_check as chk

    seen = {}

    class Session:
        def __init__(self, model, sess_options=None, providers=None):
            seen["providers"] = providers
            seen["fallback"] = sess_options.get_session_config_entry("session.disable_cpu_ep_fallback")

        def get_providers(self):
            return seen.get("answer", [chk.CUDA, chk.CPU])

    monkeypatch.setattr(ort, "InferenceSession", Session)
    chk.session(b"model", chk.CUDA)
    assert seen["providers"] == [(chk.CUDA, {"use_tf32": "0"})] and seen["fallback"] == "1"
    seen["answer"] = [chk.CPU]
    with pytest.raises(chk.ProviderFallback, match="fell back to CPUExecutionProvider"):
        chk.session(b"model", chk.CUDA)
