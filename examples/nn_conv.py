"""A convolutional network of ``lzo_bench.nn`` layers on the embedded digits (1×8×8 frames): two
``ConvLIF`` layers with a sum pooling between them, flattened into a hidden ``LIF`` layer and the
leaky readout (91 % test after the default 5 epochs, localzo, seed 0).

    python examples/nn_conv.py --rule localzo      # or sparsegrad, surrogate

Spikes travel as events over (y, x, channel) units between the layers and the C++ event ops run
them: a sparse rule's backward touches only the active neurons, its conv weight gradient summed from
the input trace at each active entry's receptive field. Prints one JSON line.
"""

from __future__ import annotations

from _digits import cpu_backend, nn_example, train

from lzo_bench import nn


def main() -> None:
    args, g, rule = nn_example(__doc__)
    net = nn.Sequential(
        nn.ConvLIF(1, 16, 3, padding=1, beta=0.905, rule=rule(args.seed), init_gain=40.0, generator=g),
        nn.SumPool2d(2),
        nn.ConvLIF(16, 32, 3, padding=1, beta=0.905, rule=rule(args.seed + 1), init_gain=20.0, generator=g),
        nn.Flatten(),
        nn.LIF(32 * 4 * 4, 200, beta=0.905, rule=rule(args.seed + 2), init_gain=40.0, generator=g),
        nn.LeakyReadout(200, 10, beta=0.905, bias=True, init_gain=40.0, generator=g),
        input_shape=(1, 8, 8),
    )
    train(net, net, args, {"network": "nn.Sequential conv 1-16 (3x3) pool 2, conv 16-32 (3x3), 512-200-10",
                           "backend": cpu_backend(net)})


if __name__ == "__main__":
    main()
