"""``beta_final="auto"``: the end of beta annealing chosen from the annealing length."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from amuse_lightning import AMUSE, AmuseCallback, partition_parameters
from amuse_lightning.optim.schedule import length_aware_beta_final
from tests.callback_testkit import Recorder, optimizer_state_equal, trainer


def geometric_between_studied_lengths(steps: int) -> float:
    """The rule written another way: ``log(1 - beta_final)`` linear in ``log A`` from
    ``log 0.1`` at 1,600 steps to ``log 0.035`` at 6,400 steps, flat outside."""
    a = min(max(steps, 1600), 6400)
    share = (math.log(a) - math.log(1600)) / (math.log(6400) - math.log(1600))
    return 1.0 - math.exp((1 - share) * math.log(0.1) + share * math.log(0.035))


@pytest.mark.parametrize("steps", [1, 200, 1600, 1601, 2000, 3200, 4525, 6399, 6400, 10**6])
def test_the_rule_is_log_linear_between_the_studied_lengths(steps: int) -> None:
    assert length_aware_beta_final(steps) == pytest.approx(geometric_between_studied_lengths(steps))


def test_the_rule_rises_from_the_short_runs_value_to_the_long_runs() -> None:
    values = [length_aware_beta_final(a) for a in range(1, 8000, 37)]
    assert values == sorted(values)
    assert (values[0], values[-1]) == (0.9, pytest.approx(0.965))
    assert length_aware_beta_final(3200) == pytest.approx(0.94084, abs=1e-5)


def run(steps: int = 6, **options: Any) -> tuple[list[torch.Tensor], AMUSE]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = AMUSE(partition_parameters(model).param_groups(), lr=0.05, warmup_steps=2,
                ns_dtype=torch.float32, **options)  # fmt: skip
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        model.zero_grad()
        model(torch.randn(4, 6, generator=gen)).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("anneal", [4, 3200])
def test_auto_with_a_count_is_the_rules_number_and_runs_as_that_number(anneal: int) -> None:
    auto, auto_opt = run(beta_anneal_steps=anneal, beta_final="auto")
    value = length_aware_beta_final(anneal)
    assert {g["beta_final"] for g in auto_opt.param_groups} == {value}
    number, number_opt = run(beta_anneal_steps=anneal, beta_final=value)
    assert all(torch.equal(a, b) for a, b in zip(auto, number, strict=True))
    optimizer_state_equal(auto_opt.state_dict(), number_opt.state_dict())
    if anneal == 4:  # annealed to the end by the 6th step
        assert all(g["beta_t"] == pytest.approx(0.9) for g in auto_opt.param_groups)


def test_auto_is_the_default_and_without_annealing_the_rho_rise_runs_as_before() -> None:
    auto, auto_opt = run()
    assert auto_opt.defaults["beta_final"] == "auto"
    assert {g["beta_final"] for g in auto_opt.param_groups} == {"auto"}
    number, _ = run(beta_final=0.965)
    assert all(torch.equal(a, b) for a, b in zip(auto, number, strict=True))


def test_a_count_set_by_hand_in_a_plain_loop_resolves_auto_at_the_next_step() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    groups = partition_parameters(model).param_groups()
    opt = AMUSE(groups, beta_anneal_steps="auto", beta_final="auto", warmup_steps=2)
    for group in opt.param_groups:  # what AmuseCallback does from the Trainer's plan
        group["beta_anneal_steps"] = 2000
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    assert {g["beta_final"] for g in opt.param_groups} == {length_aware_beta_final(2000)}


@pytest.mark.parametrize("value", ["automatic", "AUTO", 1.5, 0.0, True])
def test_a_bad_beta_final_names_the_allowed_values(value: Any) -> None:
    with pytest.raises(ValueError, match=r"beta_final must be a number in \(0, 1\] or 'auto'"):
        params = [torch.nn.Parameter(torch.zeros(3, 3))]
        AMUSE([{"params": params, "use_muon": True}], beta_anneal_steps=10, beta_final=value)


def test_a_loaded_state_dict_gives_its_number_to_groups_added_later() -> None:
    """A run saved with 0.965 (the default before ``"auto"``) and loaded where the rule gives 0.9:
    the loaded groups keep 0.965, and so does a group added afterwards."""
    torch.manual_seed(0)
    first, late = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    saved = AMUSE([{"params": first.parameters(), "use_muon": False}], beta_anneal_steps=50,
                  beta_final=0.965).state_dict()  # fmt: skip
    opt = AMUSE([{"params": first.parameters(), "use_muon": False}], beta_anneal_steps=50)
    assert opt.param_groups[0]["beta_final"] == 0.9
    opt.load_state_dict(saved)
    opt.add_param_group({"params": late.parameters(), "use_muon": False})
    assert [g["beta_final"] for g in opt.param_groups] == [0.965, 0.965]


def test_settling_a_resumed_plan_takes_the_checkpoints_beta_final() -> None:
    from amuse_lightning.lightning.planned import settle_planned_steps

    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = AMUSE([{"params": params, "use_muon": False}], beta_anneal_steps="auto")
    opt.param_groups[0].update(beta_anneal_steps=3000, beta_final=0.965)  # as a checkpoint left
    settle_planned_steps(opt)
    assert (opt.defaults["beta_anneal_steps"], opt.defaults["beta_final"]) == (3000, 0.965)


class Annealed(Recorder):
    def __init__(self, beta_final: float | str, anneal: int | str) -> None:
        super().__init__(record=False)
        self.beta_final, self.anneal = beta_final, anneal

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = partition_parameters(self).param_groups()
        return AMUSE(groups, lr=0.05, warmup_steps=2, beta_anneal_steps=self.anneal,
                     beta_final=self.beta_final, ns_dtype=torch.float32)  # fmt: skip


def fit(tmp_path: Path, beta_final: float | str, anneal: int | str = "auto",
        ckpt_path: Path | None = None, **kwargs: Any):  # fmt: skip
    pl.seed_everything(0)
    model = Annealed(beta_final, anneal)
    run_ = trainer(tmp_path, [AmuseCallback()], **kwargs)
    run_.fit(model, ckpt_path=ckpt_path)
    return model, run_


def finals(run_: pl.Trainer) -> set[Any]:
    return {g["beta_final"] for g in run_.optimizers[0].param_groups}


def test_under_lightning_auto_is_resolved_with_the_planned_steps(tmp_path: Path, caplog) -> None:
    with caplog.at_level("INFO"):
        auto, auto_run = fit(tmp_path / "auto", "auto", max_epochs=2)
    assert finals(auto_run) == {0.9}  # 12 planned steps
    assert "beta_anneal_steps=12: the run's planned optimizer steps ('auto'), beta_final=0.9" in (
        caplog.text
    )
    number, number_run = fit(tmp_path / "number", 0.9, 12, max_epochs=2)
    for a, b in zip(auto.parameters(), number.parameters(), strict=True):
        assert torch.equal(a, b)
    optimizer_state_equal(
        auto_run.optimizers[0].state_dict(), number_run.optimizers[0].state_dict()
    )


def test_a_checkpoint_with_a_number_resumes_with_it_under_auto(tmp_path: Path) -> None:
    """A run saved with ``beta_final=0.965`` (the default before ``"auto"``) keeps 0.965."""
    _, first = fit(tmp_path / "first", 0.965, max_epochs=1)  # 6 planned steps
    ckpt = tmp_path / "one_epoch.ckpt"
    first.save_checkpoint(ckpt)
    resumed, resumed_run = fit(tmp_path / "resumed", "auto", ckpt_path=ckpt, max_epochs=2)
    assert finals(resumed_run) == {0.965}
    straight, straight_run = fit(tmp_path / "straight", 0.965, 6, max_epochs=2)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
    optimizer_state_equal(
        resumed_run.optimizers[0].state_dict(), straight_run.optimizers[0].state_dict()
    )
