"""User errors: the failures a user causes and can fix, printed as one ``error: ...`` line (exit 2).

Everything a user can get wrong -- a bad data row, a missing file or folder, an unreachable hub, a bad
export folder, a bad flag value -- raises a ``UserError`` (or an ``OSError`` that names its file).
``__main__`` turns those into a short message and exit code; ``--debug`` or ``EMOTIONS_DEBUG=1`` shows
the traceback instead. Any other exception is a bug and raises normally.
"""

from __future__ import annotations

import os

DEBUG_ENV = "EMOTIONS_DEBUG"


class UserError(Exception):
    """A failure the user can fix; the message names the file, row, field or flag."""

    exit_code = 2


class CheckFailed(UserError):
    """A check the artifact had to pass did not (parity, the promotion gate): exit 1, nothing published."""

    exit_code = 1


# OSErrors that are about the user's paths, not about the program.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes"}


def user_message(error: BaseException) -> tuple[str, int] | None:
    """``(message, exit code)`` for a user error, ``None`` for a programming error."""
    if isinstance(error, UserError):
        return str(error), error.exit_code
    if isinstance(error, USER_OS_ERRORS):
        if error.filename is None:
            return str(error), 2
        return f"{error.filename}: {error.strerror or error}", 2
    return None
