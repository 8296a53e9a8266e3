"""The NoiseFiT Book's shared library."""

__version__ = "0.1.0"
