"""A small convolutional SNN on the embedded digits in snnTorch, its spikes through LocalZO.

    python examples/snntorch_conv.py --rule localzo     # spike_grad=lzo_bench.spike.LocalZO()
    python examples/snntorch_conv.py --rule atan        # snnTorch's own atan surrogate

Input: the latency-coded 8×8 digits as ``[T, B, 1, 8, 8]``. Network: conv 1→12 (3×3, pad 1) → Leaky →
conv 12→24 (3×3, stride 2, pad 1) → Leaky → leaky readout of 24·4·4 → 10, ``max_t``. LocalZO here is
the estimator in a dense library (snnTorch computes every neuron); the sparse speed needs
``lzo_bench.nn``. Prints one JSON line: test accuracy and the median time per update.
"""

from __future__ import annotations

import snntorch as snn
import torch
from _digits import BETA, LeakyReadout, arguments, init_like_lzo, train
from snntorch import surrogate
from torch import nn

from lzo_bench import spike


class ConvSNN(nn.Module):
    def __init__(self, spike_grad):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        lif = dict(beta=BETA, threshold=1.0, spike_grad=spike_grad, reset_mechanism="subtract")
        self.lif1, self.lif2 = snn.Leaky(**lif), snn.Leaky(**lif)
        self.readout = LeakyReadout(24 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, 64]`` → logits ``[B, 10]``."""
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        out = []
        for x_t in x.view(x.shape[0], x.shape[1], 1, 8, 8):
            s1, mem1 = self.lif1(self.conv1(x_t), mem1)
            s2, mem2 = self.lif2(self.conv2(s1), mem2)
            out.append(s2.flatten(1))
        return self.readout(torch.stack(out))


def main() -> None:
    args = arguments(__doc__, ("localzo", "atan"))
    torch.manual_seed(args.seed)
    grad = spike.LocalZO(delta=0.05, seed=args.seed) if args.rule == "localzo" else surrogate.atan()
    model = ConvSNN(grad)
    init_like_lzo(model)
    train(model, model, args, {"library": "snntorch"})


if __name__ == "__main__":
    main()
