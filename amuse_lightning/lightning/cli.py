"""``amuse-lightning``: LightningCLI for AMUSE runs (``fit``, ``validate``, ``test``, ``predict``).

Examples::

    amuse-lightning fit --config configs/fashion_mnist_resnet.yaml
    amuse-lightning fit --config configs/cifar10_resnet18.yaml --trainer.max_epochs 10
    amuse-lightning test --config configs/fashion_mnist_resnet.yaml --ckpt_path <run>/last.ckpt
    amuse-lightning fit --config configs/fashion_mnist_resnet.yaml --print_config
    python -m amuse_lightning.lightning.cli fit --config ...

Any ``LightningModule`` / ``LightningDataModule`` subclass can be named with ``class_path``
(subclass mode). What this CLI adds to plain ``LightningCLI``:

- ``--amuse_callback`` (default true): when the model is an ``AmuseMixin`` module and the
  configured callbacks hold no :class:`~amuse_lightning.lightning.callback.AmuseCallback`, one
  ``AmuseCallback()`` is added, so validation, checkpoints and the model after ``fit`` are the
  averaged weights ``x``. Configure it under ``trainer.callbacks`` to change its settings; it is
  never added twice.
- After ``fit``: a one-paragraph summary (last and best validation accuracy of ``x``, the
  checkpoint paths, time). With ``--test_after_fit true`` the final model (``x``) is then tested
  and ``test_acc=0.xxxx`` printed; ``test`` prints the same line.
- No automatic ``--optimizer``/``--lr_scheduler`` groups: the optimizer is the model's
  ``optimizer`` argument (``--model.optimizer``), which receives the Muon/fallback param groups.
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from amuse_lightning.lightning.factories import builds_schedule_free

__all__ = ["AmuseLightningCLI", "fit_summary", "main", "prediction_summary"]


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


def fit_summary(trainer: Trainer, seconds: float | None = None, monitor: str = "val_acc") -> str:
    """One paragraph: steps, last ``monitor`` of the averaged model, best and latest checkpoints.

    A ``ModelCheckpoint`` with a monitor reports its best score and file; one without a monitor
    holds the latest (anytime) model; ``save_last`` files are listed as well.
    """
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
        self._fit_started: float | None = None
        super().__init__(*args, **kwargs)

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


def main(args: Any = None) -> AmuseLightningCLI:
    """Console-script entry point (``amuse-lightning``); ``args`` as for ``LightningCLI``."""
    return AmuseLightningCLI(
        LightningModule,
        LightningDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
