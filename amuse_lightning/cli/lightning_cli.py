"""The LightningCLI behind ``amuse-lightning fit | validate | test | predict``.

Any ``LightningModule`` / ``LightningDataModule`` subclass can be named with ``class_path``
(subclass mode). What :class:`AmuseLightningCLI` adds to plain ``LightningCLI``:

- ``--config NAME`` finds the YAML configs installed with the package (:mod:`.config`).
- The parsed config is checked before anything is built (:mod:`.checks`): optimizer
  arguments by the optimizer's own rules, and each model / datamodule class's
  ``check_init_args``. A setting that cannot work, and a value jsonargparse rejects, is a
  :class:`~amuse_lightning.lightning.errors.ConfigError` naming the YAML key (one line and
  exit status 2 from the command).
- ``--amuse_callback`` (default true): when the model is an ``AmuseMixin`` module and the
  configured callbacks hold no :class:`~amuse_lightning.lightning.callback.AmuseCallback`, one
  ``AmuseCallback()`` is added, so validation, checkpoints and the model after ``fit`` are the
  averaged weights ``x``. It is never added twice.
- ``--partition_report full|compact|none``: how much of the Muon/fallback partition an
  ``AmuseMixin`` model logs at fit start (default: the model's, ``compact``).
- Output (:mod:`.summary`, :mod:`.quiet`): a line per epoch; the progress bar only when stdout
  is a terminal (unless ``trainer.enable_progress_bar`` is set); after ``fit`` a one-paragraph
  summary (last and best validation metric of ``x``, the checkpoint paths, time) and where the
  metrics went. With ``--test_after_fit true`` the final model (``x``) is then tested and
  ``test_acc=0.xxxx`` printed; ``test`` prints the same line.
- No automatic ``--optimizer``/``--lr_scheduler`` groups: the optimizer is the model's
  ``optimizer`` argument (``--model.optimizer``), which receives the Muon/fallback param groups.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from amuse_lightning.cli.about import LIGHTNING_COMMANDS, PROG, version_line
from amuse_lightning.cli.callback_overrides import override_callbacks, split_callback_overrides
from amuse_lightning.cli.checks import check_parsed_config
from amuse_lightning.cli.config import (
    AmuseArgumentParser,
    ConfigFileOrName,
    condense_parser_message,
    shipped_configs,
)
from amuse_lightning.cli.quiet import quiet_lightning
from amuse_lightning.cli.summary import (
    EpochSummary,
    fit_summary,
    metrics_note,
    prediction_summary,
    stdout_is_terminal,
)
from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.factories import builds_schedule_free

__all__ = ["AmuseLightningCLI", "description", "run_cli", "usage"]


def description(commands: Mapping[str, str] | None = None) -> str:
    """The text ``amuse-lightning --help`` starts with; ``commands`` (name -> help) are the
    commands answered beside LightningCLI's."""
    lines = [
        "Train and evaluate LightningModules with AMUSE: Muon updates for hidden matrices, "
        "Schedule-Free averaging, no learning-rate schedule. Validation, test, predict and "
        "checkpoints see the averaged model x.",
        f"Configs shipped with the package (--config NAME): {', '.join(shipped_configs())}.",
    ]
    if commands:
        more = "; ".join(f"{name}: {text}" for name, text in sorted(commands.items()))
        lines.append(f"More commands ({PROG} NAME --help): {more}.")
    return "\n".join(lines)


def usage(commands: Iterable[str] = ()) -> str:
    """The top-level usage line, naming every command (LightningCLI's and ``commands``)."""
    names = ",".join([*LIGHTNING_COMMANDS, *commands])
    return f"{PROG} [-h] [-c CONFIG] [--print_config[=flags]] [--version] {{{names}}} ..."


def _has_amuse_callback(callbacks: list[Callback]) -> bool:
    from amuse_lightning.lightning.callback import AmuseCallback

    return any(isinstance(cb, AmuseCallback) for cb in callbacks)


def _as_list(callbacks: Any) -> list[Callback]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


class AmuseLightningCLI(LightningCLI):
    """LightningCLI in subclass mode with the AMUSE defaults described in the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", AmuseArgumentParser)
        commands = dict(kwargs.pop("commands", None) or {})
        kwargs.setdefault(
            "parser_kwargs",
            {"prog": PROG, "description": description(commands), "usage": usage(commands)},
        )
        self._before_build = kwargs.pop("before_build", None)
        self._fit_started: float | None = None
        quiet_lightning()
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, with ``--config`` also taking the name of a shipped config."""
        import lightning.pytorch as pl

        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ConfigFileOrName,
            help="A YAML/JSON config: a path, or the name of a config shipped with the package "
            f"({', '.join(shipped_configs())}).",
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument("--version", action="version", version=version_line())
        if not add_subcommands:  # run=False (``finish``): a config saved or printed by ``fit``
            # carries fit's own arguments; accept them so the same file builds the run
            for key, kind in (("ckpt_path", str | None), ("weights_only", bool | None)):
                help_text = "read by fit; not used without a subcommand"
                self.parser.add_argument(f"--{key}", type=kind, default=None, help=help_text)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check the config before anything is built (see :mod:`.checks`)."""
        # LightningCLI warns when both ``args`` and ``sys.argv`` hold arguments; ``main`` always
        # hands over its own share of the command line, so that warning would only be noise
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(self._with_callback_overrides(parser, args))
        subcommand = self.config.get("subcommand")
        check_parsed_config(self.config[subcommand] if subcommand else self.config)

    @staticmethod
    def _with_callback_overrides(parser: LightningArgumentParser, args: Any) -> list[str]:
        """``args`` with ``--trainer.callbacks.<Class or position>.<arg>=<value>`` turned into
        one ``--trainer.callbacks=[...]`` (see :mod:`.callback_overrides`)."""
        args = list(sys.argv[1:] if args is None else args)
        rest, overrides = split_callback_overrides(args)
        if not overrides or any(a in ("-h", "--help") for a in rest):
            return rest
        first = parser.parse_args([a for a in rest if not a.startswith("--print_config")])
        subcommand = first.get("subcommand")
        section = first[subcommand] if subcommand else first
        callbacks = override_callbacks(section.get("trainer.callbacks"), overrides)
        return [*rest, f"--trainer.callbacks={json.dumps(callbacks, default=str)}"]

    def before_instantiate_classes(self) -> None:
        """Run the caller's ``before_build(config)`` check (e.g. ``finish``: the config's model
        class against the checkpoint's) after parsing and before anything is built."""
        if self._before_build is not None:
            subcommand = self.config.get("subcommand")
            self._before_build(self.config[subcommand] if subcommand else self.config)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a ``ValueError`` or Lightning's
        ``MisconfigurationException`` from a constructor is a :class:`ConfigError`."""
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except (ValueError, MisconfigurationException) as err:
            reason = condense_parser_message(str(err))
            raise ConfigError(f"the config cannot be built: {reason}") from err

    def after_instantiate_classes(self) -> None:
        from amuse_lightning.lightning.mixin import AmuseMixin

        report = self._setting("partition_report")
        if report is not None and isinstance(self.model, AmuseMixin):
            self.model.partition_report = report

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--amuse_callback",
            type=bool,
            default=True,
            help="Add AmuseCallback() when the model is an AmuseMixin and none is configured.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the final (averaged) model and print test_acc=0.xxxx.",
        )
        parser.add_argument(
            "--partition_report",
            type=Literal["full", "compact", "none"] | None,
            default=None,
            help="How much of the Muon/fallback partition an AmuseMixin model logs at fit "
            "start: one row per tensor, per kind of tensor, or nothing (default: the model's "
            "partition_report, 'compact').",
        )

    def _setting(self, key: str) -> Any:
        return self._get(self.config, key)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured Trainer, plus one ``AmuseCallback`` where wanted (see the module
        docstring) and the per-epoch summary line; the progress bar is off when stdout is not a
        terminal and ``trainer.enable_progress_bar`` was left unset."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        configured = _as_list(trainer_config.get("callbacks"))
        added: list[Callback] = []
        if self._wants_amuse_callback(configured):
            from amuse_lightning.lightning.callback import AmuseCallback

            added.append(AmuseCallback())
        if self.subcommand == "fit":
            added.append(EpochSummary())
        if added:
            kwargs["callbacks"] = [*configured, *added]
        if trainer_config.get("enable_progress_bar") is None and not stdout_is_terminal():
            kwargs["enable_progress_bar"] = False
        return super().instantiate_trainer(**kwargs)

    def _wants_amuse_callback(self, configured: list[Callback]) -> bool:
        from amuse_lightning.lightning.mixin import AmuseMixin

        if not self._setting("amuse_callback") or not isinstance(self.model, AmuseMixin):
            return False
        if not builds_schedule_free(self.model.optimizer):
            return False  # e.g. a torch.optim.AdamW baseline: there is no x to swap in
        extra = [
            self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys
        ]
        return not _has_amuse_callback(configured + extra)

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        seconds = None if self._fit_started is None else time.perf_counter() - self._fit_started
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, seconds), flush=True)
            note = metrics_note(self.trainer)
            if note is not None:
                print(note, flush=True)
        if self._setting("test_after_fit") and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule)
            self.after_test()

    def predict(self, **kwargs: Any) -> None:
        """``trainer.predict``; keeps the outputs in ``self.predictions`` and prints a summary
        (with the accuracy when the predictions carry targets, as the example modules' do)."""
        self.predictions = self.trainer.predict(**kwargs)
        if self.trainer.is_global_zero:
            print(prediction_summary(self.predictions), flush=True)

    def after_test(self) -> None:
        acc = self.trainer.callback_metrics.get("test_acc")
        if acc is not None and self.trainer.is_global_zero:
            print(f"test_acc={float(acc):.4f}", flush=True)


def run_cli(args: Any = None, **kwargs: Any) -> AmuseLightningCLI:
    """Run the CLI and return it (for Python callers and tests); errors propagate.

    ``args`` as for ``LightningCLI`` (``None``: ``sys.argv``); ``kwargs`` go to
    :class:`AmuseLightningCLI` (e.g. ``run=False``; ``commands``: name -> help of the commands
    answered beside LightningCLI's, for ``--help``; ``before_build``: a check of the parsed
    config run before anything is built).
    """
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return AmuseLightningCLI(LightningModule, LightningDataModule, args=args, **kwargs)
