"""Messages the ``amuse-lightning`` command keeps out of a run's output, each named exactly.

None of them is caused by the user's settings:

- Lightning's advertisements (``💡 Tip: ... litlogger ...`` at every Trainer's logger set-up and
  ``💡 Tip: ... litmodels ...`` beside ``ModelCheckpoint``), logged through its rank-zero logger;
- its note ``Loading `train_dataloader` to estimate number of stepping batches.``, which the
  example modules' ``warmup_fraction`` causes (the line after it says what was estimated);
- torch 2.14's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated, raised
  by Lightning 2.6's own ``_pytree`` helper whenever a batch is flattened;
- in ``finish`` only (:data:`FINISH_WARNINGS`, :data:`FINISH_LOG_LINES`): Lightning's advice
  to provide the callbacks the source checkpoint was written with (the finisher leaves the run's
  checkpoint callbacks out on purpose: it writes one file itself) and its note that
  ``save_checkpoint`` was called without ``weights_only`` (the finisher writes a full
  checkpoint); and, for the shipped example datamodules only, its warning about resuming in the
  middle of an epoch with a loader that saves no position (their samplers and batches are
  functions of the epoch and the step, so they resume exactly: :data:`EXAMPLE_RESUME_WARNING`).
  A datamodule of the user's keeps that warning: its loader may really restart the epoch.
  ``finish`` builds a Trainer for each of its three passes (the validation of ``x``, the
  cooldown, the validation of the finished model), and each would print Lightning's device
  lines (``GPU available: ...``) again: :data:`DEVICE_LINES` are printed once per ``finish``.

Every other warning and log line still reaches the user.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "DEVICE_LINES",
    "EXAMPLE_RESUME_WARNING",
    "FINISH_LOG_LINES",
    "FINISH_WARNINGS",
    "LIGHTNING_TIP",
    "device_lines_once",
    "quiet_finish",
    "quiet_lightning",
]

#: The start of Lightning's advertisement lines (``rank_zero_info``).
LIGHTNING_TIP = re.compile(r"^💡 Tip: .*\[(litlogger|litmodels)\]")

#: Lightning's ``rank_zero_info`` lines the command drops (the tips and the estimate note).
RANK_ZERO_LINES = re.compile(
    LIGHTNING_TIP.pattern
    + r"|^Loading `train_dataloader` to estimate number of stepping batches\.$"
)

#: ``FutureWarning`` torch 2.14 raises inside Lightning 2.6's ``_tree_flatten``.
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"

#: Lightning warnings that ``finish`` causes itself (message regexes, matched at the start).
FINISH_WARNINGS = (
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be "
    r"provided during `Trainer` instantiation",
)

#: Lightning's device lines (one per accelerator kind), printed by every Trainer it builds.
DEVICE_LINES = re.compile(r"^(GPU|TPU|HPU|IPU|MPS) available: ")

#: Lightning's mid-epoch resume warning, dropped in ``finish`` for the example datamodules.
EXAMPLE_RESUME_WARNING = r"You're resuming from a checkpoint that ended before the epoch ended"

#: Lightning log lines that ``finish`` causes itself: logger name -> message regex.
FINISH_LOG_LINES = {
    "lightning.pytorch.trainer.connectors.checkpoint_connector": r"`weights_only` was not set",
}

_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _Repeats(logging.Filter):
    """Drops a record whose message matches ``pattern`` and was already let through."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not self.pattern.match(message):
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


class _Drop(logging.Filter):
    """Drops the log records whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


_TIP_FILTER = _Drop(RANK_ZERO_LINES)


def quiet_lightning() -> None:
    """Drop Lightning's tips, its stepping-batches note and the ``LeafSpec`` deprecation for the
    rest of the process (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    warnings.filterwarnings(
        "ignore", message=LEAFSPEC_WARNING, category=FutureWarning, module=r"lightning\."
    )


@contextmanager
def quiet_finish(datamodule: object = None) -> Iterator[None]:
    """Inside the block, drop :data:`FINISH_WARNINGS` and :data:`FINISH_LOG_LINES`, and
    :data:`EXAMPLE_RESUME_WARNING` when ``datamodule`` is one of the package's examples."""
    filters = [(logging.getLogger(n), _Drop(re.compile(p))) for n, p in FINISH_LOG_LINES.items()]
    example = type(datamodule).__module__.startswith("amuse_lightning.examples")
    messages = FINISH_WARNINGS + ((EXAMPLE_RESUME_WARNING,) if example else ())
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        for logger, drop in filters:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in filters:
                logger.removeFilter(drop)


@contextmanager
def device_lines_once() -> Iterator[None]:
    """Inside the block, each of :data:`DEVICE_LINES` is printed once, however many Trainers
    are built."""
    repeats = _Repeats(DEVICE_LINES)
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    for logger in loggers:
        logger.addFilter(repeats)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(repeats)
