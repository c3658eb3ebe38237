"""Errors a user can cause. The CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class CaproError(Exception):
    """An expected failure with a one-line message that names the file, the row and the fix.

    ``exit_code`` is what the CLI returns: 1 for bad data or a failed run, 2 for usage errors.
    """

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CaproError):
    """Wrong command-line or config usage (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid config file, key or override."""


class DataError(CaproError):
    """Invalid dataset content (exit code 1)."""
