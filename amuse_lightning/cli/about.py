"""What the command is: its name, the commands LightningCLI answers, and ``--version``.

Plain Python with no heavy import. The other libraries' versions come from their installed
metadata (``importlib.metadata``), not from importing them, so ``--version`` answers in a
fraction of a second.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import amuse_lightning

__all__ = ["LIGHTNING_COMMANDS", "PROG", "REPORTED", "version_line"]

PROG = "amuse-lightning"

#: The commands LightningCLI answers (the ``Trainer`` methods).
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

#: The libraries whose versions ``--version`` reports beside the package's own.
REPORTED = ("torch", "lightning", "timm")


def version_line() -> str:
    """``amuse-lightning 0.1.0 (torch ..., lightning ..., timm ...)``: the running package's
    version and the installed versions of the libraries it runs on."""
    found = []
    for name in REPORTED:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return f"{PROG} {amuse_lightning.__version__} ({', '.join(found)})"
