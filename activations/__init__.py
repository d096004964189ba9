"""Activations: model loading, corpora, the harvester that writes zarr, and the training loader.

Knows nothing about SAEs. Heavy imports (transformer-lens, datasets, zarr) happen inside the
functions that need them, so `import saelab.activations` is cheap.
"""
