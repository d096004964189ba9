"""Steering with SAE latents, measured beside the DiffMean baseline and the unsteered model.

`interventions` (hook edits as context managers), `generate` (KV-cached sampling that keeps
steering generated tokens), `metrics`, `diffmean`, `harness` (one harness for every method),
`target` (the SAE, model and hook from the results store), `run` (`SteerConfig`, `steer`).
"""
