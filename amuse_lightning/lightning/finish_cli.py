"""``amuse-lightning finish``: finish a checkpointed run with a short cooldown.

Example (the same config as the run, then the checkpoint to finish)::

    amuse-lightning finish --config fashion_mnist_resnet --ckpt_path <run>/last.ckpt \\
        --fraction 0.2 --output finished.ckpt

The finisher's own options are read first (:func:`finish_parser`); everything else
(``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``) builds the model, the data and the
Trainer options exactly as for ``fit``. The run resumes from the checkpoint as a cooldown
(:func:`~amuse_lightning.lightning.finish.finish_checkpoint`), BatchNorm statistics are
re-estimated at the finished weights, the finished model is written as a normal Lightning
checkpoint and validated. The source checkpoint is only read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from amuse_lightning.averaging.finisher import (
    COOLDOWN_SHAPES,
    COOLDOWN_STARTS,
    DEFAULT_FRACTION,
    DEFAULT_LR_FACTOR,
)
from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.finish import finish_checkpoint

__all__ = ["TRAINER_OPTIONS", "finish_parser", "run_finish"]

#: The run's Trainer arguments the cooldown keeps (how and where it computes); the rest (steps,
#: validation, logging, checkpointing, callbacks) is the finisher's.
TRAINER_OPTIONS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "accumulate_grad_batches",
    "gradient_clip_val", "gradient_clip_algorithm", "deterministic", "benchmark",
    "default_root_dir", "use_distributed_sampler", "enable_progress_bar", "enable_model_summary",
)  # fmt: skip


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text}")


def finish_parser() -> argparse.ArgumentParser:
    """The finisher's own options (the rest of the command line goes to the run's config)."""
    parser = argparse.ArgumentParser(
        prog="amuse-lightning finish",
        description="Finish an AMUSE run from a checkpoint with a short cooldown (the learning "
        "rate decayed to zero from the run's rate) and write the finished model as a new "
        "checkpoint. Pass the run's --config (and overrides) as for fit.",
    )
    parser.add_argument("--ckpt_path", required=True, help="full checkpoint of the run")
    parser.add_argument(
        "--fraction",
        type=_fraction,
        default=DEFAULT_FRACTION,
        help=f"cooldown length as a fraction of the run's steps (default {DEFAULT_FRACTION})",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="cooldown length in optimizer steps (overrides --fraction)",
    )
    parser.add_argument(
        "--start",
        choices=COOLDOWN_STARTS,
        default="x",
        help="start from the averaged model x (default) or the training point y",
    )
    parser.add_argument(
        "--shape",
        choices=COOLDOWN_SHAPES,
        default="linear",
        help="learning-rate decay to zero: linear (default) or 1-sqrt",
    )
    parser.add_argument(
        "--lr_factor",
        type=_positive_float,
        default=DEFAULT_LR_FACTOR,
        help="the cooldown starts at lr_factor times the run's rate (default "
        f"{DEFAULT_LR_FACTOR}; the studies' best shrank as runs grew: 0.3 up "
        "to a few hundred steps, 0.03 at 6,400)",
    )
    parser.add_argument(
        "--bn_batches",
        type=int,
        default=50,
        help="training batches to re-estimate BatchNorm at the end (0: off)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="where to write the finished checkpoint (default: next to the "
        "source, '<name>-finished.ckpt')",
    )
    parser.add_argument("--validate", type=_bool, default=True,
                        help="validate the finished model afterwards (default true)")  # fmt: skip
    return parser


def run_finish(argv: Sequence[str], build: Callable[[list[str]], Any] | None = None) -> int:
    """Parse ``argv`` (after ``finish``), build the run with ``build(rest)`` (default: the
    ``amuse-lightning`` LightningCLI with ``run=False``: ``.model``, ``.datamodule``,
    ``.config``), finish, report; returns 0. A setting the user can fix raises
    :class:`~amuse_lightning.lightning.errors.ConfigError` (one line and status 2 from the
    command)."""
    options, rest = finish_parser().parse_known_args(list(argv))
    source = Path(options.ckpt_path)
    if not source.is_file():
        raise ConfigError(f"{source} does not exist; pass the run's checkpoint file.", "ckpt_path")
    if build is None:
        from amuse_lightning.lightning.cli import run_cli

        def build(rest: list[str]) -> Any:
            return run_cli(rest, run=False, save_config_callback=None)

    output = Path(options.output or source.with_name(f"{source.stem}-finished.ckpt"))
    cli = build(rest)
    trainer_options = _trainer_options(cli.config)
    try:
        result = finish_checkpoint(
            cli.model, source, output, datamodule=cli.datamodule, fraction=options.fraction,
            steps=options.steps, start=options.start, shape=options.shape,
            lr_factor=options.lr_factor, bn_recalibration_batches=options.bn_batches,
            trainer_options=trainer_options,
        )  # fmt: skip
    except ConfigError:
        raise
    except ValueError as error:  # the checkpoint or a cooldown setting: what to change
        raise ConfigError(str(error)) from error
    print(
        f"Finished {source} (step {result.source_step}) with a {result.cooldown.steps}-step "
        f"{result.cooldown.shape} cooldown from {result.cooldown.start} (total "
        f"{result.total_steps} steps, +{result.cooldown.steps / result.source_step:.0%}); "
        f"wrote {result.path}.",
        flush=True,
    )
    if options.validate and cli.datamodule is not None:
        validator = Trainer(**trainer_options, logger=False, enable_checkpointing=False)
        validator.validate(cli.model, datamodule=cli.datamodule)
    return 0


def _trainer_options(config: Any) -> dict[str, Any]:
    trainer = config.get("trainer", {}) if hasattr(config, "get") else {}
    values = dict(trainer.items()) if hasattr(trainer, "items") else vars(trainer)
    return {k: values[k] for k in TRAINER_OPTIONS if k in values and values[k] is not None}
