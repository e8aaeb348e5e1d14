"""Errors a user causes through a setting, and the closest-name hint they carry.

:class:`ConfigError` marks a setting the user can change: the ``amuse-lightning`` command prints
it as one line (``error: <key>: <what to change>``) and exits with status 2 instead of showing a
traceback. It is a ``ValueError``, so Python callers catch it like any argument error. ``key``
is the name of the setting where the raiser knows it; the CLI prefixes the section it came from
(``model.init_args.`` ...), so the line names the YAML key.

Plain Python, no Lightning import: the examples and the CLI share it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ConfigError", "DataNotFoundError", "did_you_mean"]


class ConfigError(ValueError):
    """A setting the user can fix; ``str(err)`` is ``"<key>: <message>"`` (or the message)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` in front of its key (``model.init_args`` + ``lr``)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        error = type(self)(self.message, key)
        error.__cause__ = self.__cause__
        return error

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class DataNotFoundError(ConfigError, FileNotFoundError):
    """A data folder or file the settings point at is missing (also a ``FileNotFoundError``)."""


def did_you_mean(word: str, options: Iterable[str], count: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the options closest to ``word``, else ``""``."""
    matches = difflib.get_close_matches(word, list(options), n=count, cutoff=0.6)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"
