"""AmuseCallback logging: beta_t, lr_t and c_t per param group through the Trainer's loggers."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from amuse_lightning import AmuseCallback
from tests.callback_testkit import Recorder, trainer


def fit_with_csv(tmp_path: Path, callback: AmuseCallback, optimizer: str = "amuse") -> list[dict]:
    pl.seed_everything(0)
    model = Recorder(optimizer=optimizer, lr=0.05)
    logger = CSVLogger(tmp_path, name="csv")
    run = trainer(
        tmp_path,
        [callback, LearningRateMonitor(logging_interval="step")],
        logger=logger,
        log_every_n_steps=1,
        max_epochs=2,
    )
    run.fit(model)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def test_schedule_is_logged_per_group_next_to_learning_rate_monitor(tmp_path):
    callback = AmuseCallback()
    rows = fit_with_csv(tmp_path, callback)
    keys = set(rows[0])
    for name in ("beta_t", "lr_t", "c_t"):
        for group in (0, 1):
            assert f"amuse/{name}/group{group}" in keys
    assert any(key.startswith("lr-AMUSE") for key in keys), sorted(keys)

    # warmup_steps=2: lr_t = lr * min(1, t / 2) at step t = logged step + 1
    lr_t = column(rows, "amuse/lr_t/group0")
    assert len(lr_t) == 12
    for step, value in lr_t:
        assert value == pytest.approx(0.05 * min(1.0, (step + 1) / 2))
    # c_t = w_t / sum w: 1 at the first step, then shrinking; beta_t from beta1 upward
    c_t = [value for _, value in column(rows, "amuse/c_t/group1")]
    assert c_t[0] == pytest.approx(1.0) and c_t[-1] < c_t[1] < 1.0
    beta_t = [value for _, value in column(rows, "amuse/beta_t/group0")]
    assert beta_t[0] == pytest.approx(0.8) and 0.8 < beta_t[-1] < 1.0
    assert sorted(beta_t) == beta_t
    # the learning-rate monitor still sees the base lr
    monitored = [v for _, v in column(rows, next(k for k in keys if k.startswith("lr-AMUSE")))]
    assert monitored and all(v == pytest.approx(0.05) for v in monitored)
    assert callback.last_schedule["amuse/lr_t/group0"] == pytest.approx(0.05)


def test_schedulefree_logs_what_it_has(tmp_path):
    rows = fit_with_csv(tmp_path, AmuseCallback(), optimizer="schedulefree")
    keys = set(rows[0])
    assert "amuse/lr_t/group0" in keys
    assert "amuse/beta_t/group0" not in keys  # AdamWScheduleFree keeps a fixed betas[0]


def test_logging_can_be_turned_off(tmp_path):
    rows = fit_with_csv(tmp_path, AmuseCallback(log_schedule=False))
    assert not any(key.startswith("amuse/") for key in rows[0])
