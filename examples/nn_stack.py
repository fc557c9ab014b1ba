"""A 3-hidden-layer network of ``lzo_bench.nn`` layers on the embedded digits, per-layer β and a bias,
then the 2 × 200 network of ``lzo-bench train`` as ``nn.Sequential`` and as ``lzo_bench.core.model.SNN``
from the same initial weights: one implementation, so the same accuracy, and their update times.

    python examples/nn_stack.py --rule localzo      # or sparsegrad, surrogate

``nn.Sequential`` keeps spikes as events between layers and runs the C++ event ops, so a sparse
rule's backward touches only the active neurons. Prints one JSON line per network.
"""

from __future__ import annotations

import torch
from _digits import cpu_backend, nn_example, train

from lzo_bench import nn
from lzo_bench.core.gates import GateSpec
from lzo_bench.core.model import SNN, NetworkSpec
from lzo_bench.core.rng import DrawKey
from lzo_bench.ops.backends import select_backend


def main() -> None:
    args, g, rule = nn_example(__doc__)
    net = nn.Sequential(
        nn.LIF(64, 200, beta=0.905, rule=rule(args.seed), bias=True, init_gain=40.0, generator=g),
        nn.LIF(200, 200, beta=0.8, rule=rule(args.seed + 1), init_gain=40.0, generator=g),
        nn.LIF(200, 100, beta=0.905, theta=0.8, rule=rule(args.seed + 2), init_gain=40.0, generator=g),
        nn.LeakyReadout(100, 10, beta=0.905, bias=True, init_gain=40.0, generator=g),
    )
    train(net, net, args, {"network": "nn.Sequential 64-200-200-100-10", "backend": cpu_backend(net)})

    # the same 2 × 200 network twice from one seed: as nn.Sequential (sharing an SNN's weights) and as SNN
    spec = NetworkSpec(64, (200, 200), 10, beta=0.905, beta_out=0.905, init_gain=40.0)
    twin = nn.Sequential.from_snn(SNN(spec, torch.Generator().manual_seed(args.seed)), rule(args.seed))
    train(twin, twin, args, {"network": "nn.Sequential.from_snn 64-200-200-10", "backend": "cpp"})
    model = SNN(spec, torch.Generator().manual_seed(args.seed))
    gate = GateSpec.build(args.rule, "normal", delta=0.05)
    backend = select_backend("auto", "cpu", gate)
    updates = [0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not model.training:
            return model(x, None, None, backend).logits
        key = DrawKey(args.seed, updates[0])
        updates[0] += 1
        return model(x, gate, key, backend).logits

    train(model, forward, args, {"network": "SNN 64-200-200-10", "backend": backend.name})

if __name__ == "__main__":
    main()
