"""saelab circuits: the SAE-spliced model (`splice`), contrastive tasks (`tasks`), node
attribution (`attribution`, `nodes`), direct-effect edges (`edges`), faithfulness, completeness
and measured edges (`evaluate`), the HTML graph (`graph`) and the end-to-end `run.run_circuit`.
Submodules are imported explicitly (no torch at package import)."""
