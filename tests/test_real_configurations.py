"""Real configurations, round 3: where the averaged model went silently wrong, now refused at
setup or made right. Each test failed on the code before its fix (named in its docstring)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EMAWeightAveraging,
    LearningRateFinder,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, IterableDataset

from amuse_lightning import AMUSE, AmuseCallback, partition_parameters
from tests.callback_testkit import (
    IN,
    OUT,
    Recorder,
    assert_same,
    check_evaluation_sees_x,
    make_data,
    params_only,
    trainer,
)
from tests.helpers.data_sources import OwnGeneratorSampler, SelfIterating

# ---------------------------------------------------------------- 1. other averaging callbacks


@pytest.mark.parametrize("other", [EMAWeightAveraging, StochasticWeightAveraging])
@pytest.mark.parametrize("amuse_first", [True, False])
def test_another_weight_averaging_callback_is_refused_at_setup(tmp_path, other, amuse_first):
    """Listed first, EMAWeightAveraging left optimizer.eval() applied on top of the EMA weights
    after fit; listed after, validation and checkpoints held the EMA of y: silently."""
    averaging = other(swa_lrs=0.01) if other is StochasticWeightAveraging else other()
    callbacks = [AmuseCallback(), averaging] if amuse_first else [averaging, AmuseCallback()]
    model = Recorder()
    fit = trainer(tmp_path, callbacks, max_epochs=1)
    with pytest.raises(MisconfigurationException, match=f"Remove {other.__name__}"):
        fit.fit(model)
    assert model.of_kind("train") == []  # refused before any training step


# ---------------------------------------------------------------- 3. data sources' own state


class NumpyStream(IterableDataset):
    """An IterableDataset that draws its samples from its own NumPy generator."""

    def __init__(self, n: int = 48) -> None:
        self.n = n
        self.rng = np.random.default_rng(7)

    def __iter__(self):
        for _ in range(self.n):
            yield (
                torch.from_numpy(self.rng.normal(size=IN).astype(np.float32)),
                torch.from_numpy(self.rng.normal(size=OUT).astype(np.float32)),
            )


class DataSourceModel(Recorder):
    def __init__(self, source: str, **kwargs) -> None:
        super().__init__(batchnorm=True, **kwargs)
        self.source = source

    def train_dataloader(self) -> DataLoader:
        if self.source == "numpy_stream":
            return DataLoader(NumpyStream(), batch_size=8)
        if self.source == "self_iterating":
            return DataLoader(SelfIterating(make_data(48)), batch_size=8)
        data = make_data(48)
        return DataLoader(data, batch_size=8, sampler=OwnGeneratorSampler(len(data)))


def fit_with(tmp_path, source: str, batches: int) -> DataSourceModel:
    pl.seed_everything(0)
    model = DataSourceModel(source)
    callback = AmuseCallback(bn_recalibration_batches=batches)
    trainer(tmp_path, [callback], max_epochs=2, val_check_interval=3).fit(model)
    return model


@pytest.mark.parametrize("source", ["numpy_stream", "own_generator_sampler"])
def test_recalibration_leaves_a_data_sources_own_random_state_alone(tmp_path, source):
    """Before: only the loader's and samplers' `.generator` attributes were restored, so y after
    fit differed by ~0.04 with and without recalibration."""
    plain = fit_with(tmp_path / "a", source, 0)
    recalibrated = fit_with(tmp_path / "b", source, 3)
    for (_, a), (_, b) in zip(plain.of_kind("train"), recalibrated.of_kind("train"), strict=True):
        assert_same(params_only(a), params_only(b))
    assert len(plain.train_batches) == len(recalibrated.train_batches) > 0
    for a, b in zip(plain.train_batches, recalibrated.train_batches, strict=True):
        assert torch.equal(a, b)
    if source == "own_generator_sampler":  # its counter too: one pass per epoch, as without
        assert recalibrated.trainer.train_dataloader.sampler.passes == 2


def test_a_dataset_that_is_its_own_iterator_is_refused_before_training(tmp_path):
    model = DataSourceModel("self_iterating")
    fit = trainer(tmp_path, [AmuseCallback(bn_recalibration_batches=2)], max_epochs=1)
    with pytest.raises(MisconfigurationException, match="returns the dataset itself"):
        fit.fit(model)
    assert model.of_kind("train") == []


# ---------------------------------------------------------------- 4. after an interrupted fit


def crashed_fit(tmp_path):
    """A fit that writes an epoch-end checkpoint and then crashes in step 9."""
    pl.seed_everything(0)
    model = Recorder(fail_at={"train": 9})
    checkpoint = ModelCheckpoint(tmp_path, save_top_k=-1, filename="{epoch}-{step}")
    fit = trainer(tmp_path, [AmuseCallback(), checkpoint], max_epochs=3,
                  enable_checkpointing=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="planned failure"):
        fit.fit(model)
    return model, fit, tmp_path / "epoch=0-step=6.ckpt"


def last_test_weights(model: Recorder) -> dict[str, torch.Tensor]:
    return params_only(model.of_kind("test")[-1][1])


def test_after_a_crash_test_with_and_then_without_ckpt_path_sees_the_checkpoints_x(tmp_path):
    """Before: the second, plain test() converted the checkpoint's x again with the crashed
    run's z (a mixture 0.0066 away from the checkpoint)."""
    model, fit, path = crashed_fit(tmp_path)
    x = torch.load(path, weights_only=False)["state_dict"]
    x = {name.removeprefix(""): value for name, value in x.items()}
    fit.test(model, ckpt_path=path)
    assert_same(last_test_weights(model), x)
    fit.test(model)
    assert_same(last_test_weights(model), x)


def test_after_a_crash_weights_loaded_from_outside_are_evaluated_as_they_are(tmp_path):
    model, fit, path = crashed_fit(tmp_path)
    x = torch.load(path, weights_only=False)["state_dict"]
    model.load_state_dict(x)
    with pytest.warns(UserWarning, match="evaluated as they are"):
        fit.test(model)
    assert_same(last_test_weights(model), x)


def test_after_a_crash_the_untouched_module_is_evaluated_at_the_runs_x(tmp_path):
    """The module still holds the crashed run's own y: test() converts it to that run's x."""
    model, fit, _ = crashed_fit(tmp_path)
    fit.test(model)
    assert check_evaluation_sees_x(model, "test") == 2


# ---------------------------------------------------------------- 5. swap="inplace" resumes


class FixedBetaRecorder(Recorder):
    """AMUSE with a constant beta 0.8 (rho=0), where an in-place round trip y -> x -> y rounds."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = partition_parameters(self).param_groups()
        return AMUSE(groups, lr=0.05, warmup_steps=2, rho=0.0, ns_dtype=torch.float32)


def run_inplace(tmp_path, max_epochs: int, ckpt_path=None, checkpoint=None) -> Recorder:
    """Validation every second epoch: the end of epoch 1 takes no evaluation round trip."""
    pl.seed_everything(0)
    model = FixedBetaRecorder(batchnorm=True)
    callbacks: list[Callback] = [AmuseCallback(swap="inplace", bn_recalibration_batches=2)]
    if checkpoint is not None:
        callbacks.append(checkpoint)
    fit = trainer(tmp_path, callbacks, max_epochs=max_epochs, check_val_every_n_epoch=2,
                  enable_checkpointing=checkpoint is not None)  # fmt: skip
    fit.fit(model, ckpt_path=ckpt_path)
    return model


def test_inplace_resume_with_batchnorm_equals_the_uninterrupted_run(tmp_path):
    """Before: the resumed run's sanity check made an in-place round trip y -> x -> y that the
    uninterrupted run never made (here it validates only after epoch 2); through BatchNorm and
    the Adam fallback the rounding grew into a visible difference in y."""
    reference = run_inplace(tmp_path / "a", max_epochs=3)
    checkpoint = ModelCheckpoint(tmp_path / "ck", save_top_k=0, save_last=True)
    run_inplace(tmp_path / "b", max_epochs=1, checkpoint=checkpoint)
    resumed = run_inplace(tmp_path / "c", max_epochs=3, ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert resumed.of_kind("val")[0][0] == 6  # the resumed run's sanity check
    ref_steps = {step: params_only(e) for step, e in reference.of_kind("step_end")}
    resumed_steps = resumed.of_kind("step_end")
    assert [step for step, _ in resumed_steps] == list(range(7, 19))
    for step, entry in resumed_steps:
        assert_same(params_only(entry), ref_steps[step])


# ---------------------------------------------------------------- 6. the LR finder


class RateRecorder(Recorder):
    """Records, after every optimizer step, each group's lr (already moved on by a scheduler)
    and the rate AMUSE applied in the step (a module hook: the finder replaces every callback
    while it sweeps)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(record=False, **kwargs)
        self.rates: list[list[tuple[float, float]]] = []  # (group lr for the next step, lr_t)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        groups = self.trainer.optimizers[0].param_groups
        self.rates.append([(g["lr"] * g["lr_scale"], g["lr_t"]) for g in groups])


def test_the_lr_finder_sweeps_the_rates_it_applies(tmp_path):
    """Before: AMUSE's warm-up multiplied the finder's rates by t / warmup_steps (0.5x at step 1
    of warm-up 2 here, 0.008x at step 1 of warm-up 100), so the suggestion referred to rates
    that were never applied. The real fit after the sweep warms up as configured."""
    pl.seed_everything(0)
    model = RateRecorder(n_train=96)
    finder = LearningRateFinder(min_lr=1e-4, max_lr=1e-1, num_training_steps=8)
    fit = trainer(tmp_path, [finder, AmuseCallback()], max_steps=12, max_epochs=None,
                  num_sanity_val_steps=0)  # fmt: skip
    fit.fit(model)
    sweep, training = model.rates[:8], model.rates[8:]
    assert len(training) == 12
    swept = finder.optimal_lr.results["lr"]
    for step, rates in enumerate(sweep):  # each step applied the rate the finder recorded
        for _, applied in rates:
            assert applied == pytest.approx(swept[step], rel=1e-12)
    first = training[0]
    assert all(applied == pytest.approx(base / 2) for base, applied in first)  # warmup 2, step 1
    groups = fit.optimizers[0].param_groups
    assert {g["warmup_steps"] for g in groups} == {2} and {g["rho"] for g in groups} == {0.5}
    assert "lr_find" not in finder.__dict__  # the wrapper is gone after the fit


# ---------------------------------------------------------------- 2. 16-bit parameters


@pytest.mark.parametrize(
    ("precision", "fix"), [("bf16-true", "bf16-mixed"), ("16-true", "16-mixed")]
)
def test_16_bit_parameters_are_refused_at_setup_naming_the_mixed_precision(
    tmp_path, precision, fix
):
    """Before: bf16-true silently degraded x (the averaging increments vanish under bf16's
    resolution) and 16-true turned parameters into -inf after one step."""
    model = Recorder()
    fit = trainer(tmp_path, [AmuseCallback()], max_epochs=1, precision=precision)
    with pytest.raises(MisconfigurationException, match=f"Use precision='{fix}'"):
        fit.fit(model)
    assert model.of_kind("train") == []


def test_the_tuners_lr_find_also_sweeps_the_rates_it_applies(tmp_path):
    """``Tuner(trainer).lr_find`` adds its own LearningRateFinder for the sweep: same guarantee."""
    from lightning.pytorch.tuner import Tuner

    pl.seed_everything(0)
    model = RateRecorder(n_train=96)
    fit = trainer(tmp_path, [AmuseCallback()], max_steps=12, max_epochs=None,
                  num_sanity_val_steps=0)  # fmt: skip
    result = Tuner(fit).lr_find(model, min_lr=1e-4, max_lr=1e-1, num_training=8, update_attr=False)
    assert len(model.rates) == 8
    for step, rates in enumerate(model.rates):
        for _, applied in rates:
            assert applied == pytest.approx(result.results["lr"][step], rel=1e-12)
    groups = fit.optimizers[0].param_groups if fit.optimizers else []
    assert all(g["warmup_steps"] == 2 for g in groups)
