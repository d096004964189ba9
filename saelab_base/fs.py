"""Operating-system write failures as one-line `UserError`s (leaf module, like `errors`)."""

from __future__ import annotations

import errno

from saelab_base.errors import UserError


def disk_error(err: OSError, where: str) -> UserError:
    """The `UserError` for a failed write at `where`: a full disk says so; what was saved
    before (committed chunks, the last checkpoint) is untouched by the caller's protocol."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"the disk is full: writing {where} failed; everything written before is kept, "
            "free some space and resume"
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {where}: permission denied or read-only")
    return UserError(f"cannot write {where}: {err.strerror or err}")
