"""NeuroBench metrics (lzo_bench.measure.nbmetrics), the NeuroBench adapter, `lzo-bench evaluate` and
`lzo-bench profile --run`."""

import json
from dataclasses import asdict

import pytest
import torch
from typer.testing import CliRunner

from lzo_bench.cli import app
from lzo_bench.core.floatcmp import compare_logits, readout_bound
from lzo_bench.core.model import SNN, NetworkSpec
from lzo_bench.data import NMNIST_INFO, load_dataset
from lzo_bench.measure.nbmetrics import NeuroBenchTally, layer_names, membranes, static_metrics, synaptic_ops
from lzo_bench.training.checkpoint import load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits run of one epoch (hidden 16, 16): its folder."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    result = runner.invoke(app, ["train", "--epochs", "1", "--hidden", "16,16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def hand_network() -> SNN:
    """3 inputs → 2 LIF (β = 0.5, θ = 1) → 2 outputs; zero weights in both layers."""
    model = SNN(NetworkSpec(3, (2,), 2, beta=0.5, beta_out=0.5))
    with torch.no_grad():
        model.weights[0].copy_(torch.tensor([[1.5, 0.0], [0.6, 0.6], [0.0, 0.0]]))
        model.weights[1].copy_(torch.tensor([[0.3, 0.0], [0.2, 0.1]]))
    return model


def test_metrics_by_hand_on_a_tiny_network():
    model = hand_network()
    x = torch.zeros(4, 1, 3)
    x[0, 0, 0] = x[2, 0, 1] = 1.0
    # u = [1.5, 0] (spike), [0.75 − 1, 0] = [−0.25, 0], [0.475, 0.6], [0.2375, 0.3]
    out = model(x)
    assert out.spikes[0][:, 0].tolist() == [[1, 0], [0, 0], [0, 0], [0, 0]]
    tally = NeuroBenchTally(layer_names(model))
    tally.add(model, x, out.spikes, out.logits, torch.tensor([out.logits.argmax(1).item()]))
    m = tally.result()
    assert m["ClassificationAccuracy"] == 1.0
    assert m["ActivationSparsity"] == 1 - 1 / 8 and m["ActivationSparsityByLayer"] == {"lif1": 1 - 1 / 8}
    # input 0 at t0 reaches 1 non-zero weight, input 1 at t2 reaches 2, the spike at t0 reaches 1
    assert m["SynapticOperations"] == {"Dense": 4 * (3 * 2 + 2 * 2), "Effective_ACs": 4, "Effective_MACs": 0}
    # every neuron at t0 (2), then: t1 neuron 0 only (neuron 1 stays 0), t2 both, t3 both
    assert m["MembraneUpdates"] == 2 + 1 + 2 + 2
    assert static_metrics(model) == {"ParameterCount": 10, "Footprint": 40, "ConnectionSparsity": 0.4}


def test_synaptic_ops_split_acs_and_macs_per_step_like_neurobench():
    model = hand_network()
    x = torch.zeros(4, 2, 3)
    x[0, 0, 0] = x[2, 1, 1] = 1.0
    x[1, 1, 1] = 0.5                     # a graded input: step 1's ops of layer 1 are MACs
    x[3, 0, 0] = -1.0                    # −1 counts as a spike, as NeuroBench has it
    dense, acs, macs = synaptic_ops([model.weights[0]], [x])
    assert (dense, acs, macs) == (4 * 2 * 3 * 2, 1 + 2 + 1, 2)


def test_membranes_match_the_forward_spikes(trained):
    model, _ = load_checkpoint(trained)
    _, test = load_dataset("digits", 40)
    x = test.dense(slice(0, 9)).float().transpose(0, 1).contiguous()
    out = model(x)
    for u, s in zip(membranes(model, x, out.spikes), out.spikes):
        assert torch.equal((u - model.spec.theta > 0).float(), s)


@pytest.mark.parametrize("reduce", ["max", "sum"])
def test_adapter_reproduces_the_logits_exactly(trained, reduce):
    pytest.importorskip("snntorch")
    from dataclasses import replace

    from lzo_bench.measure.nbmetrics import NeuroBenchNet

    model, _ = load_checkpoint(trained)
    if reduce == "sum":
        model.spec = replace(model.spec, reduce="sum")
    net = NeuroBenchNet(model)
    assert [n for n, _ in net.named_children()] == ["fc1", "lif1", "fc2", "lif2", "fc_out", "readout"]
    _, test = load_dataset("digits", 40)
    g = torch.Generator().manual_seed(1)
    for steps, batch in [(40, 1), (40, 7), (40, 64), (1, 1), (3, 5)]:
        x = test.dense(slice(0, batch)).float().transpose(0, 1).contiguous()[:steps]
        if steps < 40:  # short inputs: random spikes, so the first steps are not silent
            x = (torch.rand(steps, batch, 64, generator=g) < 0.3).float()
        ref = model(x)
        bound = readout_bound(ref.spikes[-1], model.weights[-1], model.spec.beta_out, model.spec.reduce)
        assert compare_logits(net.run(x), ref.logits, bound).within, (steps, batch)  # not torch.equal: rounding differs by CPU


def test_adapter_comparison_catches_a_wrong_reset(trained):
    """The rounding bound of the adapter test is no blanket tolerance: an adapter whose neurons reset to
    zero instead of subtracting θ (a real defect) falls far outside it."""
    snn = pytest.importorskip("snntorch")
    from lzo_bench.measure.nbmetrics import NeuroBenchNet

    model, _ = load_checkpoint(trained)
    net = NeuroBenchNet(model)
    for i, (fc, _) in enumerate(net.layers):  # snnTorch picks its state function at construction
        wrong = snn.Leaky(beta=model.spec.beta, threshold=model.spec.theta, reset_mechanism="zero")
        net.layers[i] = (fc, wrong)
        setattr(net, f"lif{i + 1}", wrong)
    _, test = load_dataset("digits", 40)
    x = test.dense(slice(0, 64)).float().transpose(0, 1).contiguous()
    ref = model(x)
    bound = readout_bound(ref.spikes[-1], model.weights[-1], model.spec.beta_out, model.spec.reduce)
    result = compare_logits(net.run(x), ref.logits, bound)
    assert not result.within and result.max_dlogit > 100 * result.max_bound


def test_neurobench_benchmark_reports_the_same_numbers(trained):
    """NeuroBench 2.3's own Benchmark on the adapter against `lzo-bench evaluate`'s numbers."""
    pytest.importorskip("neurobench")
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (
        ActivationSparsity,
        ActivationSparsityByLayer,
        ClassificationAccuracy,
        MembraneUpdates,
        SynapticOperations,
    )
    from neurobench.models import SNNTorchModel
    from torch.utils.data import DataLoader, TensorDataset

    from lzo_bench.measure.nbmetrics import NeuroBenchNet

    model, _ = load_checkpoint(trained)
    _, test = load_dataset("digits", 40)
    n = 100
    x, y = test.dense(slice(0, n)).float(), test.labels[:n]  # NeuroBench's layout: [B, T, n_in]
    net = NeuroBenchNet(model)
    bench = Benchmark(SNNTorchModel(net), DataLoader(TensorDataset(x, y), batch_size=32), [],
                      [lambda o: o.amax(1).argmax(1)],
                      [[ParameterCount, Footprint, ConnectionSparsity],
                       [ClassificationAccuracy, ActivationSparsity, ActivationSparsityByLayer, SynapticOperations,
                        MembraneUpdates]])
    # NeuroBench's footprint of the adapter also counts snnTorch's per-layer constants (β, θ, …),
    # taken, as NeuroBench takes it, before any input (the membranes are then empty)
    leaky = sum(b.numel() * b.element_size() for _, lif in net.layers for b in lif.buffers())
    theirs = bench.run(quiet=True)
    tally = NeuroBenchTally(layer_names(model))
    for start in range(0, n, 50):  # another batching: the metrics do not depend on it
        xb = x[start:start + 50].transpose(0, 1).contiguous()
        out = model(xb)
        tally.add(model, xb, out.spikes, out.logits, y[start:start + 50])
    ours = tally.result() | static_metrics(model)
    assert theirs["SynapticOperations"]["Dense"] == ours["SynapticOperations"]["Dense"] == 40 * (64 * 16 + 16 * 16 + 16 * 10)
    assert theirs["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours["SynapticOperations"]["Effective_ACs"], rel=1e-12)
    assert theirs["SynapticOperations"]["Effective_MACs"] == ours["SynapticOperations"]["Effective_MACs"] == 0
    assert ours["SynapticOperations"]["Effective_ACs"] > 0
    assert theirs["ActivationSparsity"] == pytest.approx(ours["ActivationSparsity"], rel=1e-12)
    assert theirs["ActivationSparsityByLayer"] == pytest.approx(ours["ActivationSparsityByLayer"], rel=1e-12)
    assert theirs["MembraneUpdates"] == ours["MembraneUpdates"]
    assert theirs["ClassificationAccuracy"] == pytest.approx(ours["ClassificationAccuracy"], rel=1e-6)
    assert theirs["ParameterCount"] == ours["ParameterCount"]
    assert theirs["ConnectionSparsity"] == round(ours["ConnectionSparsity"], 4)
    assert theirs["Footprint"] == ours["Footprint"] + leaky


def test_evaluate_cli_table_and_json(trained):
    result = runner.invoke(app, ["evaluate", str(trained), "--json", "--batch-size", "100"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    model, _ = load_checkpoint(trained)
    _, test = load_dataset("digits", 40)
    x = test.dense(slice(None)).float().transpose(0, 1).contiguous()
    out = model(x)
    m = report["metrics"]
    assert report["samples"] == len(test) == 360 and report["dataset"] == "digits" and report["steps"] == 40
    assert m["ClassificationAccuracy"] == pytest.approx(float((out.logits.argmax(1) == test.labels).float().mean()))
    spikes = [float(s.sum()) for s in out.spikes]
    assert m["ActivationSparsity"] == pytest.approx(1 - sum(spikes) / (360 * 40 * 32))
    assert m["ActivationSparsityByLayer"]["lif2"] == pytest.approx(1 - spikes[1] / (360 * 40 * 16))
    # all weights are non-zero: an input event costs fan_out ACs
    events = [float(x.sum())] + spikes
    assert m["SynapticOperations"]["Effective_ACs"] == pytest.approx((events[0] * 16 + events[1] * 16 + events[2] * 10) / 360)
    assert m["ParameterCount"] == 64 * 16 + 16 * 16 + 16 * 10 and m["Footprint"] == 4 * m["ParameterCount"]
    table = runner.invoke(app, ["evaluate", str(trained)])
    assert table.exit_code == 0, table.output
    assert "ActivationSparsity lif1" in table.output and "Effective ACs" in table.output
    assert f"{100 * m['ClassificationAccuracy']:.2f} %" in table.output


def test_evaluate_missing_run_and_missing_dataset_are_one_line_exit_2(trained, tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and result.output.startswith("error: no checkpoint at")
    assert result.output.count("\n") == 1
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    ckpt["dataset"] = asdict(NMNIST_INFO)
    ckpt["train"] = ckpt["train"] | {"dataset": "nmnist", "data_dir": str(tmp_path / "empty"), "steps": None}
    ckpt["network"]["n_in"] = NMNIST_INFO.n_units  # an N-MNIST-shaped network: the checkpoint is consistent
    ckpt["state_dict"]["weights.0"] = torch.zeros(NMNIST_INFO.n_units, ckpt["state_dict"]["weights.0"].shape[1])
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "checkpoint.pt")])
    assert result.exit_code == 2 and result.output.startswith("error: the run's test set is not there")
    assert result.output.count("\n") == 1


def test_profile_run_starts_from_the_trained_network(trained, tmp_path):
    result = runner.invoke(app, ["profile", "--run", str(trained), "--updates", "3", "--warmup", "0",
                                 "--methods", "localzo", "--out", str(tmp_path / "p"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["workload"]["hidden"] == [16, 16] and report["workload"]["name"] == "digits"
    assert report["workload"]["weights"].startswith(f"trained: {trained} after epoch 1")
    assert report["rows"][-1]["neurobench"]["ParameterCount"] == 64 * 16 + 16 * 16 + 16 * 10
    bad = runner.invoke(app, ["profile", "--run", str(trained), "--workload", "shd", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "--workload and --run exclude each other" in bad.output
    missing = runner.invoke(app, ["profile", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and missing.output.startswith("error: --run: no checkpoint at")
    assert not (tmp_path / "r").exists()
