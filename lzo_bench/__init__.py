"""lzo-bench: LocalZO training, measurement and export for spiking neural networks.

The public API, whose paths stay put (:data:`PUBLIC`; the layers and folders behind it are in
``docs/ARCHITECTURE.md`` §2):

- ``lzo_bench.spike``: ``Surrogate``, ``SparseGrad``, ``LocalZO``, the three rules as spike functions
  for any model (snnTorch's ``spike_grad=``, SpikingJelly's ``surrogate_function=``);
- ``lzo_bench.nn``: ``LIF``, ``ConvLIF``, ``SumPool2d``, ``Flatten``, ``LeakyReadout``, ``Sequential``,
  the event-driven sparse layers for a user's own feed-forward network, and the ways in: ``from_nir`` (a NIR
  graph), ``from_snntorch`` / ``from_spikingjelly`` (feed-forward models; ``to_snntorch`` / ``to_spikingjelly``
  copy the trained weights back);
- ``lzo_bench.core.events.SpikeEvents``: spike trains as event lists, the layers' input and output;
- ``lzo_bench.core.model``: ``SNN`` and ``NetworkSpec``, the paper's network as ``lzo-bench train`` trains it;
- ``lzo_bench.training.train.train`` with ``lzo_bench.training.config.TrainConfig``: a training run from Python;
- ``lzo_bench.training.checkpoint.load_checkpoint``: a trained run's network;
- ``lzo_bench.cli.app``: the ``lzo-bench`` typer app.
"""

__version__ = "0.1.0"

#: ``module:name`` of every public name (tests/test_layout.py imports each)
PUBLIC = (
    "lzo_bench.spike:Surrogate", "lzo_bench.spike:SparseGrad", "lzo_bench.spike:LocalZO",
    "lzo_bench.nn:LIF", "lzo_bench.nn:ConvLIF", "lzo_bench.nn:SumPool2d", "lzo_bench.nn:Flatten",
    "lzo_bench.nn:LeakyReadout", "lzo_bench.nn:Sequential", "lzo_bench.nn:from_nir",
    "lzo_bench.nn:from_snntorch", "lzo_bench.nn:from_spikingjelly", "lzo_bench.nn:to_snntorch",
    "lzo_bench.nn:to_spikingjelly",
    "lzo_bench.core.events:SpikeEvents", "lzo_bench.core.model:SNN", "lzo_bench.core.model:NetworkSpec",
    "lzo_bench.training.train:train", "lzo_bench.training.config:TrainConfig",
    "lzo_bench.training.checkpoint:load_checkpoint", "lzo_bench.cli:app",
)
