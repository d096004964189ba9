"""saelab's leaf (`saelab.base`): the version, the error type (`errors`), the configs' field
checks (`config`) and output-path checks (`fs`). Every layer may import it; it imports nothing
from the project (`saelab.kernels`, which depends on nothing, raises `ValueError` instead)."""

__version__ = "0.1.0"
