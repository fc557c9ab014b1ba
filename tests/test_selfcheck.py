"""The self-check that stands between the extension and a user's first update on a GPU
(lzo_bench/ops/selfcheck.py), exercised on the CPU build of the same ops: it passes on correct ops,
names what differs on wrong ones, and a failed check refuses the backend in one line."""

import json
import sys

import pytest
import torch

from lzo_bench.core.model import Forward
from lzo_bench.ops import selfcheck
from lzo_bench.ops.backends import Backend, BackendUnavailable, select_backend, verified
from lzo_bench.ops.event_network import event_network


def _cpp():
    return select_backend("cpp", "cpu")


def test_self_check_passes_on_the_cpu_ops():
    verdict = selfcheck.verify(_cpp(), "cpu")
    assert verdict.ok, verdict.detail
    assert "surrogate, sparsegrad, localzo equal to the reference" in verdict.detail


def _sabotaged(kind: str) -> Backend:
    """The C++ ops with one planted error: gradients scaled by 1.01, or one spike moved."""

    def network(model, x, spec, key):
        out = event_network(model, x, spec, key)
        if kind == "logits":
            return Forward(out.logits * 1.01, out.counts, out._active, out._spikes)
        counts = [out.counts[0] + torch.nn.functional.one_hot(torch.tensor(0), out.counts[0].shape[1]), *out.counts[1:]]
        return Forward(out.logits, counts, out._active, out._spikes)

    cpp = _cpp()
    return Backend("sabotaged-" + kind, cpp.layer, cpp.reason, network)


@pytest.mark.parametrize("kind,finding", [("logits", "logits differ by"), ("counts", "spike counts differ by [3, 0]")])
def test_self_check_names_what_differs(kind, finding):
    verdict = selfcheck.verify(_sabotaged(kind), "cpu")
    assert not verdict.ok
    assert all(f"{rule}: {finding}" in verdict.detail for rule in selfcheck.RULES), verdict.detail


def test_gradients_that_differ_fail_the_check():
    def network(model, x, spec, key):
        model.weights[0].register_hook(lambda g: g * 1.01)  # the same forward, a gradient 1 % off
        return event_network(model, x, spec, key)

    cpp = _cpp()
    verdict = selfcheck.verify(Backend("wrong-dw", cpp.layer, cpp.reason, network), "cpu")
    assert not verdict.ok and "weight 0's gradient differs by" in verdict.detail


def test_an_op_that_raises_fails_the_check():
    def network(model, x, spec, key):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    cpp = _cpp()
    verdict = selfcheck.verify(Backend("raises", cpp.layer, cpp.reason, network), "cpu")
    assert not verdict.ok
    assert "localzo: the ops raised RuntimeError: CUDA error: an illegal memory access was encountered" in verdict.detail
    assert "more lines" not in verdict.detail


def test_a_failed_check_refuses_the_backend_in_one_line():
    with pytest.raises(BackendUnavailable) as err:
        verified(_sabotaged("logits"), torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("its self-check against the reference failed (surrogate: logits differ by")
    assert "lzo-bench doctor --json" in message


def test_verdicts_are_cached_per_backend_and_device(monkeypatch):
    calls = []
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})
    monkeypatch.setattr(selfcheck, "verify", lambda b, d: calls.append(b.name) or selfcheck.Verdict(True, "ok", 0.0))
    for _ in range(3):
        assert verified(_cpp(), torch.device("cpu")).reason.endswith("self-check passed")
    assert calls == ["cpp"]


@pytest.mark.parametrize("case", ["_case", "_wide_case"])
def test_the_check_compares_spike_counts_exactly_only_where_rounding_cannot_flip_them(case):
    """The self-check compares spike counts exactly between two float computations (events vs GEMM). That
    holds on any machine only if no potential of its case lies within rounding of the threshold: every
    |u − θ| must exceed, with a 10× margin, the bound 2·γ_n·max|u| (n = fan-in + 3T roundings on a
    potential's path; lzo_bench.core.floatcmp), layer by layer."""
    from lzo_bench.core.floatcmp import gamma
    from lzo_bench.core.lif import lif_potentials
    from lzo_bench.core.model import SNN

    net, state, x, _ = getattr(selfcheck, case)(torch.device("cpu"))
    model = SNN(net)
    model.load_state_dict(state)
    h = x
    steps, batch, _ = x.shape
    for w in list(model.weights)[:-1]:
        v = lif_potentials((h.reshape(steps * batch, -1) @ w.detach()).view(steps, batch, -1), net.beta, net.theta)
        bound = 2 * gamma(w.shape[0] + 3 * steps) * float((v + net.theta).abs().max())
        assert float(v.abs().min()) > 10 * bound
        h = (v > 0).float()
        assert h.sum() > 0  # every layer spikes


def test_the_conv_case_is_as_far_from_the_threshold_and_spikes_in_every_layer():
    """The same soundness for the convolutional case: no potential within 10× the rounding bound of θ
    (lzo_bench.core.floatcmp.lif_potential_bound with the conv geometry, layer by layer, pooled spikes between
    the conv layers), and every layer spikes, so the check compares more than silence."""
    from lzo_bench.core.conv import pool_dense
    from lzo_bench.core.floatcmp import lif_potential_bound
    from lzo_bench.core.gates import GateSpec
    from lzo_bench.core.lif import layer_current, lif_membrane
    from lzo_bench.core.model import SNN
    from lzo_bench.core.rng import DrawKey

    net, state, x, _ = selfcheck._conv_case(torch.device("cpu"))
    model = SNN(net)
    model.load_state_dict(state)
    stack = model.stack(GateSpec.build("localzo", "normal", delta=0.4), DrawKey(5, 9))
    h = x
    for hid in stack.hidden:
        w = hid.weight.detach()
        v = lif_membrane(layer_current(h, w, None, hid.conv), hid.beta, hid.theta) - hid.theta
        s = (v > 0).float()
        bound = lif_potential_bound(h, w, hid.beta, hid.theta, s, hid.conv)
        assert bool((v.double().abs() > 10 * bound).all())
        assert s.sum() > 0
        h = pool_dense(s, hid.conv) if hid.conv else s


def test_fp32_convolutions_turns_cudnn_tf32_off_inside_and_restores_it_after_an_error():
    from lzo_bench.runtime.devices import fp32_convolutions
    cudnn = torch.backends.cudnn
    was = cudnn.allow_tf32
    try:
        cudnn.allow_tf32 = True
        with pytest.raises(KeyError):
            with fp32_convolutions():
                assert cudnn.allow_tf32 is False
                raise KeyError("inside")
        assert cudnn.allow_tf32 is True
    finally:
        cudnn.allow_tf32 = was


# -- issue 31.3: a wide case, full fp32, and the check in a child process ------------------------------------

def test_fp32_math_turns_tf32_off_for_cudnn_and_matmul_and_restores_the_users_settings():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    was = torch.get_float32_matmul_precision(), matmul.allow_tf32, cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")
        matmul.allow_tf32, cudnn.allow_tf32 = True, True
        with pytest.raises(KeyError):
            with selfcheck.fp32_math():
                assert torch.get_float32_matmul_precision() == "highest"
                assert matmul.allow_tf32 is False and cudnn.allow_tf32 is False
                raise KeyError("inside")
        assert torch.get_float32_matmul_precision() == "high"
        assert matmul.allow_tf32 is True and cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(was[0])
        matmul.allow_tf32, cudnn.allow_tf32 = was[1], was[2]


def test_the_wide_case_spans_two_blocks_of_256_threads():
    steps, batch, n_in, hidden, _ = selfcheck.WIDE_SHAPE
    assert n_in > 256 and hidden[0] > 256  # input tiles of dW (layer 1) and of dW / dx (layer 2); neuron chunks
    assert steps * batch <= 8  # kept small: the simulator runs it too


def test_the_wide_case_passes_on_the_simulated_cuda_kernels():
    from lzo_bench.ops.backends import cuda_simulator

    cpu = torch.device("cpu")
    assert selfcheck._compare(cuda_simulator(), cpu, "wide ", *selfcheck._wide_case(cpu)) == []


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "selfcheck.json"
    monkeypatch.setenv("LZO_SELFCHECK_CACHE", str(path))
    return path


def test_the_check_in_a_child_process_passes_and_its_verdict_is_cached(cache, monkeypatch):
    verdict = selfcheck.verify_in_child("cpp", "cpu")
    assert verdict.ok, verdict.detail
    stored = json.loads(cache.read_text())
    assert list(stored) == [f"cpp|{selfcheck.machine_key(torch.device('cpu'))}"] and stored[next(iter(stored))]["ok"]

    def no_child(*a, **k):
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(selfcheck.subprocess, "run", no_child)
    assert selfcheck.verify_in_child("cpp", "cpu") == verdict
    monkeypatch.setattr(selfcheck, "_source_hash", lambda: "changed")  # another kernel source: checked again
    with pytest.raises(AssertionError, match="cached verdict"):
        selfcheck.verify_in_child("cpp", "cpu")


PLANTED = {
    "segfault": ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "was killed by SIGSEGV"),
    "raises": ("raise RuntimeError('CUDA error: an illegal memory access was encountered')",
               "exited with code 1: RuntimeError: CUDA error: an illegal memory access was encountered"),
    "device assert": ("import os, sys; print('snn_cuda_kernels.cuh:301: block: [0,0,0], thread: [5,0,0] Assertion "
                      "`i < Nin` failed.', file=sys.stderr, flush=True); os.abort()",
                      "was killed by SIGABRT: snn_cuda_kernels.cuh:301: block: [0,0,0], thread: [5,0,0] Assertion"),
}


@pytest.mark.parametrize("fault", list(PLANTED))
def test_a_child_that_dies_becomes_a_one_line_refusal_naming_the_fault(cache, monkeypatch, fault):
    code, finding = PLANTED[fault]
    monkeypatch.setattr(selfcheck, "_child_command", lambda backend, device: [sys.executable, "-c", code])
    verdict = selfcheck.verify_in_child("cpp", "cpu")
    assert not verdict.ok and finding in verdict.detail, verdict.detail
    line = selfcheck.refusal(verdict)
    assert "\n" not in line and line.startswith("its self-check against the reference failed (the self-check's child")


def test_a_child_that_hangs_is_stopped_and_not_cached(cache, monkeypatch):
    monkeypatch.setattr(selfcheck, "_child_command", lambda backend, device: [sys.executable, "-c", "import time; time.sleep(60)"])
    verdict = selfcheck.verify_in_child("cpp", "cpu", timeout=1)
    assert not verdict.ok and "did not finish in 1 s" in verdict.detail
    assert not cache.exists()


def test_on_cuda_the_verdict_comes_from_the_child_and_on_the_cpu_in_process(monkeypatch):
    calls = []
    monkeypatch.setattr(selfcheck, "_VERDICTS", {})
    monkeypatch.setattr(selfcheck, "verify_in_child", lambda b, d: calls.append(("child", b, str(d))) or
                        selfcheck.Verdict(True, "ok", 0.0))
    monkeypatch.setattr(selfcheck, "verify", lambda b, d: calls.append(("here", b.name, str(d))) or
                        selfcheck.Verdict(True, "ok", 0.0))
    cuda = Backend("cuda", None, "test", event_network)
    selfcheck.cached_verdict(cuda, torch.device("cuda", 0))
    selfcheck.cached_verdict(_cpp(), torch.device("cpu"))
    selfcheck.cached_verdict(Backend("cuda-sim", None, "test", event_network), torch.device("cpu"))
    assert calls == [("child", "cuda", "cuda:0"), ("here", "cpp", "cpu"), ("here", "cuda-sim", "cpu")]
