"""ONNX (sequence and step) and NIR export against the PyTorch network."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.core.model import NetworkSpec
from lzo_bench.data import load_dataset
from lzo_bench.export import parity as export_check
from lzo_bench.export.onnx_model import (
    MAX_OPSET,
    MIN_OPSET,
    ORT_MIN_MAX_IR,
    ORT_MIN_MAX_OPSET,
    initial_step_state,
    node_count,
    sequence_model,
    step_model,
)
from lzo_bench.export.source import ExportSource
from lzo_bench.training.checkpoint import load_checkpoint
from lzo_bench.training.train import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    train(TrainConfig(epochs=2, hidden=(24, 16), out=str(out)))
    return out


def ort_session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def tiny_source(reduce: str = "max") -> ExportSource:
    """A 5 → 4 → 3 → 2 network with random weights, no training."""
    net = NetworkSpec(n_in=5, hidden=(4, 3), n_out=2, beta=0.9, beta_out=0.8, reduce=reduce)
    rng = np.random.default_rng(0)
    weights = [rng.normal(0.0, 0.8, (a, b)).astype(np.float32) for a, b in [(5, 4), (4, 3), (3, 2)]]
    return ExportSource(net, weights, 1.0, 10, "test", "digits", {"method": "localzo", "dist": "normal", "seed": 3})


def card(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1))
def test_ir_version_is_the_tables_minimum_and_loads(opset):
    assert MAX_OPSET <= ORT_MIN_MAX_OPSET  # every opset offered runs in the oldest onnxruntime declared
    src = tiny_source()
    x = (np.random.default_rng(1).random((6, 2, 5)) < 0.5).astype(np.float32)
    for build in (sequence_model, step_model):
        model = build(src, opset)
        assert model.opset_import[0].version == opset
        assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import)) <= ORT_MIN_MAX_IR
        sess = ort_session(model)
        feed = {"spikes": x} if build is sequence_model else {"x_t": x[0], **initial_step_state(src, 2)}
        assert sess.run(None, feed)[0].shape[0] == 2


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
    assert report["check"]["threads"] == 1 and all(r["threads"] == 1 for r in report["check"]["latency"])
    assert all(r["backend"] == "cpp" and r["backend_ms_per_sample"] is not None for r in report["check"]["latency"])
    assert report["check"]["ir_version"] == 8 and report["check"]["opset"] == 17
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
    (lambda run, tmp: [str(run), "--threads", "0"], "--threads must lie in [1, "),
    (lambda run, tmp: [str(run), "--threads", "100000", "--out", str(tmp / "x.onnx")], "--threads must lie in [1, "),  # D3: a segfault
    (lambda run, tmp: [str(run), "--out", str((tmp / "d.onnx").mkdir() or tmp / "d.onnx")], "d.onnx is a folder; name a file inside it"),  # D11
    (lambda run, tmp: [str(run), "--format", "nir", "--out", str(tmp / "x.onnx")], "does not match --format nir: name the file *.nir"),
    (lambda run, tmp: [str(run), "--out", str(tmp / "x.nir")], "does not match --format onnx: name the file *.onnx"),
    (lambda run, tmp: [str(run), "--format", "nir", "--dtype", "float16"], "--dtype float16 applies to the ONNX formats"),
    (lambda run, tmp: [str(run), "--format", "nir", "--opset", "99"], "--opset 99 applies to the ONNX formats; NIR has no opset"),
])
def test_bad_input(run_dir, tmp_path, make_args, message):
    result = runner.invoke(app, ["export", *make_args(run_dir, tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not [f for f in tmp_path.glob("*.onnx") if f.is_file()] and not list(tmp_path.glob("*.nir"))
    assert not list(tmp_path.glob(".*tmp"))


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

    from lzo_bench.export.parity import CPU, CUDA, parity_passed

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

    from lzo_bench.export import parity as chk

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


def test_model_card_reads_back(run_dir, tmp_path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for fmt, name in (("onnx", "m.onnx"), ("onnx-step", "s.onnx")):
        result = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / name), "--no-check"])
        assert result.exit_code == 0, result.output
        model = onnx.load(tmp_path / name)
        meta = card(model)
        assert meta["training_method"] == "localzo" and meta["training_dist"] == "normal"
        assert float(meta["training_delta"]) == 0.05 and meta["training_samples_m"] == "1" and meta["training_seed"] == "0"
        assert meta["epochs_trained"] == "2" and meta["test_accuracy_pct"] == f"{metrics['final']['test_acc']:.2f}"
        assert meta["input_dtype"] == "float32" and meta["input_values"] == "{0, 1}" and meta["weights_dtype"] == "float32"
        assert meta["input_encoding"].startswith("latency")
        assert ("TIME-MAJOR" if fmt == "onnx" else "one time bin") in model.graph.input[0].doc_string
        assert "training_method: localzo" in model.doc_string and "u_l <- beta*u_l" in model.graph.doc_string
    assert card(onnx.load(tmp_path / "m.onnx"))["input_layout"] == "[T, B, n_in]"
    start = meta["initial_state"]
    assert "u0 [B, 24] = 0" in start and "count1 [B, 16] = 0" in start and "m [B, 10] = -inf" in start


def test_float16_weights_report_spike_flips(run_dir, tmp_path):
    target = tmp_path / "h.onnx"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(target), "--dtype", "float16", "--samples", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])["check"]
    assert report["passed"] and report["dtype"] == "float16"
    for row in report["parity"]:  # exact against the network with rounded weights; flips against float32 reported
        assert row["spike_mismatch"] == 0 and 0 <= row["spike_flips_vs_float32"] < 0.01 and row["float32_acc"] is not None
    model = onnx.load(target)
    weights = [t for t in model.graph.initializer if t.name.startswith("W")]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert card(model)["compute_dtype"].startswith("float32")


def test_nir_simulation_matches_a_hand_written_reset_to_zero_reference(tmp_path):
    import nir

    from lzo_bench.export.nir_graph import nir_graph, write_nir
    from lzo_bench.export.nir_sim import simulate

    for reduce in ("max", "sum"):
        src = tiny_source(reduce)
        with pytest.warns(UserWarning, match="resets to 0"):
            write_nir(nir_graph(src), tmp_path / "t.nir")
        x = (np.random.default_rng(2).random((12, 3, 5)) < 0.6).astype(np.float32)
        run = simulate(nir.read(tmp_path / "t.nir"), torch.from_numpy(x), "zero", reduce)
        net = src.network
        h, counts = x, []
        for w in src.weights[:-1]:  # v <- beta*v + I; spike if v > theta; then v <- 0
            v, spikes = np.zeros((3, w.shape[1]), np.float32), []
            for x_t in h:
                v = np.float32(net.beta) * v + x_t @ w
                s = (v - net.theta > 0).astype(np.float32)
                v = np.where(s > 0, 0.0, v).astype(np.float32)
                spikes.append(s)
            h = np.stack(spikes)
            counts.append(h.sum(0))
        o, trace = np.zeros((3, 2), np.float32), []
        for s_t in h:
            o = np.float32(net.beta_out) * o + np.float32(1 - net.beta_out) * (s_t @ src.weights[-1])
            trace.append(o)
        logits = np.max(trace, 0) if reduce == "max" else np.sum(trace, 0)
        np.testing.assert_allclose(run.logits.numpy(), logits, rtol=1e-5, atol=1e-6)
        for c, ref in zip(run.counts.values(), counts):
            assert np.array_equal(c.numpy(), ref)
        assert sum(c.sum() for c in counts) > 0


def test_cli_nir_reports_the_reset_cost(run_dir, tmp_path):
    import nir

    result = runner.invoke(app, ["export", str(run_dir), "--format", "nir", "--out", str(tmp_path / "m.nir"), "--samples", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])["check"]
    cost = report["reset_cost"]
    assert report["passed"] and cost["subtractive_sim_matches"] and cost["samples"] == 64
    assert 0 <= cost["max_dlogit"] <= cost["dlogit_bound"] < 1e-3
    assert len(cost["spikes_subtractive"]) == len(cost["spikes_nir"]) == 2 and 0 <= cost["agreement_pct"] <= 100
    assert 0 <= cost["acc_nir"] <= 100 and 0 <= cost["acc_subtractive"] <= 100
    meta = nir.read(tmp_path / "m.nir").metadata
    assert meta["reset"].startswith("to zero") and float(meta["dt_s"]) == 1e-3


def exported_nir(run_dir, tmp_path, samples: int = 128):
    """The run exported as NIR and read back, and the first test samples as ``x [T, B, n_in]``."""
    import nir

    target = tmp_path / "m.nir"
    assert runner.invoke(app, ["export", str(run_dir), "--format", "nir", "--out", str(target), "--no-check"]).exit_code == 0
    _, test = load_dataset("digits", 40)
    return nir.read(target), test.dense(slice(0, samples)).float().transpose(0, 1).contiguous()


def test_norse_runs_the_nir_file_once_r_is_folded_into_the_weights(run_dir, tmp_path):
    """Norse's from_nir as shipped: it ignores LIF's r (silent network) and has no LI readout. With r
    folded into the weights (lzo_bench.export.nir_sim.fold_r) its LIF layers spike exactly as the NIR graph
    simulated with reset to zero, and its last node, integrated by the graph's LI by hand, gives the
    same predictions."""
    norse = pytest.importorskip("norse.torch")
    import logging
    import warnings

    from lzo_bench.export.nir_sim import dt_of, fold_r, li_readout, simulate

    graph, x = exported_nir(run_dir, tmp_path)

    def run(g):
        logging.disable(logging.WARNING)  # Norse logs that r diverges from 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = norse.from_nir(g, dt=dt_of(g))
        finally:
            logging.disable(logging.NOTSET)
        spikes = {name: [] for name in ("lif0", "lif1")}
        for name in spikes:
            getattr(module, name).register_forward_hook(lambda m, i, o, name=name: spikes[name].append(o[0]))
        state, outs = None, []
        with torch.no_grad():
            for x_t in x.unbind(0):
                o, state = module(x_t, state)
                outs.append(o)
        return torch.stack(outs), [torch.stack(s).sum(0) for s in spikes.values()]

    assert "li_out" not in dict(norse.from_nir(graph, ignore_warnings=True).named_children())
    out, counts = run(graph)
    assert all(float(c.sum()) == 0 for c in counts) and float(out.abs().sum()) == 0
    zero = simulate(graph, x, "zero", "max")
    out, counts = run(fold_r(graph))
    assert all(torch.equal(c, z) for c, z in zip(counts, zero.counts.values()))
    assert float(sum(c.sum() for c in counts)) > 0
    logits = li_readout(graph, out, "max")
    assert torch.equal(logits.argmax(1), zero.logits.argmax(1))
    assert torch.allclose(logits, zero.logits, rtol=1e-5, atol=1e-6)


def test_snntorch_runs_the_nir_file_once_tau_is_rescaled_to_its_dt(run_dir, tmp_path):
    """snnTorch 1.0's import_from_nir has no nir.LI and steps every LIF at dt = 1e-4 s. On
    lzo_bench.export.nir_sim.for_snntorch's rewrite (τ scaled by 1e-4/dt_s, LI removed) its Leaky layers
    spike exactly as the NIR graph simulated with reset to zero, and the graph's LI applied by hand
    (li_readout) gives the same logits. (snnTorch's own shortcomings are not asserted: a release
    that fixes them must not fail this test.)"""
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir
    from snntorch.utils import reset

    from lzo_bench.export.nir_sim import for_snntorch, li_readout, simulate

    graph, x = exported_nir(run_dir, tmp_path)

    def run(g):
        module = import_from_nir(g)
        spikes = {name: [] for name in ("lif0", "lif1")}
        for name in spikes:
            getattr(module, name).register_forward_hook(lambda m, i, o, name=name: spikes[name].append(o))
        reset(module)  # Leaky(init_hidden=True) keeps its membrane inside the module
        with torch.no_grad():
            out = torch.stack([module(x_t)[0] for x_t in x.unbind(0)])
        return out, [torch.stack(s).sum(0) for s in spikes.values()]

    zero = simulate(graph, x, "zero", "max")
    out, counts = run(for_snntorch(graph))
    assert all(torch.equal(c, z) for c, z in zip(counts, zero.counts.values()))
    assert float(sum(c.sum() for c in counts)) > 0
    logits = li_readout(graph, out, "max")
    assert torch.equal(logits.argmax(1), zero.logits.argmax(1))
    assert torch.allclose(logits, zero.logits, rtol=1e-5, atol=1e-6)


def test_nir_comparison_is_a_rounding_bound_that_still_catches_a_wrong_reset(run_dir, tmp_path):
    """The NIR check compares logits within lzo_bench.core.floatcmp's rounding bound, not bit for bit (two
    CPUs' kernels round differently: an AMD EPYC failed every export on torch.equal). The bound is far
    below what a real defect moves: the reset-to-zero simulation, a wrong reset for this network,
    fails the same comparison; logits nudged by 4 bounds fail it too."""
    from lzo_bench.core.floatcmp import compare_logits, readout_bound
    from lzo_bench.export.nir_sim import simulate
    from lzo_bench.training.checkpoint import load_checkpoint

    graph, x = exported_nir(run_dir, tmp_path, samples=64)
    model, _ = load_checkpoint(run_dir)
    with torch.no_grad():
        ref = model(x)
    bound = readout_bound(ref.spikes[-1], model.weights[-1], model.spec.beta_out, "max")
    assert float(bound.max()) < 1e-3 * float(ref.logits.abs().max())
    sub, zero = simulate(graph, x, "subtract", "max"), simulate(graph, x, "zero", "max")
    assert compare_logits(sub.logits, ref.logits, bound, list(zip(sub.counts.values(), ref.counts))).agree
    wrong = compare_logits(zero.logits, ref.logits, bound, list(zip(zero.counts.values(), ref.counts)))
    assert not wrong.counts_equal and not wrong.within and wrong.max_dlogit > 100 * wrong.max_bound
    assert not compare_logits(sub.logits + 4 * bound.float(), ref.logits, bound).within


def test_nir_check_without_nirtorch_is_one_line(run_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nirtorch", None)  # import nirtorch raises ImportError
    result = runner.invoke(app, ["export", str(run_dir), "--format", "nir", "--out", str(tmp_path / "m.nir")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: the NIR check runs the file through nirtorch, which is "
                                                      "not installed: pip install 'lzo-bench[nir]' (or pass --no-check)")
    assert (tmp_path / "m.nir").is_file()


def test_a_refused_export_creates_no_folder(run_dir, tmp_path):
    """Issue 19, D10: --opset 99 with --out newdir/deep/m.onnx created newdir/deep before refusing."""
    result = runner.invoke(app, ["export", str(run_dir), "--opset", "99", "--out", str(tmp_path / "newdir" / "deep" / "m.onnx")])
    assert result.exit_code == 2 and "--opset 99 is not supported" in result.output
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("fmt,name", [("onnx", "m.onnx"), ("nir", "m.nir")])
def test_a_full_disk_is_one_line_and_no_file(run_dir, tmp_path, monkeypatch, fmt, name):
    """Issue 19, D4: on a full disk the NIR export crashed after h5py tracebacks and the ONNX export
    ended in a traceback; NIR is now written through memory and both writes are atomic."""
    import errno

    from lzo_bench.export import nir_graph, onnx_model

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nir_graph if fmt == "nir" else onnx_model, "atomic_write_bytes", full)
    result = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / name), "--no-check"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (f"error: cannot write {tmp_path / name} (No space left on device); "
                                                      "free space or choose another --out")
    assert not list(tmp_path.iterdir())


def test_the_onnx_report_fits_80_columns(run_dir, tmp_path):
    """Issue 19, output: the parity headers were cut ('spike mismatc…') and the latency table called
    ORT's slower time a 'speed-up 0.26×'; now short headers and ORT's time in multiples of ours."""
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.onnx"), "--samples", "16"],
                           terminal_width=80)
    assert result.exit_code == 0, result.output
    for header in ("Δlogit", "spikes ≠", "ORT acc", "ORT ms", "lzo ms", "ORT × lzo"):
        assert header in result.output, header
    assert "…" not in result.output and "speed-up" not in result.output
