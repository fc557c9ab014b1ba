"""Exporting a trained network (docs/ARCHITECTURE.md §8); imports nothing of cli: ``source`` (what
is exported and its model card), ``onnx_model`` (the ONNX graph with a ``Scan`` over time),
``nir_graph`` (the NIR graph and its read-back), ``parity`` (parity and latency in onnxruntime),
``nir_sim`` (NIR graphs simulated through nirtorch) and ``run`` (the checks ``lzo-bench export`` runs).
"""
