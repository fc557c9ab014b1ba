"""Training a network: the update loop (``train``), its configuration and limits, the run folder and
checkpoints.
"""
