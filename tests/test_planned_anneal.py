"""``beta_anneal_steps="auto"``: beta annealed over the Trainer's planned optimizer steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from amuse_lightning import AMUSE, AmuseCallback, partition_parameters
from amuse_lightning.lightning import finish_checkpoint
from amuse_lightning.lightning.errors import ConfigError
from tests.callback_testkit import Recorder, make_data, optimizer_state_equal, trainer


class Annealed(Recorder):
    """The recording MLP with AMUSE annealing beta over ``anneal`` steps (rho left unset)."""

    def __init__(self, anneal: int | str = "auto", **kwargs: Any) -> None:
        super().__init__(record=False, **kwargs)
        self.anneal = anneal

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = partition_parameters(self).param_groups()
        return AMUSE(groups, lr=0.05, warmup_steps=2, beta_anneal_steps=self.anneal,
                     ns_dtype=torch.float32)  # fmt: skip


def fit(tmp_path: Path, anneal: int | str, ckpt_path: Path | None = None, **trainer_kwargs: Any):
    pl.seed_everything(0)
    model = Annealed(anneal)
    run = trainer(tmp_path, [AmuseCallback()], **trainer_kwargs)
    run.fit(model, ckpt_path=ckpt_path)
    return model, run


def counts(run: pl.Trainer) -> set[Any]:
    return {g["beta_anneal_steps"] for g in run.optimizers[0].param_groups}


def test_auto_is_the_trainers_planned_steps_and_runs_as_that_number(tmp_path: Path) -> None:
    # 48 samples in batches of 8: 6 batches, 4 of them per epoch, 2 per optimizer step, 3 epochs
    plan = dict(max_epochs=3, limit_train_batches=4, accumulate_grad_batches=2)
    auto, auto_run = fit(tmp_path / "auto", "auto", **plan)
    assert counts(auto_run) == {6} and auto_run.global_step == 6
    assert {g["rho"] for g in auto_run.optimizers[0].param_groups} == {0.0}
    number, number_run = fit(tmp_path / "number", 6, **plan)
    for (name, a), b in zip(auto.named_parameters(), number.parameters(), strict=True):
        assert torch.equal(a, b), name
    optimizer_state_equal(
        auto_run.optimizers[0].state_dict(), number_run.optimizers[0].state_dict()
    )
    betas = [g["beta_t"] for g in auto_run.optimizers[0].param_groups]
    assert betas == pytest.approx([0.9] * len(betas))  # to beta_final="auto" (6 steps) at the end


def test_a_resume_keeps_the_count_its_run_started_with(tmp_path: Path) -> None:
    _, first = fit(tmp_path / "first", "auto", max_epochs=1)  # 6 steps planned
    assert counts(first) == {6}
    ckpt = tmp_path / "one_epoch.ckpt"
    first.save_checkpoint(ckpt)
    resumed, resumed_run = fit(tmp_path / "resumed", "auto", ckpt_path=ckpt, max_epochs=3)
    assert counts(resumed_run) == {6}, "the checkpoint's count, not the longer run's 18"
    assert resumed_run.optimizers[0].defaults["beta_anneal_steps"] == 6  # for groups added later
    straight, straight_run = fit(tmp_path / "straight", 6, max_epochs=3)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
    optimizer_state_equal(
        resumed_run.optimizers[0].state_dict(), straight_run.optimizers[0].state_dict()
    )


def test_the_tuners_lr_find_runs_with_auto_and_the_fit_after_it_keeps_the_plan(tmp_path: Path):
    """``Tuner.lr_find`` sweeps from its own ``on_fit_start``, before AmuseCallback's."""
    from lightning.pytorch.tuner import Tuner

    pl.seed_everything(0)
    model = Annealed("auto", n_train=96)
    run = trainer(tmp_path, [AmuseCallback()], max_steps=12, max_epochs=None,
                  num_sanity_val_steps=0)  # fmt: skip
    result = Tuner(run).lr_find(model, min_lr=1e-4, max_lr=1e-1, num_training=8, update_attr=False)
    assert len(result.results["lr"]) == 8
    run.fit(model)
    assert counts(run) == {12} and run.global_step == 12


class Unsized(IterableDataset):
    """The recorder's 48 samples as a stream without a length: Lightning cannot count its steps."""

    def __iter__(self):
        return iter(make_data(48))


class StreamAnnealed(Annealed):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(Unsized(), batch_size=8)


def test_finishing_a_run_on_data_without_a_length_takes_the_checkpoints_count(tmp_path: Path):
    """The finisher's fit has no planned end of its own (max_steps=-1 on a stream): its
    checkpoint brings the count, so 'auto' must not need an estimate there."""
    pl.seed_everything(0)
    model = StreamAnnealed("auto")
    run = trainer(tmp_path, [AmuseCallback()], max_steps=6, max_epochs=None)
    run.fit(model)
    assert counts(run) == {6}
    ckpt = tmp_path / "run.ckpt"
    run.save_checkpoint(ckpt)
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False)
    finished = {}
    for anneal in ("auto", 6):  # the config says 'auto', or the number it resolved to
        out = tmp_path / f"finished_{anneal}.ckpt"
        finish_checkpoint(StreamAnnealed(anneal), ckpt, out, steps=2, trainer_options=options)
        finished[anneal] = torch.load(out, weights_only=False)["state_dict"]
    for name, tensor in finished[6].items():
        assert torch.equal(finished["auto"][name], tensor), name


class LateGroup(Annealed):
    """Trains the last layer from the second epoch on (a group added during fit, as Lightning's
    BaseFinetuning does when it unfreezes a backbone)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.net.parameters())
        self.late = params[-2:]
        early = params[:-2]
        return AMUSE([{"params": early, "use_muon": False}], lr=0.05, warmup_steps=2,
                     beta_anneal_steps=self.anneal, ns_dtype=torch.float32)  # fmt: skip

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            self.trainer.optimizers[0].add_param_group({"params": self.late, "use_muon": False})


def test_a_group_added_during_fit_anneals_over_the_runs_count(tmp_path: Path) -> None:
    pl.seed_everything(0)
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=2, num_sanity_val_steps=0)
    run.fit(LateGroup("auto"))
    assert counts(run) == {12} and len(run.optimizers[0].param_groups) == 2


def test_a_run_without_a_planned_end_is_refused_before_any_step(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = Annealed("auto")
    before = [p.detach().clone() for p in model.parameters()]
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=-1, max_steps=-1)
    with pytest.raises(ConfigError, match=r"^beta_anneal_steps: 'auto' anneals beta .* max_steps"):
        run.fit(model)
    assert run.global_step == 0
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


def test_without_the_callback_the_first_step_says_what_to_pass() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = AMUSE(partition_parameters(model).param_groups(), beta_anneal_steps="auto")
    model(torch.randn(4, 6)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"AmuseCallback fills in .* beta_anneal_steps=10000"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert not opt.state, "no state was created"


def test_rho_left_unset_with_annealing_is_the_rho_zero_run() -> None:
    def run(**kwargs: Any) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        opt = AMUSE(partition_parameters(model).param_groups(), lr=0.05, warmup_steps=2,
                    beta_anneal_steps=5, ns_dtype=torch.float32, **kwargs)  # fmt: skip
        for step in range(7):
            gen = torch.Generator().manual_seed(step)
            model.zero_grad()
            model(torch.randn(4, 6, generator=gen)).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    unset, zero = run(), run(rho=0.0)
    assert all(torch.equal(a, b) for a, b in zip(unset, zero, strict=True))
    assert AMUSE([torch.nn.Parameter(torch.zeros(3))]).param_groups[0]["rho"] == 0.3
