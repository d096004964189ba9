"""The evaluators, in SAEBench's shape: one folder (or module) per eval with its typed settings,
its metrics and its run function (`spec.py` says what an eval is), behind one registry
(`registry.py`: the built-ins, plugins, the torch-free catalogue of every metric).

`runner.evaluate(EvalConfig(...))` runs the chosen evals of one SAE (or a sweep folder) and
writes each run into the results store; `compare` is the comparison table and frontiers.
"""
