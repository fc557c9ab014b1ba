"""Shared by the examples: the embedded digits as images over time, a leaky readout, and a
training loop that reports test accuracy and time per update as one JSON line."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lzo_bench import spike
from lzo_bench.data import load_dataset

BETA = 0.905  # exp(−dt/τ), dt = 1 ms, τ = 10 ms: the digits profile's constants
BETA_OUT = 0.905
#: the three rules as lzo_bench.spike functions for the lzo_bench.nn examples, by seed
RULES = {"localzo": lambda s: spike.LocalZO(delta=0.05, seed=s), "sparsegrad": lambda s: spike.SparseGrad(delta=0.05),
         "surrogate": lambda s: spike.Surrogate(delta=0.05)}


def arguments(doc: str, rules: tuple[str, ...]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rule", choices=rules, default=rules[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="time bins of the latency code")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="train on the first N samples only (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    for name in ("epochs", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def nn_example(doc: str) -> tuple[argparse.Namespace, torch.Generator, Callable[[int], nn.Module]]:
    """The start of an ``lzo_bench.nn`` example: its arguments (``--rule`` one of :data:`RULES`), torch seeded,
    a generator for the layers' weights and the chosen rule as a function of a seed."""
    args = arguments(doc, tuple(RULES))
    torch.manual_seed(args.seed)
    return args, torch.Generator().manual_seed(args.seed), RULES[args.rule]


def cpu_backend(net: nn.Module) -> str:
    """The backend an ``lzo_bench.nn.Sequential`` runs on the CPU (``cpp``: the event ops)."""
    return net._backend(torch.device("cpu"), net.stack(False)).name


def digits(steps: int, limit: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(x [T, n, 64] float, y [n])`` for train and test: the latency-coded 8×8 digits of ``lzo-bench train``."""
    train, test = load_dataset("digits", steps)
    out = []
    for data, n in ((train, limit or len(train)), (test, len(test))):
        out.append((data.spikes[:n].transpose(0, 1).float().contiguous(), data.labels[:n]))
    return out[0], out[1]


class LeakyReadout(nn.Module):
    """``o[t] = β_r·o[t−1] + (1 − β_r)·(W s[t] + b)``, logits ``max_t o[t]``."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        o, best = torch.zeros_like(self.fc(s[0])), None
        for s_t in s:
            o = BETA_OUT * o + (1 - BETA_OUT) * self.fc(s_t)
            best = o if best is None else torch.maximum(best, o)
        return best


def init_like_lzo(model: nn.Module, gain: float = 40.0) -> None:
    """Weights ``N(0, gain·(1 − β)/√fan_in)``, biases 0 — the digits profile's initialisation of
    ``lzo-bench train`` (``init_gain`` 40), so a sparse latency code drives spikes through every layer."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, gain * (1 - BETA) / fan_in**0.5)
            nn.init.zeros_(m.bias)


def train(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], args: argparse.Namespace,
          extra: dict) -> dict:
    """Adam on cross-entropy; prints and returns ``{"test_acc", "update_ms", ...}``."""
    torch.manual_seed(args.seed)
    (x_tr, y_tr), (x_te, y_te) = digits(args.steps, args.limit)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    update_ms = []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(y_tr.numel(), generator=g)
        for start in range(0, y_tr.numel(), args.batch_size):
            idx = order[start:start + args.batch_size]
            t0 = time.perf_counter()
            loss = F.cross_entropy(forward(x_tr[:, idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            update_ms.append(1e3 * (time.perf_counter() - t0))
    model.eval()
    with torch.no_grad():
        correct = sum(int((forward(x_te[:, i:i + 256]).argmax(1) == y_te[i:i + 256]).sum())
                      for i in range(0, y_te.numel(), 256))
    result = {**extra, "rule": args.rule, "seed": args.seed, "epochs": args.epochs,
              "test_acc": correct / y_te.numel(), "updates": len(update_ms),
              "train_samples": y_tr.numel(), "batch_size": args.batch_size, "update_ms": statistics.median(update_ms),
              "threads": torch.get_num_threads()}
    print(json.dumps(result))
    return result
