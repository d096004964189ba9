"""saelab's leaf: the version and the error type. Every layer may import it; it imports nothing
from the project (saelab_kernels, which depends on nothing, raises `ValueError` instead)."""

__version__ = "0.1.0"
