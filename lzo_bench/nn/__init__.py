"""``lzo_bench.nn``: the event-driven sparse layers for a user's own feed-forward network, and the ways
in for networks written elsewhere (docs/your-model.md, "Bring your own network"):

- ``layers``: ``LIF``, ``ConvLIF``, ``SumPool2d``, ``Flatten``, ``LeakyReadout`` and ``Sequential``, which
  runs them on the C++/CUDA event ops (or the pure-PyTorch reference);
- ``from_nir``: a NIR graph (``Affine``/``Linear``, ``Conv2d``, pooling, ``Flatten``, ``LIF``, ``IF``, ``LI``)
  as a ``Sequential``, refusing in one line what these layers cannot run;
"""

from lzo_bench.nn.layers import LIF, ConvLIF, Flatten, LeakyReadout, Sequential, SumPool2d
from lzo_bench.nn.from_nir import from_nir

__all__ = ["LIF", "ConvLIF", "SumPool2d", "Flatten", "LeakyReadout", "Sequential", "from_nir"]
