"""User-facing error types shared by every layer.

Anything raised as a :class:`SaeprobeError` names the problem and the fix in one line; the
CLI prints it as ``saeprobe <command>: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import errno

__all__ = ["DiskFullError", "SaeprobeError"]


class SaeprobeError(Exception):
    """Base class of saeprobe's user-facing errors (one-line message, CLI exit code 2)."""


class DiskFullError(SaeprobeError, OSError):
    """A write ran out of space; the message names the file and the space needed.

    Also an ``OSError`` with ``errno == ENOSPC``, so generic handlers still match it.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror
