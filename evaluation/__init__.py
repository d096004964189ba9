"""The evaluators: one module per eval, each with a typed config and a typed result.

`runner.evaluate(EvalConfig(...))` runs the chosen evals of one SAE (or a sweep folder) and
writes each run into the results store (`resultstore`). `catalogue` holds the one list of metric
names with their one-line definitions; `registry` the evals by name.
"""
