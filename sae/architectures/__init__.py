"""One module per SAE architecture; `saelab.sae.registry.BUILTIN` lists them."""
