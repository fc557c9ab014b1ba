"""The maths of the method, importing nothing above it (docs/ARCHITECTURE.md §3-§5):

- ``distributions``: the sampling distributions λ of LocalZO's ``z`` and their expected surrogates;
- ``surrogates``: surrogate functions ``g`` and their validation; ``theory``: the paper's theory
  (expected thresholds, Theorem 3's sampling tables);
- ``gates``: the three backward rules (``GateSpec``, the gate values); ``rng``: Philox draws keyed by
  (seed, update, layer, b, t, j, k);
- ``lif``: the pure-PyTorch LIF layer, the reference every backend must equal;
- ``events``: ``SpikeEvents``, spike trains as row-pointer event lists;
- ``forward``: what a forward returns and the leaky readout; ``conv``: conv geometry, pooling and the
  conv reference current; ``network``: the ``Stack`` the backends run and its dense reference path;
- ``floatcmp``: rounding bounds for comparing two float computations of one network; ``timescale``: the
  decay β against a time constant τ at step dt (β = 1 − dt/τ), and the step a NIR graph records;
- ``model``: the paper's network (``SNN``, ``NetworkSpec``) as ``lzo-bench train`` trains it.
"""
