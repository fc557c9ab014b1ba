"""The extension's ops checked against the pure-PyTorch reference on the same device before the first
update: a user never trains on gradients no one verified on their GPU.

For each rule (``surrogate``, ``sparsegrad``, ``localzo``) one forward and backward of two small
networks runs through the backend's event ops and through :mod:`lzo_bench.core.lif` on the same device,
from the same weights and LocalZO key: a fully connected one (T = 40, B = 3, 11 → 13 → 9 → 4, 20 %
input events) and a convolutional one (2×7×7 frames → conv 3×3 to 3 channels, 2×2 sum pooling →
conv 3×3 stride 2 to 4 channels → 5 → 4, T = 30, B = 2). The check passes when the spike
counts per layer are equal, the logits agree and every weight gradient agrees to ``1e-4`` of its
largest entry (float rounding differs between the two, a wrong kernel differs by the gradient's
size), with TF32 off for both cuDNN and matmuls (:func:`fp32_math`). Spike counts are compared exactly
although the two compute potentials in different orders: every potential of these cases lies more than
10× the rounding bound of either from the threshold (tests/test_selfcheck.py), so no machine can flip one.

On a GPU the check runs in a child process (:func:`verify_in_child`), so an illegal address or a device
assert in a kernel becomes a one-line refusal naming the fault while this process's CUDA context stays
clean; the verdict is cached per GPU, driver and kernel source in a small JSON file
(``~/.cache/lzo-bench/selfcheck.json``, ``LZO_SELFCHECK_CACHE`` overrides). On the CPU (``cpp``, and the
simulator's ``cuda-sim``) it runs in-process. Once per process and device, about 0.2 s on a GPU (plus
the child's start, a few seconds, on a first run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from lzo_bench.core.gates import GateSpec
from lzo_bench.core.rng import DrawKey
from lzo_bench.runtime.devices import fp32_convolutions

if TYPE_CHECKING:
    from lzo_bench.ops.backends import Backend

RULES = ("surrogate", "sparsegrad", "localzo")
SHAPE = (40, 3, 11, (13, 9), 4)  # T, B, n_in, hidden, n_out
CONV_SHAPE = (30, 2, (2, 7, 7), (5,), 4)  # T, B, frame, hidden after the conv layers, n_out
CONV_SEED = 86  # spikes in every layer; every potential > 10x the rounding bound from θ (tested; 23x measured)
#: wider than a 256-thread block: two neuron chunks in the forward, two input tiles in sparse dW / dx
WIDE_SHAPE = (4, 2, 300, (300, 20), 4)
WIDE_SEED = 1  # spikes in both layers; every potential > 10x the rounding bound from θ (tested; 15x measured)
WIDE_GAIN = 3.0
#: seconds the child process may take (its imports and the extension's load included)
CHILD_TIMEOUT = float(os.environ.get("LZO_SELFCHECK_TIMEOUT", "300"))
GRAD_TOL = 1e-4
REPORT = "report it with the output of `lzo-bench doctor --json` and the line above"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one self-check: ``ok``, what differed where not, and how long it took."""

    ok: bool
    detail: str
    seconds: float


_VERDICTS: dict[tuple[str, str], Verdict] = {}


def _sampled(net, seed: int, steps: int, batch: int, device: torch.device):
    """``(net, weights, x, y)``: ``net``'s weights drawn from ``seed``, input spikes at 20 % from ``seed + 1``."""
    from lzo_bench.core.model import SNN

    state = SNN(net, torch.Generator().manual_seed(seed)).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(steps, batch, net.n_in, generator=gen) < 0.2).float().to(device)
    y = (torch.arange(batch) % net.n_out).to(device)
    return net, state, x, y


def _case(device: torch.device):
    from lzo_bench.core.model import NetworkSpec

    steps, batch, n_in, hidden, n_out = SHAPE
    net = NetworkSpec(n_in, hidden, n_out, beta=0.9, beta_out=0.85, init="uniform", init_gain=2.0)
    return _sampled(net, 0, steps, batch, device)


def _wide_case(device: torch.device):
    from lzo_bench.core.model import NetworkSpec

    steps, batch, n_in, hidden, n_out = WIDE_SHAPE
    net = NetworkSpec(n_in, hidden, n_out, beta=0.9, beta_out=0.85, init="uniform", init_gain=WIDE_GAIN)
    return _sampled(net, WIDE_SEED, steps, batch, device)


def _conv_case(device: torch.device):
    from lzo_bench.core.conv import ConvLayer
    from lzo_bench.core.model import NetworkSpec

    steps, batch, frame, hidden, n_out = CONV_SHAPE
    net = NetworkSpec(frame[0] * frame[1] * frame[2], hidden, n_out, beta=0.9, beta_out=0.85, init_gain=10.0,
                      frame=frame, conv=(ConvLayer(3, 3, 1, 1, pool=2), ConvLayer(4, 3, 2, 1)))
    return _sampled(net, CONV_SEED, steps, batch, device)


#: the self-check's networks, by the name its findings carry ("" for the fully connected one)
CASES = {"": _case, "wide ": _wide_case, "conv ": _conv_case}


@contextlib.contextmanager
def fp32_math() -> Iterator[None]:
    """Full fp32 for cuDNN convolutions and matmuls inside the block (TF32 off: cuDNN's flag through
    :func:`~lzo_bench.runtime.devices.fp32_convolutions`, matmul's through
    ``torch.backends.cuda.matmul.allow_tf32`` and ``set_float32_matmul_precision("highest")``); the
    caller's settings restored after, also after an error."""
    matmul = torch.backends.cuda.matmul
    precision, tf32 = torch.get_float32_matmul_precision(), matmul.allow_tf32
    with fp32_convolutions():
        torch.set_float32_matmul_precision("highest")
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
            matmul.allow_tf32 = tf32


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
    with fp32_math():  # TF32 (cuDNN's default, or a user's matmul setting) would separate the two by ~1e-3
        problems = [p for name, case in CASES.items() for p in _compare(backend, device, name, *case(device))]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if problems:
        return Verdict(False, "; ".join(problems), seconds)
    return Verdict(True, f"{', '.join(RULES)} equal to the reference on {_where(device)}, fully connected and "
                         f"convolutional (a layer wider than a 256-thread block among them)", seconds)


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
        in_child = device.type == "cuda" and backend.name == "cuda" and not os.environ.get(_CHILD_ENV)
        _VERDICTS[key] = verify_in_child(backend.name, device) if in_child else verify(backend, device)
    return _VERDICTS[key]


# -- the check in a child process: a kernel fault ends the child, not this process's CUDA context ----------

_CHILD_ENV = "LZO_SELFCHECK_CHILD"
_VERDICT_TAG = "lzo-selfcheck-verdict: "


def _child_command(backend: str, device: torch.device) -> list[str]:
    return [sys.executable, "-m", "lzo_bench.ops.selfcheck", backend, str(device)]


def _source_hash() -> str:
    """The kernels, this check and the torch build: a verdict holds while none of them changes."""
    from lzo_bench.ops.extension import kernels_dir

    h = hashlib.sha1(f"{torch.__version__}|{torch.version.cuda}".encode())
    folder = kernels_dir()
    for f in sorted([*folder.glob("*.h"), *folder.glob("*.cuh"), *folder.glob("*.cpp"), *folder.glob("*.cu"),
                     Path(__file__)]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _driver() -> str:
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown driver"


def machine_key(device: torch.device) -> str:
    """What a cached verdict holds for: the GPU (its UUID), the driver and :func:`_source_hash`."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} {getattr(props, 'uuid', device.index)}|{_driver()}"
    else:
        where = "cpu"
    return f"{where}|{_source_hash()}"


def cache_path() -> Path:
    if os.environ.get("LZO_SELFCHECK_CACHE"):
        return Path(os.environ["LZO_SELFCHECK_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lzo-bench" / "selfcheck.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, verdict: Verdict) -> None:
    """Add one verdict to the cache file (written beside, then renamed: never a half-written file)."""
    path = cache_path()
    data = _read_cache()
    data[key] = asdict(verdict)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the check runs again next time


def _fault(proc: subprocess.CompletedProcess) -> str:
    """What ended a child that gave no verdict: the signal or exit code, and the line of its output
    that names the fault (a CUDA error, a device assert), else its last line."""
    if proc.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-proc.returncode}"
    else:
        how = f"exited with code {proc.returncode}"
    lines = [line.strip() for line in (proc.stderr or "").splitlines() + (proc.stdout or "").splitlines() if line.strip()]
    named = [line for line in lines if any(k in line for k in ("CUDA error", "device-side assert", "illegal",
                                                                 "Assertion", "assert", "Error", "error"))]
    said = (named or lines or ["no output"])[-1]
    return f"the self-check's child process {how}: {said[:300]}"


def verify_in_child(backend: str, device: torch.device | str, timeout: float | None = None) -> Verdict:
    """:func:`verify` of ``backend`` on ``device`` in a child process, cached on disk by
    :func:`machine_key`; a child that crashes, asserts or hangs fails the check with one line."""
    device = torch.device(device)
    key = f"{backend}|{machine_key(device)}"
    cached = _read_cache().get(key)
    if isinstance(cached, dict):
        try:
            return Verdict(**cached)
        except TypeError:
            pass
    t0 = time.perf_counter()
    root = str(Path(__file__).resolve().parents[2])  # this lzo_bench, however the parent found it
    env = dict(os.environ, **{_CHILD_ENV: "1"})
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(_child_command(backend, device), capture_output=True, text=True, env=env,
                              timeout=CHILD_TIMEOUT if timeout is None else timeout)
    except subprocess.TimeoutExpired:  # not cached: a busy machine may pass next time
        return Verdict(False, f"the self-check's child process did not finish in {timeout or CHILD_TIMEOUT:.0f} s",
                       time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    tagged = [line for line in proc.stdout.splitlines() if line.startswith(_VERDICT_TAG)]
    verdict = None
    if proc.returncode == 0 and tagged:
        try:
            verdict = Verdict(**json.loads(tagged[-1][len(_VERDICT_TAG):]))
        except (TypeError, ValueError):
            verdict = None
    if verdict is None:
        verdict = Verdict(False, _fault(proc), seconds)
    _write_cache(key, verdict)
    return verdict


def _child_main(backend_name: str, device_name: str) -> None:
    """In the child: the extension's ops (``cuda`` or ``cpp``: the event network, as their Backend runs
    it, without its self-check), :func:`verify`, the verdict printed on one tagged line."""
    from types import SimpleNamespace

    from lzo_bench.ops import extension as ops
    from lzo_bench.ops.event_network import event_network

    device = torch.device(device_name)
    try:
        ops.build(cuda=backend_name == "cuda")
        backend = SimpleNamespace(name=backend_name, layer=None, reason="self-check child", network=event_network)
        verdict = verify(backend, device)
    except Exception as e:  # after a kernel fault the reference steps fail too: the first error is the finding
        text = str(e).strip()
        verdict = Verdict(False, f"the check raised {type(e).__name__}: {text.splitlines()[0] if text else ''}", 0.0)
    print(_VERDICT_TAG + json.dumps(asdict(verdict)), flush=True)


def refusal(verdict: Verdict) -> str:
    """The one line that refuses a backend whose self-check failed."""
    return f"its self-check against the reference failed ({verdict.detail}); {REPORT}"


def _where(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"


if __name__ == "__main__":
    _child_main(*sys.argv[1:3])
