"""One module per SAE architecture; `sae.registry` maps names to them."""
