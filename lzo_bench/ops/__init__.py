"""The ``lzo`` C++/CUDA event ops from Python: the JIT build and fake kernels (``extension``), the whole
network's autograd node over them (``event_network``), the choice of backend (``backends``) and the GPU
self-check (``selfcheck``). The sources live in ``kernels/``. Imports nothing of training, measure, export
or cli.
"""
