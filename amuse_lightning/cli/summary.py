"""What ``amuse-lightning`` prints about a run: a line per epoch, the paragraph after ``fit``,
where the metrics went, and the prediction summary.

:class:`EpochSummary` prints one plain line after each training epoch (epoch, step, training
loss at ``y``, the validation metric of the averaged model ``x``, the learning rate AMUSE
applied), so a log redirected to a file is readable without the progress bar; in a terminal the
line goes through the progress bar's ``print`` and stays above it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

__all__ = [
    "EpochSummary",
    "fit_summary",
    "metrics_file",
    "metrics_note",
    "prediction_summary",
    "stdout_is_terminal",
    "summary_metric",
]


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


def metrics_file(trainer: Trainer) -> Path | None:
    """The CSV file the run's ``CSVLogger`` writes (``<save_dir>/<name>/version_N/metrics.csv``),
    or ``None`` when no CSV logger is configured."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir) / "metrics.csv"
    return None


def metrics_note(trainer: Trainer) -> str | None:
    """``Metrics per step and epoch: <path> (plot them: amuse-lightning plot <folder>)``, or
    where another logger writes, or ``None`` without a logger."""
    path = metrics_file(trainer)
    if path is not None:
        return f"Metrics per step and epoch: {path} (plot them: amuse-lightning plot {path.parent})"
    folders = [logger.log_dir for logger in trainer.loggers if getattr(logger, "log_dir", None)]
    return f"Metrics: {', '.join(map(str, folders))}" if folders else None


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


class EpochSummary(Callback):
    """Prints ``epoch 2/4  step 858  train_loss 0.4312  val_acc(x) 0.8655  lr 0.0100`` after
    each training epoch (rank zero only). ``train_loss`` is the epoch's last logged value at
    ``y``; the validation metric is :func:`summary_metric` of the averaged model ``x``; ``lr`` is
    AMUSE's warmed-up rate of the first param group (``amuse/lr_t/group0``), else the optimizer's
    ``lr``. Values the run has not produced are left out."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        line = self.line(trainer)
        bar = next((cb for cb in trainer.callbacks if isinstance(cb, ProgressBar)), None)
        if bar is not None and bar.is_enabled:
            bar.print(line)
        else:
            print(line, flush=True)

    @staticmethod
    def line(trainer: Trainer) -> str:
        metrics = trainer.callback_metrics
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")]
        parts.append(f"step {trainer.global_step}")
        loss = metrics.get("train_loss", metrics.get("train_loss_step"))
        if loss is not None:
            parts.append(f"train_loss {float(loss):.4f}")
        monitor = summary_metric(trainer)
        if monitor in metrics:
            parts.append(f"{monitor}(x) {float(metrics[monitor]):.4f}")
        lr = _learning_rate(trainer)
        if lr is not None:
            parts.append(f"lr {lr:.4g}")
        return "  ".join(parts)


def _learning_rate(trainer: Trainer) -> float | None:
    if not trainer.optimizers:
        return None
    group = trainer.optimizers[0].param_groups[0]
    value = group.get("lr_t", group.get("scheduled_lr", group.get("lr")))
    return None if value is None else float(value)


def stdout_is_terminal() -> bool:
    """Whether the progress bar can redraw in place (Lightning's bar writes to ``sys.stdout``)."""
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False
