"""The extension's ops checked against the pure-PyTorch reference on the same device before the first
update: a user never trains on gradients no one verified on their GPU.

For each rule (``surrogate``, ``sparsegrad``, ``localzo``) one forward and backward of a small
network (T = 40, B = 3, 11 → 13 → 9 → 4, 20 % input events) runs through the backend's event ops
and through :mod:`lzo_bench.lif` on the same device, from the same weights and LocalZO key; the
check passes when the spike counts per layer are equal, the logits agree and every weight gradient
agrees to ``1e-4`` of its largest entry (float rounding differs between the two, a wrong kernel
differs by the gradient's size). Spike counts are compared exactly although the two compute
potentials in different orders: every potential of this case lies at least 2e-3 from the threshold,
more than 10× the rounding bound of either (tests/test_selfcheck.py), so no machine can flip one.
It runs once per process and device, in about 0.1 s on a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lzo_bench.gates import GateSpec
from lzo_bench.rng import DrawKey

if TYPE_CHECKING:
    from lzo_bench.backends import Backend

RULES = ("surrogate", "sparsegrad", "localzo")
SHAPE = (40, 3, 11, (13, 9), 4)  # T, B, n_in, hidden, n_out
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
    from lzo_bench.model import SNN, NetworkSpec

    steps, batch, n_in, hidden, n_out = SHAPE
    net = NetworkSpec(n_in, hidden, n_out, beta=0.9, beta_out=0.85, init="uniform", init_gain=2.0)
    state = SNN(net, torch.Generator().manual_seed(0)).state_dict()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(steps, batch, n_in, generator=gen) < 0.2).float().to(device)
    y = (torch.arange(batch) % n_out).to(device)
    return net, state, x, y


def _step(net, state, x, y, spec: GateSpec, backend: "Backend | None", device: torch.device):
    from lzo_bench.model import SNN, SpikeRegularizer, classification_loss

    model = SNN(net).to(device)
    model.load_state_dict(state)
    out = model(x, spec, DrawKey(5, 9), backend)
    (classification_loss(out.logits, y) + SpikeRegularizer(f_up=0.3)(out.counts)).backward()
    return out, [w.grad.detach() for w in model.weights]


def verify(backend: "Backend", device: torch.device | str) -> Verdict:
    """Run the self-check of ``backend`` on ``device`` (no caching; see :func:`cached_verdict`)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    net, state, x, y = _case(device)
    problems = []
    for rule in RULES:
        spec = GateSpec.build(rule, "normal", delta=0.4)
        try:
            ours, g_ours = _step(net, state, x, y, spec, backend, device)
        except Exception as e:  # an op that raises fails the check: its message is the finding
            problems.append(f"{rule}: the ops raised {type(e).__name__}: {str(e).strip().splitlines()[0]}")
            continue
        ref, g_ref = _step(net, state, x, y, spec, None, device)
        counts = [int(a.sum()) - int(b.sum()) for a, b in zip(ours.counts, ref.counts)]
        if any(counts):
            problems.append(f"{rule}: spike counts differ by {counts} per layer")
            continue
        if not torch.allclose(ours.logits, ref.logits, rtol=1e-4, atol=1e-5):
            problems.append(f"{rule}: logits differ by {float((ours.logits - ref.logits).detach().abs().max()):.3g}")
        for layer, (a, b) in enumerate(zip(g_ours, g_ref)):
            scale = float(b.abs().max()) or 1.0
            err = float((a - b).abs().max()) / scale
            if not err <= GRAD_TOL:  # also catches NaN
                problems.append(f"{rule}: weight {layer}'s gradient differs by {err:.3g} of its scale")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if problems:
        return Verdict(False, "; ".join(problems), seconds)
    return Verdict(True, f"{', '.join(RULES)} equal to the reference on {_where(device)}", seconds)


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
