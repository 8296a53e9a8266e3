"""The NoiseFiT Book's shared library.

Explained in: book/contributing.md (the library table says which chapter explains each module)
and README.md (layout).
"""

__version__ = "0.1.0"
