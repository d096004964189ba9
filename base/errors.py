"""The one exception type for mistakes a user can fix.

The command line prints a `UserError` as a single line and exits non-zero, without a
traceback; anything else is a bug and keeps its traceback. Leaf module: every package may
import it (except `kernels`, which depends on nothing and raises `ValueError`).
"""


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""


def listen_error(host: str, port: int, err: OSError) -> UserError:
    """Why a server could not listen on host:port, and what to change: the port when it is
    taken or forbidden, the host when it is not an address of this machine."""
    import errno
    import socket

    reason = err.strerror or str(err)
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
        fix = "give --host an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
    else:
        fix = "choose another --port"
    return UserError(f"cannot listen on {host}:{port} ({reason}); {fix}")


def check_host(host: str) -> None:
    """Refuse an empty listen address (it would quietly mean every interface)."""
    if not host.strip():
        raise UserError(
            "--host is empty; give an address: 127.0.0.1 (this machine only) or 0.0.0.0 (every "
            "interface)"
        )
