"""What an update costs and what a trained network does: energy meters, the phase clock, statistics,
``profile``, the peer libraries' harness (``peers``), the workloads, NeuroBench metrics and ``evaluate``.
Imports nothing of cli.
"""
