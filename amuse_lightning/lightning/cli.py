"""``amuse-lightning``: LightningCLI for AMUSE runs (``fit``, ``validate``, ``test``, ``predict``).

Examples::

    amuse-lightning fit --config fashion_mnist_resnet          # a config shipped with the package
    amuse-lightning fit --config cifar10_resnet18 --trainer.max_epochs 10
    amuse-lightning fit --config my_run.yaml                   # any path
    amuse-lightning test --config fashion_mnist_resnet --ckpt_path <run>/last.ckpt
    amuse-lightning fit --config fashion_mnist_resnet --print_config
    amuse-lightning finish --config fashion_mnist_resnet --ckpt_path <run>/last.ckpt --fraction 0.15
    amuse-lightning --version
    python -m amuse_lightning fit --config ...

Any ``LightningModule`` / ``LightningDataModule`` subclass can be named with ``class_path``
(subclass mode). What this CLI adds to plain ``LightningCLI``:

- ``--config NAME`` finds the YAML configs installed with the package (:mod:`.cli_config`).
- The parsed config is checked before anything is built (:mod:`.cli_checks`): optimizer
  arguments by the optimizer's own rules, and each model / datamodule class's
  ``check_init_args``. A setting that cannot work, and a value jsonargparse rejects, is one line
  ``amuse-lightning: error: <yaml key>: <what to change>`` and exit status 2, not a traceback
  (``AMUSE_LIGHTNING_DEBUG=1`` shows the traceback). A successful run exits with status 0.
- ``--amuse_callback`` (default true): when the model is an ``AmuseMixin`` module and the
  configured callbacks hold no :class:`~amuse_lightning.lightning.callback.AmuseCallback`, one
  ``AmuseCallback()`` is added, so validation, checkpoints and the model after ``fit`` are the
  averaged weights ``x``. Configure it under ``trainer.callbacks`` to change its settings; it is
  never added twice.
- ``--partition_report full|compact|none``: how much of the Muon/fallback partition an
  ``AmuseMixin`` model logs at fit start (default: the model's, ``compact``).
- After ``fit``: a one-paragraph summary (last and best validation accuracy of ``x``, the
  checkpoint paths, time). With ``--test_after_fit true`` the final model (``x``) is then tested
  and ``test_acc=0.xxxx`` printed; ``test`` prints the same line.
- No automatic ``--optimizer``/``--lr_scheduler`` groups: the optimizer is the model's
  ``optimizer`` argument (``--model.optimizer``), which receives the Muon/fallback param groups.

More commands: :data:`EXTRA_COMMANDS` maps a name to a :class:`Command` that :func:`main` runs
instead of LightningCLI when it is the first argument (see :func:`main`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from amuse_lightning.lightning.cli_checks import check_parsed_config
from amuse_lightning.lightning.cli_config import (
    AmuseArgumentParser,
    ConfigFileOrName,
    condense_parser_message,
    shipped_configs,
)
from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.factories import builds_schedule_free

__all__ = [
    "EXTRA_COMMANDS",
    "AmuseLightningCLI",
    "Command",
    "fit_summary",
    "main",
    "prediction_summary",
    "run_cli",
    "version_line",
]

PROG = "amuse-lightning"
DEBUG_ENV = "AMUSE_LIGHTNING_DEBUG"


@dataclass(frozen=True)
class Command:
    """A command answered beside LightningCLI: ``run(argv) -> exit status``."""

    help: str
    run: Callable[[list[str]], int]


#: Commands :func:`main` runs instead of LightningCLI when their name is the first argument;
#: ``--help`` lists them. Add one with ``EXTRA_COMMANDS["name"] = Command("...", run)``.
EXTRA_COMMANDS: dict[str, Command] = {}


def _finish(argv: list[str]) -> int:
    from amuse_lightning.lightning.finish_cli import run_finish

    return run_finish(argv)


EXTRA_COMMANDS["finish"] = Command(
    "finish a run from its checkpoint with a short cooldown (--ckpt_path, --fraction)", _finish
)


def version_line() -> str:
    """``amuse-lightning 0.1.0 (torch ..., lightning ..., timm ...)``."""
    from importlib.metadata import PackageNotFoundError, version

    import amuse_lightning

    found = []
    for name in ("torch", "lightning", "timm"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return f"{PROG} {amuse_lightning.__version__} ({', '.join(found)})"


def description() -> str:
    """The text ``amuse-lightning --help`` starts with."""
    lines = [
        "Train and evaluate LightningModules with AMUSE: Muon updates for hidden matrices, "
        "Schedule-Free averaging, no learning-rate schedule. Validation, test, predict and "
        "checkpoints see the averaged model x.",
        f"Configs shipped with the package (--config NAME): {', '.join(shipped_configs())}.",
    ]
    if EXTRA_COMMANDS:
        more = "; ".join(f"{name}: {cmd.help}" for name, cmd in sorted(EXTRA_COMMANDS.items()))
        lines.append(f"More commands ({PROG} NAME --help): {more}.")
    return "\n".join(lines)


def _has_amuse_callback(callbacks: list[Callback]) -> bool:
    from amuse_lightning.lightning.callback import AmuseCallback

    return any(isinstance(cb, AmuseCallback) for cb in callbacks)


def _as_list(callbacks: Any) -> list[Callback]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def _metric(value: Any) -> float | None:
    return None if value is None else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_metric(trainer: Trainer) -> str:
    """The validation metric the summary reports: the first monitored ``ModelCheckpoint``'s
    monitor, else ``val_acc`` (classifiers) or ``val_loss`` (language models), whichever exists."""
    for checkpoint in trainer.checkpoint_callbacks:
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor is not None:
            return checkpoint.monitor
    metrics = trainer.callback_metrics
    return next((key for key in ("val_acc", "val_loss") if key in metrics), "val_acc")


def fit_summary(trainer: Trainer, seconds: float | None = None, monitor: str | None = None) -> str:
    """One paragraph: steps, last ``monitor`` of the averaged model, best and latest checkpoints.

    ``monitor`` defaults to :func:`summary_metric`. A ``ModelCheckpoint`` with a monitor reports
    its best score and file; one without a monitor holds the latest (anytime) model;
    ``save_last`` files are listed as well.
    """
    monitor = monitor or summary_metric(trainer)
    last = _metric(trainer.callback_metrics.get(monitor))
    parts = [
        f"Fit finished after {trainer.current_epoch} epochs / {trainer.global_step} steps"
        + ("" if seconds is None else f" in {seconds:.0f} s")
        + f"; last {monitor} (averaged model x) = {_fmt(last)}"
    ]
    for checkpoint in trainer.checkpoint_callbacks:
        if not isinstance(checkpoint, ModelCheckpoint):
            continue
        if checkpoint.monitor is not None and checkpoint.best_model_path:
            best = _metric(checkpoint.best_model_score)
            parts.append(
                f"best {checkpoint.monitor} = {_fmt(best)} in {checkpoint.best_model_path}"
            )
        elif checkpoint.best_model_path:
            parts.append(f"anytime checkpoint (x at the end): {checkpoint.best_model_path}")
        if checkpoint.last_model_path:
            parts.append(f"save_last checkpoint: {checkpoint.last_model_path}")
    return "; ".join(parts) + "."


def prediction_summary(predictions: Any) -> str:
    """``predicted N samples`` (+ ``predict_acc=0.xxxx`` for ``{"preds", "target"}`` batches)."""
    batches = [b for b in (predictions or []) if isinstance(b, dict) and "preds" in b]
    if not batches:
        return f"predicted {len(predictions or [])} batches"
    count = sum(len(b["preds"]) for b in batches)
    line = f"predicted {count} samples"
    if all("target" in b for b in batches):
        correct = sum(int((b["preds"] == b["target"]).sum()) for b in batches)
        line += f"; predict_acc={correct / count:.4f}"
    return line


class AmuseLightningCLI(LightningCLI):
    """LightningCLI in subclass mode with the AMUSE defaults described in the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", AmuseArgumentParser)
        kwargs.setdefault("parser_kwargs", {"prog": PROG, "description": description()})
        self._fit_started: float | None = None
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
        """Parse, then check the config before anything is built (see :mod:`.cli_checks`)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_parsed_config(self.config[subcommand] if subcommand else self.config)

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
        configured = _as_list(self._get(self.config_init, "trainer", default={}).get("callbacks"))
        if self._wants_amuse_callback(configured):
            from amuse_lightning.lightning.callback import AmuseCallback

            kwargs["callbacks"] = [*configured, AmuseCallback()]
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
    :class:`AmuseLightningCLI` (e.g. ``run=False``).
    """
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return AmuseLightningCLI(LightningModule, LightningDataModule, args=args, **kwargs)


def main(args: list[str] | None = None) -> int:
    """The ``amuse-lightning`` command: the exit status (0 after a successful run).

    The first argument picks the command: a name in :data:`EXTRA_COMMANDS` runs that command
    with the remaining arguments; anything else goes to LightningCLI (``fit``, ``validate``,
    ``test``, ``predict``, ``--help``, ``--version``). A :class:`ConfigError` (a setting the
    user can change) is printed as one line and gives status 2; parse errors exit with 2 from
    the parser; other exceptions propagate with their traceback.
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return EXTRA_COMMANDS[argv[0]].run(argv[1:])
        run_cli(None if args is None else argv)
    except ConfigError as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
