"""``lzo_bench.nn``: the event-driven sparse layers for a user's own feed-forward network, and the ways
in for networks written elsewhere (docs/your-model.md, "Bring your own network"):

- ``layers``: ``LIF``, ``ConvLIF``, ``SumPool2d``, ``Flatten``, ``LeakyReadout`` and ``Sequential``, which
  runs them on the C++/CUDA event ops (or the pure-PyTorch reference);
- ``from_nir``: a NIR graph (``Affine``/``Linear``, ``Conv2d``, pooling, ``Flatten``, ``LIF``, ``IF``, ``LI``)
  as a ``Sequential``, refusing in one line what these layers cannot run;
- ``from_libraries``: feed-forward snnTorch and SpikingJelly ``torch.nn.Sequential`` models as a
  ``Sequential`` (``from_snntorch``, ``from_spikingjelly``) and its trained weights copied back into them
  (``to_snntorch``, ``to_spikingjelly``).
"""

from lzo_bench.nn.from_libraries import from_snntorch, from_spikingjelly, to_snntorch, to_spikingjelly
from lzo_bench.nn.from_nir import from_nir
from lzo_bench.nn.layers import LIF, ConvLIF, Flatten, LeakyReadout, Sequential, SumPool2d

__all__ = ["LIF", "ConvLIF", "SumPool2d", "Flatten", "LeakyReadout", "Sequential", "from_nir",
           "from_snntorch", "from_spikingjelly", "to_snntorch", "to_spikingjelly"]
