"""lzo-bench: LocalZO training, measurement and export for spiking neural networks."""

__version__ = "0.1.0"
