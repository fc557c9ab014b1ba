"""The extension's ops checked against the pure-PyTorch reference on the same device before the first
update: a user never trains on gradients no one verified on their GPU.

For each rule (``surrogate``, ``sparsegrad``, ``localzo``) one forward and backward of two small
networks runs through the backend's event ops and through :mod:`lzo_bench.core.lif` on the same device,
from the same weights and LocalZO key: a fully connected one (T = 40, B = 3, 11 → 13 → 9 → 4, 20 %
input events) and a convolutional one (2×7×7 frames → conv 3×3 to 3 channels, 2×2 sum pooling →
conv 3×3 stride 2 to 4 channels → 5 → 4, T = 30, B = 2). The check passes when the spike
counts per layer are equal, the logits agree and every weight gradient agrees to ``1e-4`` of its
largest entry (float rounding differs between the two, a wrong kernel differs by the gradient's
size). Spike counts are compared exactly although the two compute potentials in different orders:
every potential of these cases lies more than 10× the rounding bound of either from the threshold
(tests/test_selfcheck.py), so no machine can flip one. It runs once per process and device, in
about 0.2 s on a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lzo_bench.runtime.devices import fp32_convolutions
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey

if TYPE_CHECKING:
    from lzo_bench.ops.backends import Backend

RULES = ("surrogate", "sparsegrad", "localzo")
SHAPE = (40, 3, 11, (13, 9), 4)  # T, B, n_in, hidden, n_out
CONV_SHAPE = (30, 2, (2, 7, 7), (5,), 4)  # T, B, frame, hidden after the conv layers, n_out
CONV_SEED = 86  # spikes in every layer; every potential > 10x the rounding bound from θ (tested; 23x measured)
GRAD_TOL = 1e-4
REPORT = "report it with the output of `lzo-bench doctor --json` and the line above"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one self-check: ``ok``, what differed where not, and how long it took."""

    ok: bool
    detail: str
    seconds: float


_VERDICTS: dict[tuple[str, str], Verdict] = {}


def _case(device: torch.device):
    from lzo_bench.core.model import SNN, NetworkSpec

    steps, batch, n_in, hidden, n_out = SHAPE
    net = NetworkSpec(n_in, hidden, n_out, beta=0.9, beta_out=0.85, init="uniform", init_gain=2.0)
    state = SNN(net, torch.Generator().manual_seed(0)).state_dict()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(steps, batch, n_in, generator=gen) < 0.2).float().to(device)
    y = (torch.arange(batch) % n_out).to(device)
    return net, state, x, y


def _conv_case(device: torch.device):
    from lzo_bench.core.conv import ConvLayer
    from lzo_bench.core.model import SNN, NetworkSpec

    steps, batch, frame, hidden, n_out = CONV_SHAPE
    n_in = frame[0] * frame[1] * frame[2]
    net = NetworkSpec(n_in, hidden, n_out, beta=0.9, beta_out=0.85, init_gain=10.0, frame=frame,
                      conv=(ConvLayer(3, 3, 1, 1, pool=2), ConvLayer(4, 3, 2, 1)))
    state = SNN(net, torch.Generator().manual_seed(CONV_SEED)).state_dict()
    gen = torch.Generator().manual_seed(CONV_SEED + 1)
    x = (torch.rand(steps, batch, n_in, generator=gen) < 0.2).float().to(device)
    y = (torch.arange(batch) % n_out).to(device)
    return net, state, x, y


#: the self-check's networks, by the name its findings carry ("" for the fully connected one)
CASES = {"": _case, "conv ": _conv_case}


def _step(net, state, x, y, spec: GateSpec, backend: "Backend | None", device: torch.device):
    from lzo_bench.core.model import SNN, SpikeRegularizer, classification_loss

    model = SNN(net).to(device)
    model.load_state_dict(state)
    out = model(x, spec, DrawKey(5, 9), backend)
    (classification_loss(out.logits, y) + SpikeRegularizer(f_up=0.3)(out.counts)).backward()
    return out, [w.grad.detach() for w in model.weights]


def verify(backend: "Backend", device: torch.device | str) -> Verdict:
    """Run the self-check of ``backend`` on ``device`` (no caching; see :func:`cached_verdict`)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    with fp32_convolutions():  # cuDNN's default TF32 would separate the two sides by ~1e-3
        problems = [p for name, case in CASES.items() for p in _compare(backend, device, name, *case(device))]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if problems:
        return Verdict(False, "; ".join(problems), seconds)
    return Verdict(True, f"{', '.join(RULES)} equal to the reference on {_where(device)}, fully connected and "
                         f"convolutional", seconds)


def _compare(backend: "Backend", device: torch.device, name: str, net, state, x, y) -> list[str]:
    """What differs between ``backend`` and the reference on one case, for each rule (findings prefixed
    with the case's ``name``)."""
    problems = []
    for rule in RULES:
        spec = GateSpec.build(rule, "normal", delta=0.4)
        try:
            ours, g_ours = _step(net, state, x, y, spec, backend, device)
        except Exception as e:  # an op that raises fails the check: its message is the finding
            problems.append(f"{name}{rule}: the ops raised {type(e).__name__}: {str(e).strip().splitlines()[0]}")
            continue
        ref, g_ref = _step(net, state, x, y, spec, None, device)
        counts = [int(a.sum()) - int(b.sum()) for a, b in zip(ours.counts, ref.counts)]
        if any(counts):
            problems.append(f"{name}{rule}: spike counts differ by {counts} per layer")
            continue
        if not torch.allclose(ours.logits, ref.logits, rtol=1e-4, atol=1e-5):
            problems.append(f"{name}{rule}: logits differ by {float((ours.logits - ref.logits).detach().abs().max()):.3g}")
        for layer, (a, b) in enumerate(zip(g_ours, g_ref)):
            scale = float(b.abs().max()) or 1.0
            err = float((a - b).abs().max()) / scale
            if not err <= GRAD_TOL:  # also catches NaN
                problems.append(f"{name}{rule}: weight {layer}'s gradient differs by {err:.3g} of its scale")
    return problems


def cached_verdict(backend: "Backend", device: torch.device | str) -> Verdict:
    """:func:`verify`, once per process, backend and device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (backend.name, str(device))
    if key not in _VERDICTS:
        _VERDICTS[key] = verify(backend, device)
    return _VERDICTS[key]


def refusal(verdict: Verdict) -> str:
    """The one line that refuses a backend whose self-check failed."""
    return f"its self-check against the reference failed ({verdict.detail}); {REPORT}"


def _where(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
