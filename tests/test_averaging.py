"""amuse_lightning.averaging without Lightning: x in, y and BatchNorm buffers back bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
import schedulefree
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from amuse_lightning import AMUSE, partition_parameters
from amuse_lightning.averaging import (
    averaged_weights,
    find_generators,
    preserved_random_state,
    reestimate_batchnorm,
)
from amuse_lightning.averaging.random_state import preserved_data_state


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def batches(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 5, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(n)
    ]


def trained(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 6) -> None:
    model.train()
    for inputs, targets in batches(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def amuse_run() -> tuple[nn.Module, AMUSE]:
    model = bn_model()
    optimizer = AMUSE(partition_parameters(model).param_groups(), lr=0.05, warmup_steps=2,
                      ns_dtype=torch.float32)  # fmt: skip
    trained(model, optimizer)
    return model, optimizer


def x_oracle(optimizer: AMUSE, y: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``x = y + (1 - 1/beta)(z - y)`` in float64 from the optimizer state (``y`` by parameter
    id, default: what the parameters hold now)."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            y_p = (p if y is None else y[id(p)]).detach().double()
            out.append(y_p + (1.0 - 1.0 / state["beta"]) * (state["z"].double() - y_p))
    return out


def bn_oracle(model: nn.Module, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of the batch means and of the unbiased batch variances of the BatchNorm input."""
    with torch.no_grad():
        features = [model[0](x) for x in inputs]
    return {
        "1.running_mean": torch.stack([f.mean(0) for f in features]).mean(0),
        "1.running_var": torch.stack([f.var(0, unbiased=True) for f in features]).mean(0),
    }


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_inside_x_with_batchnorm_at_x_and_afterwards_y_and_buffers_bit_for_bit():
    model, optimizer = amuse_run()
    before = state_of(model)
    expected_x = x_oracle(optimizer)
    data = batches(4, seed=5)
    with averaged_weights(optimizer, model, bn_batches=data, max_bn_batches=3) as scope:
        params = [p.detach() for g in optimizer.param_groups for p in g["params"]]
        for actual, expected in zip(params, expected_x, strict=True):
            torch.testing.assert_close(actual.double(), expected, rtol=0, atol=1e-6)
        expected_bn = bn_oracle(model, [inputs for inputs, _ in data[:3]])
        for name, value in expected_bn.items():
            torch.testing.assert_close(model.state_dict()[name], value.float())
        assert model.state_dict()["1.num_batches_tracked"].item() == 3
        assert scope.bn_batches_used == 3 and scope.active
        assert all(not g["train_mode"] for g in optimizer.param_groups)
    after = state_of(model)
    assert after.keys() == before.keys()
    for name in before:
        assert torch.equal(after[name], before[name]), name
    assert all(g["train_mode"] for g in optimizer.param_groups)
    assert model.training  # the module's own mode is left as it was


def test_without_batchnorm_options_the_statistics_are_left_as_they_are():
    model, optimizer = amuse_run()
    running = model.state_dict()["1.running_mean"].clone()
    expected_x = x_oracle(optimizer)
    with averaged_weights(optimizer, model):
        assert torch.equal(model.state_dict()["1.running_mean"], running)
        params = [p.detach().double() for g in optimizer.param_groups for p in g["params"]]
        for actual, expected in zip(params, expected_x, strict=True):
            torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_inexact_round_trip_is_close_and_needs_no_copy():
    model, optimizer = amuse_run()
    before = state_of(model)
    with averaged_weights(optimizer, model, exact=False) as scope:
        assert scope.swap.y_copy is None  # no copy of y was kept
    for name, value in state_of(model).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=1e-6)


def test_an_exception_inside_restores_y():
    model, optimizer = amuse_run()
    before = state_of(model)
    with pytest.raises(KeyError), averaged_weights(optimizer, model, bn_batches=batches(2)):
        raise KeyError("evaluation failed")
    for name, value in state_of(model).items():
        assert torch.equal(value, before[name]), name


def test_parameters_already_at_x_are_left_alone():
    model, optimizer = amuse_run()
    optimizer.eval()
    x = state_of(model)
    with averaged_weights(optimizer, model, bn_batches=batches(2)) as scope:
        assert not scope.active
    assert all(torch.equal(v, x[k]) for k, v in state_of(model).items())
    assert all(not g["train_mode"] for g in optimizer.param_groups)


def test_schedulefree_optimizers_work_the_same_way():
    model = bn_model()
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01, warmup_steps=2)
    optimizer.train()
    trained(model, optimizer)
    before = state_of(model)
    with averaged_weights(optimizer, model, bn_batches=batches(2)):
        assert not torch.equal(model[0].weight, before["0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in state_of(model).items())


def test_no_batches_is_an_error_and_y_comes_back():
    model, optimizer = amuse_run()
    before = state_of(model)
    with (
        pytest.raises(RuntimeError, match="got no batches"),
        averaged_weights(optimizer, model, bn_batches=[]),
    ):
        pass
    assert all(torch.equal(v, before[k]) for k, v in state_of(model).items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(bn_batches=[1]), "need the module"),
        (dict(bn_batches=[1], max_bn_batches=0), "max_bn_batches"),
    ],
)
def test_bad_options_say_what_to_change(kwargs, match):
    model, optimizer = amuse_run()
    module = None if match == "need the module" else model
    with pytest.raises(ValueError, match=match):
        averaged_weights(optimizer, module, **kwargs)


def test_random_streams_and_a_loaders_generator_are_left_as_they_were():
    model, optimizer = amuse_run()
    data = TensorDataset(torch.randn(64, 5), torch.randn(64, 3))
    loader_gen = torch.Generator().manual_seed(11)
    loader = DataLoader(data, batch_size=8, sampler=RandomSampler(data, generator=loader_gen))
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    loader_state = loader_gen.get_state()
    with averaged_weights(optimizer, model, bn_batches=loader, max_bn_batches=4):
        pass
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert torch.equal(loader_gen.get_state(), loader_state)


class Jitter:
    """A transform with its own NumPy generator, two attributes deep inside a dataset."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(3)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_numpy(self.rng.normal(size=x.shape).astype(np.float32))


class JitteredData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.data = torch.randn(32, 5)
        self.transforms = [Jitter()]
        self.served = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        self.served += 1
        return self.transforms[0](self.data[index])


def test_generators_and_counters_inside_a_data_source_are_restored():
    dataset = JitteredData()
    loader = DataLoader(dataset, batch_size=4)
    found = find_generators(loader)
    assert any(g is dataset.transforms[0].rng for g in found)
    expected = dataset.transforms[0].rng.bit_generator.state
    with preserved_data_state(loader):
        for _ in loader:
            pass
    assert dataset.transforms[0].rng.bit_generator.state == expected
    assert dataset.served == 0


def test_preserved_random_state_accepts_generators_and_objects():
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    with preserved_random_state([gen]):
        torch.rand(3, generator=gen)
    assert torch.equal(gen.get_state(), before)


def test_reestimate_batchnorm_restores_layer_momenta_and_modes():
    model = bn_model()
    model.eval()
    used = reestimate_batchnorm(model, batches(5), max_batches=2)
    assert used == 2
    assert model[1].momentum == 0.1 and not model.training and not model[1].training


def test_a_reused_object_re_estimates_the_statistics_at_every_entry():
    """One object entered at every evaluation: each entry's statistics are those of the x of
    that moment (an independent estimate), as a fresh object gives them. Before: the second
    entry loaded the statistics cached at the first."""
    model, optimizer = amuse_run()
    data = batches(3, seed=5)
    inputs = [x for x, _ in data]
    scope = averaged_weights(optimizer, model, bn_batches=data)
    with scope:
        first = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    trained(model, optimizer, steps=4)  # x moves
    with scope:
        second = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        for name, value in bn_oracle(model, inputs).items():
            torch.testing.assert_close(second[name], value.float())
    with averaged_weights(optimizer, model, bn_batches=data):
        for name, value in second.items():
            assert torch.equal(model.state_dict()[name], value), name
    assert not torch.equal(first["1.running_mean"], second["1.running_mean"])
    assert scope.bn_batches_used == 3


def test_with_the_optimizer_already_in_eval_mode_the_statistics_are_still_re_estimated():
    """Before: the re-estimate was skipped and x was evaluated with the training statistics."""
    model, optimizer = amuse_run()
    optimizer.eval()
    x = state_of(model)
    data = batches(3, seed=5)
    with averaged_weights(optimizer, model, bn_batches=data) as scope:
        assert not scope.active  # it did not put x in: x was there
        for name, value in bn_oracle(model, [inputs for inputs, _ in data]).items():
            torch.testing.assert_close(model.state_dict()[name], value.float())
        assert scope.bn_batches_used == 3
    assert all(torch.equal(v, x[k]) for k, v in state_of(model).items())  # buffers back too
    assert all(not g["train_mode"] for g in optimizer.param_groups)  # still in eval mode
