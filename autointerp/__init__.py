"""Auto-interpretation: explain latents with an LLM and score the explanations.

Reads feature examples from the results store, talks to any OpenAI-compatible endpoint through
`client` (the only module that does), and writes explanations and scores with intervals and
provenance back to the store. Entry point: `pipeline.explain_features`; explainers and scorers
by name in `registry`.
"""
