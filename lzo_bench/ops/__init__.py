"""The ``lzo`` C++/CUDA event ops from Python (sources in ``kernels/``; docs/ARCHITECTURE.md §6):
``extension`` (the JIT build), ``library`` (one typed wrapper per op beside its fake kernel, the gate's
arguments), ``event_network`` (the whole network's autograd node over the ops), ``backends`` (which
implementation runs: cuda → cpp → torch) and ``selfcheck`` (the ops checked against the reference on a
GPU before the first update). Imports nothing of training, measure, export, experiments or cli.
"""
