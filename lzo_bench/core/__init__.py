"""The maths of the method, importing nothing above it: the distributions of ``z`` and their surrogates, the
theory, the three gates, Philox draws, the pure-PyTorch LIF reference, event lists, the forward's result and
readout, conv geometry, the network stack and its dense reference path, float-rounding bounds, and the
paper's network (``SNN``).
"""
