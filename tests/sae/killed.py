"""A data source that dies like a killed process, for the resume tests."""

from __future__ import annotations


class KilledAfter:
    """Yields the source's batches, then raises KeyboardInterrupt after `n` of them."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __iter__(self):
        for i, batch in enumerate(self.source):
            if i == self.n:
                raise KeyboardInterrupt
            yield batch
