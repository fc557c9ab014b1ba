"""The CUDA ops against the pure-PyTorch reference on a GPU (a stage of gpu_check.sh): the whole
network through the event ops (kernels/snn_cuda_kernels.cuh), what training runs.

``--sanitize``: one small training step (T = 70) of every method — the program compute-sanitizer's
racecheck and memcheck run. Default: the paper's 2 × 200 network at T = 300 (B = 16, N-MNIST-shaped input),
CUDA vs the reference (spikes identical, max |ΔW| relative to the gradient's scale) and CUDA vs
CUDA for the same step twice (atomics make dW depend on the order of additions: the difference is
the non-determinism), one JSON object on stdout.

    python benchmarks/cuda_check.py [--sanitize] [--device cuda]
"""

from __future__ import annotations

import argparse
import json

import torch

from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, NetworkSpec, SpikeRegularizer, classification_loss
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops.backends import select_backend

METHODS = ("surrogate", "sparsegrad", "localzo")


def step(model: SNN, x: torch.Tensor, y: torch.Tensor, spec: GateSpec, backend) -> tuple[list, list]:
    model.zero_grad(set_to_none=True)
    out = model(x, spec, DrawKey(3, 5), backend)
    (classification_loss(out.logits, y) + SpikeRegularizer()(out.counts)).backward()
    return [s.detach().cpu() for s in out.spikes], [w.grad.detach().cpu().clone() for w in model.weights]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    steps, batch, n_in = (70, 4, 40) if args.sanitize else (300, 16, 1156)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(steps, batch, n_in, generator=g) < 0.05).float()
    y = torch.randint(10, (batch,), generator=g)
    net = NetworkSpec(n_in, (200, 200), 10, beta=0.905, beta_out=0.905, init="normal", init_gain=40.0)
    init = SNN(net, torch.Generator().manual_seed(1)).state_dict()
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "shape": {"T": steps, "B": batch, "n_in": n_in}, "methods": {}}
    for method in METHODS:
        spec = GateSpec.build(method, "normal", 0.05)
        auto = select_backend("auto", device, spec)
        if device.type == "cuda" and auto.name != "cuda":  # a fallback would compare the reference with itself
            raise SystemExit(f"cuda_check: the CUDA ops did not load ({auto.reason}); nothing to check")
        model = SNN(net).to(device)
        model.load_state_dict(init)
        s1, g1 = step(model, x.to(device), y.to(device), spec, auto)
        if args.sanitize:
            report["methods"][method] = {"backend": auto.name, "ran": True}
            continue
        s2, g2 = step(model, x.to(device), y.to(device), spec, auto)
        ref_model = SNN(net)
        ref_model.load_state_dict(init)
        rs, rg = step(ref_model, x, y, spec, None)
        report["methods"][method] = compare(auto.name, s1, g1, s2, g2, rs, rg)
    print(json.dumps(report))


def compare(backend: str, s1: list, g1: list, s2: list, g2: list, rs: list, rg: list) -> dict:
    """Spikes and weight gradients of two CUDA steps (s1/g1, s2/g2) against the reference's (rs/rg)."""
    scale = [float(r.abs().max()) or 1.0 for r in rg]
    return {
        "backend": backend,
        "spikes_identical": all(torch.equal(a, b) for a, b in zip(s1, rs)),
        "max_rel_dw_vs_reference": max(float((a - b).abs().max()) / sc for a, b, sc in zip(g1, rg, scale)),
        "max_rel_dw_run_to_run": max(float((a - b).abs().max()) / sc for a, b, sc in zip(g1, g2, scale)),
        "deterministic": all(torch.equal(a, b) for a, b in zip(g1, g2)),
        "spikes": [int(torch.count_nonzero(s)) for s in s1],
    }


if __name__ == "__main__":
    main()
