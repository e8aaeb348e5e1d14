"""The ``amuse-lightning`` command, on top of the Lightning layer.

``main`` (:mod:`.commands`) is the console script: it dispatches ``fit | validate | test |
predict`` to the LightningCLI of :mod:`.lightning_cli` and ``finish`` / ``plot`` to
:mod:`.finish` / :mod:`.plot`, and answers ``--version`` (:mod:`.about`) without importing torch.
:mod:`.config` resolves shipped configs by name and makes parser errors one line,
:mod:`.checks` checks a parsed config before anything is built, :mod:`.summary` and
:mod:`.quiet` shape what a run prints.

Imports go one way: this package uses ``amuse_lightning.lightning`` (and the layers below it);
nothing below imports it. Importing it loads no torch; the names other than ``main`` are
resolved on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amuse_lightning._lazy import lazy_names
from amuse_lightning.cli.commands import EXTRA_COMMANDS, Command, main

__all__ = [
    "EXTRA_COMMANDS",
    "AmuseLightningCLI",
    "Command",
    "fit_summary",
    "main",
    "prediction_summary",
    "run_cli",
]

_LAZY: dict[str, str] = {
    "AmuseLightningCLI": "amuse_lightning.cli.lightning_cli",
    "run_cli": "amuse_lightning.cli.lightning_cli",
    "fit_summary": "amuse_lightning.cli.summary",
    "prediction_summary": "amuse_lightning.cli.summary",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from amuse_lightning.cli.lightning_cli import AmuseLightningCLI, run_cli
    from amuse_lightning.cli.summary import fit_summary, prediction_summary


__getattr__, __dir__ = lazy_names("amuse_lightning.cli", _LAZY, globals())
