"""Output paths checked before any work, and operating-system write failures, as one-line
`UserError`s (leaf module, like `errors`)."""

from __future__ import annotations

import errno
from pathlib import Path

from saelab.base.errors import UserError


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


def check_output_file(path: str | Path, what: str, example: str) -> Path:
    """Refuse, before any work, an output file path that names a folder or lies under a file.
    `example` is a file name to suggest inside a folder (e.g. "circuit.html")."""
    if not str(path).strip():
        raise UserError(f"the path of {what} is empty; give a file name, such as {example}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name, such as {path / example}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write {what} {path}: {parent} is a file, not a folder")
            break
    return path
