"""saelab: sparse autoencoders on language-model activations, end to end."""

from saelab_base import __version__

__all__ = ["__version__"]
