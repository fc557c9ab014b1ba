"""The convolutional SNN of ``snntorch_conv.py`` in SpikingJelly, its spikes through LocalZO.

    python examples/spikingjelly_conv.py --rule localzo   # surrogate_function=lzo_bench.spike.LocalZO()
    python examples/spikingjelly_conv.py --rule atan      # SpikingJelly's ATan

``LIFNode(tau = 1/(1 − β), decay_input=False, v_reset=None, detach_reset=True)`` is the same neuron as
ours (``H = β·V + X``, soft reset by θ). A custom surrogate runs SpikingJelly's torch reference
path: its CUDA/Triton kernels accept only its built-in surrogate classes (chosen by type, so never
subclass one), and its older CuPy backend is refused by ``LocalZO.cuda_codes`` with a one-line error.
"""

from __future__ import annotations

import torch
from _digits import BETA, LeakyReadout, arguments, init_like_lzo, train
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from lzo_bench import spike


class ConvSNN(nn.Module):
    def __init__(self, surrogate_function):
        super().__init__()
        node = dict(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=1.0, v_reset=None,
                    surrogate_function=surrogate_function, detach_reset=True, step_mode="m")
        self.body = nn.Sequential(
            layer.Conv2d(1, 12, 3, padding=1, step_mode="m"), neuron.LIFNode(**node),
            layer.Conv2d(12, 24, 3, stride=2, padding=1, step_mode="m"), neuron.LIFNode(**node),
        )
        self.readout = LeakyReadout(24 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, 64]`` → logits ``[B, 10]``."""
        functional.reset_net(self.body)
        s = self.body(x.view(x.shape[0], x.shape[1], 1, 8, 8))
        return self.readout(s.flatten(2))


def main() -> None:
    args = arguments(__doc__, ("localzo", "atan"))
    torch.manual_seed(args.seed)
    fn = spike.LocalZO(delta=0.05, seed=args.seed) if args.rule == "localzo" else surrogate.ATan()
    model = ConvSNN(fn)
    init_like_lzo(model)
    train(model, model, args, {"library": "spikingjelly"})


if __name__ == "__main__":
    main()
