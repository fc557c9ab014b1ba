"""Exporting a trained network: ONNX and NIR graphs, parity in onnxruntime, the NIR simulators, and the
checks ``lzo-bench export`` runs. Imports nothing of cli.
"""
