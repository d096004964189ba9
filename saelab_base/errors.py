"""The one exception type for mistakes a user can fix.

The command line prints a `UserError` as a single line and exits non-zero, without a
traceback; anything else is a bug and keeps its traceback. Leaf module: every package may
import it (except `kernels`, which depends on nothing and raises `ValueError`).
"""


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""
