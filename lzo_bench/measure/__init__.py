"""What an update costs and what a trained network does; imports nothing of cli:
``energy`` (the ``Meter`` protocol: NVML, RAPL, the null meter; ``open_meter``), ``energy_windows`` (the
energy-window protocol), ``timing`` (the phase clock and the one timed update), ``stats`` (medians and
spreads), ``profile`` (``lzo-bench profile``), ``peer_models`` (snnTorch, SpikingJelly and Norse
adapters) and ``peers`` (their timing harness), ``workloads`` (the datasets' shapes and constants),
``nbmetrics`` (NeuroBench metrics) and ``evaluate`` (``lzo-bench evaluate``).
"""
