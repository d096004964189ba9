"""Offline labelled text data for the disentanglement evals (SCR, TPP, SHIFT), and the model
activations of any list of texts.

Two data sets, each with the structure of the hub data set SAEBench uses and a generated
stand-in (no network needed):

- `bios` (Bias in Bios, `LabHC/bias_in_bios`): biographies labelled with a profession and a
  gender. `bios_texts(profession, gender, n, part=, seed=, path=)` gives n texts of one
  (profession, gender) quadrant; `bios_dataset(split="biased"|"balanced", ...)` a biased split
  (profession and gender perfectly correlated) or a balanced one, as `LabelledTexts`.
- `reviews` (Amazon reviews, `canrager/amazon_reviews_mcauley_1and5`): product reviews labelled
  with a category and a rating (1.0 or 5.0). `review_texts(category, rating, n, ...)` and
  `reviews_dataset(split=..., ...)` mirror the bios functions.

`path=None` generates the stand-in; `path=` a local copy of the original (the original's columns,
see each module) read with `read_table`. `part` is "train" or "test": the two never share a
generated text (a text's hash decides its part) or a row of a local copy.

`text_acts`: `pooled_activations(model, texts, hook)` (mean over real tokens, not BOS or
padding) and `token_activations(model, texts, hook)` (every real token, flat, with offsets).
"""

from __future__ import annotations

from saelab.evaluation.datasets.common import LabelledTexts, read_table

__all__ = ["LabelledTexts", "read_table"]
