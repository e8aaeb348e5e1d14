"""``amuse-lightning``: the command's entry point, :func:`main`.

Examples::

    amuse-lightning fit --config fashion_mnist_resnet          # a config shipped with the package
    amuse-lightning fit --config cifar10_resnet18 --trainer.max_epochs 10
    amuse-lightning fit --config my_run.yaml                   # any path
    amuse-lightning test --config fashion_mnist_resnet --ckpt_path <run>/last.ckpt
    amuse-lightning fit --config fashion_mnist_resnet --print_config
    amuse-lightning finish --ckpt_path <run>/checkpoints/last.ckpt --fraction 0.15
    amuse-lightning plot <run>                                 # <run>/metrics.png
    amuse-lightning --version
    python -m amuse_lightning fit --config ...

The first argument picks the command: ``fit``, ``validate``, ``test`` and ``predict`` go to the
LightningCLI of :mod:`.lightning_cli`; a name in :data:`EXTRA_COMMANDS` (``finish``, ``plot``)
runs that command with the remaining arguments; ``--version`` answers from installed metadata
without importing torch. This module imports nothing heavy at load time: each command's module
is imported when the command runs (imports go one way, from here down to the commands and from
them to the Lightning layer).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from amuse_lightning.cli.about import LIGHTNING_COMMANDS, PROG, version_line
from amuse_lightning.lightning.errors import ConfigError, did_you_mean

__all__ = ["DEBUG_ENV", "EXTRA_COMMANDS", "Command", "main"]

#: ``AMUSE_LIGHTNING_DEBUG=1`` shows the traceback of a one-line error.
DEBUG_ENV = "AMUSE_LIGHTNING_DEBUG"


@dataclass(frozen=True)
class Command:
    """A command answered beside LightningCLI: ``run(argv) -> exit status``."""

    help: str
    run: Callable[[list[str]], int]


def _finish(argv: list[str]) -> int:
    from amuse_lightning.cli.finish import run_finish

    return run_finish(argv)


def _plot(argv: list[str]) -> int:
    from amuse_lightning.cli.plot import run_plot

    return run_plot(argv)


#: Commands :func:`main` runs instead of LightningCLI when their name is the first argument;
#: ``--help`` lists them. Add one with ``EXTRA_COMMANDS["name"] = Command("...", run)``.
EXTRA_COMMANDS: dict[str, Command] = {
    "finish": Command(
        "finish a run from its checkpoint with a short cooldown (--ckpt_path, --fraction)", _finish
    ),
    "plot": Command("plot a run's metrics.csv to a PNG (validation of x, loss, lr)", _plot),
}


def _unknown_command(word: str) -> str:
    names = [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]
    hint = did_you_mean(word, names) or f"; the commands are {', '.join(names)}"
    return f"unknown command {word!r}{hint}"


def main(args: list[str] | None = None) -> int:
    """The ``amuse-lightning`` command; returns the exit status (0 after a successful run).

    A :class:`~amuse_lightning.lightning.errors.ConfigError` (a setting the user can change) is
    printed as one line ``amuse-lightning: error: ...`` and gives status 2, as do parse errors
    (from the parser); other exceptions propagate with their traceback.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["--version"]:
        print(version_line(), flush=True)
        return 0
    try:
        if not argv:
            names = ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
            raise ConfigError(f"name a command: {names} ({PROG} --help says more)")
        if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
            command = EXTRA_COMMANDS.get(argv[0])
            if command is None:
                raise ConfigError(_unknown_command(argv[0]))
            return command.run(argv[1:])
        from amuse_lightning.cli.lightning_cli import run_cli

        run_cli(argv, commands={name: cmd.help for name, cmd in EXTRA_COMMANDS.items()})
    except ConfigError as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
