"""``amuse-lightning finish``: finish a checkpointed run with a short cooldown.

Examples::

    amuse-lightning finish --ckpt_path <run>/checkpoints/last.ckpt          # <run>/config.yaml
    amuse-lightning finish --config my_run.yaml --ckpt_path runs/last.ckpt --fraction 0.2 \\
        --output finished.ckpt

The finisher's own options are read first (:func:`finish_parser`); everything else
(``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``) builds the model, the data and the
Trainer options exactly as for ``fit``. Without ``--config`` the ``config.yaml`` that ``fit``
saved beside the run is used. Before anything is built, the command refuses (one line, exit
status 2) a checkpoint ``finish`` itself wrote, one without optimizer state, an ``--output``
that is the source checkpoint or an existing file (without ``--overwrite``), and a config
that builds another model than the checkpoint's. The run then resumes from the checkpoint as a
cooldown (:func:`~amuse_lightning.lightning.finish.finish_checkpoint`), BatchNorm statistics are
re-estimated at the finished weights, the finished model is written as a normal Lightning
checkpoint, and the validation metric of the run's ``x`` and of the finished model are printed
on one line. The source checkpoint is only read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from amuse_lightning.averaging.finisher import (
    COOLDOWN_MOMENTA,
    COOLDOWN_SHAPES,
    COOLDOWN_STARTS,
    DEFAULT_FRACTION,
    DEFAULT_LR_FACTOR,
)
from amuse_lightning.cli.about import PROG
from amuse_lightning.cli.lightning_cli import run_cli
from amuse_lightning.cli.options import (
    OneLineParser,
    boolean,
    fraction,
    lr_factor,
    non_negative_int,
    positive_int,
)
from amuse_lightning.cli.quiet import device_lines_once, quiet_finish
from amuse_lightning.cli.run_files import (
    CheckpointInfo,
    check_model_class,
    check_weights_fit,
    output_path,
    read_checkpoint,
    refuse_finished,
    run_folder,
    saved_config,
)
from amuse_lightning.cli.summary import stdout_is_terminal
from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.finish import finish_checkpoint, read_run_steps

__all__ = ["TRAINER_OPTIONS", "finish_parser", "run_finish"]

#: The run's Trainer arguments the cooldown keeps (how and where it computes); the rest (steps,
#: validation, logging, checkpointing, callbacks) is the finisher's.
TRAINER_OPTIONS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "accumulate_grad_batches",
    "gradient_clip_val", "gradient_clip_algorithm", "deterministic", "benchmark",
    "default_root_dir", "use_distributed_sampler", "enable_progress_bar", "enable_model_summary",
)  # fmt: skip


def finish_parser() -> argparse.ArgumentParser:
    """The finisher's own options (the rest of the command line goes to the run's config)."""
    parser = OneLineParser(
        prog=f"{PROG} finish",
        allow_abbrev=False,
        description="Finish an AMUSE run from a checkpoint with a short cooldown (the learning "
        "rate decayed to zero from the run's rate) and write the finished model as a new "
        "checkpoint. The run is built from the config.yaml that fit saved beside it, or from "
        "--config (and overrides) as for fit.",
    )
    parser.add_argument("--ckpt_path", required=True, help="full checkpoint of the run")
    parser.add_argument(
        "--fraction",
        type=fraction,
        default=DEFAULT_FRACTION,
        help=f"cooldown length as a fraction of the run's steps (default {DEFAULT_FRACTION})",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="cooldown length in optimizer steps (overrides --fraction)",
    )
    parser.add_argument(
        "--start",
        choices=COOLDOWN_STARTS,
        default="x",
        help="start from the averaged model x (default), the training point y or the fast "
        "sequence z",
    )
    parser.add_argument(
        "--shape",
        choices=COOLDOWN_SHAPES,
        default="linear",
        help="learning-rate decay to zero: linear (default) or 1-sqrt",
    )
    parser.add_argument(
        "--momentum",
        choices=COOLDOWN_MOMENTA,
        default="carried",
        help="the run's momentum carried over (default) or started afresh",
    )
    parser.add_argument(
        "--lr_factor",
        type=lr_factor,
        default=DEFAULT_LR_FACTOR,
        help="the cooldown starts at lr_factor times the run's rate (default "
        f"{DEFAULT_LR_FACTOR}: 0.3 * min(1, 800 / steps so far), as the studies' best factor "
        "shrank when runs grew; or a number, e.g. 0.1, the earlier default)",
    )
    parser.add_argument(
        "--bn_batches",
        type=non_negative_int,
        default=50,
        help="training batches to re-estimate BatchNorm at the end (0: off)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="where to write the finished checkpoint (default: next to the "
        "source, '<name>-finished.ckpt'); never the source itself",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it exists (never the source checkpoint)",
    )
    parser.add_argument(
        "--validate",
        type=boolean,
        default=True,
        help="validate x before and the finished model after (default true)",
    )
    return parser


def run_finish(argv: Sequence[str], build: Callable[..., Any] | None = None) -> int:
    """Parse ``argv`` (after ``finish``), check the checkpoint, the output path and the config
    before anything is built, build the run with ``build(rest, before_build)`` (default: the
    ``amuse-lightning`` LightningCLI with ``run=False``: ``.model``, ``.datamodule``,
    ``.config``, ``.trainer``), finish, validate and report; returns 0. A setting the user can
    fix raises :class:`~amuse_lightning.lightning.errors.ConfigError` (one line and status 2
    from the command)."""
    options, rest = finish_parser().parse_known_args(list(argv))
    source = Path(options.ckpt_path)
    if not source.is_file():
        raise ConfigError(f"{source} does not exist; pass the run's checkpoint file", "--ckpt_path")
    info = read_checkpoint(source)
    refuse_finished(info)
    try:
        if read_run_steps(source) < 1:
            raise ValueError(f"{source} was written before the first optimizer step: nothing "
                             "to finish.")  # fmt: skip
    except ValueError as error:
        raise ConfigError(str(error), "--ckpt_path") from error
    output = output_path(source, options.output, options.overwrite)
    rest, hint = _with_run_config(rest, source)
    with device_lines_once():  # three Trainers: the CLI's, the cooldown's, the validator
        result = _finish_and_report(options=options, rest=rest, info=info, hint=hint,
                                    source=source, output=output, build=build)  # fmt: skip
    print(f"Wrote {result.path}", flush=True)
    return 0


def _finish_and_report(
    *, options: Any, rest: list[str], info: CheckpointInfo, hint: str, source: Path,
    output: Path, build: Callable[..., Any] | None,
) -> Any:  # fmt: skip
    """Build the run, finish the checkpoint into ``output``, print what ran and the before /
    after validation; returns the finisher's result."""
    cli = (build or _build)(rest, lambda config: check_model_class(info, config, hint))
    check_weights_fit(info, cli.model, hint)
    _quiet_partition_report(cli)
    trainer_options = _trainer_options(cli.config)
    with quiet_finish(cli.datamodule):
        try:
            result = finish_checkpoint(
                cli.model, source, output, datamodule=cli.datamodule, fraction=options.fraction,
                steps=options.steps, start=options.start, shape=options.shape,
                momentum=options.momentum,
                lr_factor=options.lr_factor, bn_recalibration_batches=options.bn_batches,
                trainer_options=trainer_options, overwrite=options.overwrite,
            )  # fmt: skip
        except ConfigError:
            raise
        except ValueError as error:  # the checkpoint or a cooldown setting: what to change
            raise ConfigError(str(error)) from error
    print(
        f"Finished {source} (step {result.source_step}) with a {result.cooldown.steps}-step "
        f"{result.cooldown.shape} cooldown from {result.cooldown.start} (total "
        f"{result.total_steps} steps, +{result.cooldown.steps / result.source_step:.0%}).",
        flush=True,
    )
    if options.validate and cli.datamodule is not None:
        print(_before_and_after(cli, info, result, trainer_options), flush=True)
    return result


def _build(rest: list[str], before_build: Callable[[Any], None]) -> Any:
    return run_cli(rest, run=False, save_config_callback=None, before_build=before_build)


def _with_run_config(rest: list[str], source: Path) -> tuple[list[str], str]:
    """``rest`` with ``--config <run>/config.yaml`` in front when it names no config, and the
    hint a refusal gives; without a saved config, a :class:`ConfigError`."""
    example = run_folder(source) / "config.yaml"
    hint = f"pass the run's --config (e.g. {example})"
    if any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in rest):
        return rest, hint
    found = saved_config(source)
    if found is None:
        raise ConfigError(f"no config.yaml saved beside {source}; {hint}", "--config")
    print(f"Building the run from {found} (saved by fit)", flush=True)
    return ["--config", str(found), *rest], f"the config saved beside it does not fit; {hint}"


def _quiet_partition_report(cli: Any) -> None:
    """The run's partition table was printed by fit; the cooldown does not repeat it unless
    ``--partition_report`` asks for it."""
    if cli.config.get("partition_report") is None and hasattr(cli.model, "partition_report"):
        cli.model.partition_report = "none"


def _trainer_options(config: Any) -> dict[str, Any]:
    trainer = config.get("trainer", {}) if hasattr(config, "get") else {}
    values = dict(trainer.items()) if hasattr(trainer, "items") else vars(trainer)
    options = {k: values[k] for k in TRAINER_OPTIONS if k in values and values[k] is not None}
    if "enable_progress_bar" not in options and not stdout_is_terminal():
        options["enable_progress_bar"] = False
    options.setdefault("enable_model_summary", False)  # fit printed it
    return options


def _before_and_after(
    cli: Any, info: CheckpointInfo, result: Any, trainer_options: dict[str, Any]
) -> str:
    """``val_acc: 0.8512 (x at step 1716) -> 0.8634 (finished, step 2059)``: the source
    checkpoint's weights (``x``) and the finished checkpoint's, each validated as written."""
    validator = Trainer(**trainer_options, logger=False, enable_checkpointing=False)
    scores = [_validate(validator, cli, path) for path in (info.path, result.path)]
    name = _metric_name(cli.trainer, scores[1])
    before, after = (s.get(name) for s in scores)
    return (
        f"{name}: {_fmt(before)} (x at step {result.source_step}) -> {_fmt(after)} "
        f"(finished, step {result.total_steps})"
    )


def _validate(validator: Trainer, cli: Any, path: Path) -> dict[str, float]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    cli.model.load_state_dict(state)
    results = validator.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _metric_name(trainer: Trainer | None, scores: dict[str, float]) -> str:
    for checkpoint in getattr(trainer, "checkpoint_callbacks", []):
        monitor = getattr(checkpoint, "monitor", None)
        if monitor in scores:
            return monitor
    return next((k for k in ("val_acc", "val_loss") if k in scores), next(iter(scores), "val"))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
