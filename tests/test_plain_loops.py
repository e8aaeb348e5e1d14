"""The plain-PyTorch layer inside a real training loop: evaluating ``x`` (``averaged_weights``
with BatchNorm re-estimation) and finishing (``finish``) in the middle of an epoch leave the run
exactly as it was, for the data sources the README names; the sources that cannot keep that
promise are refused, saying what to pass.

The reference for "unchanged" is the same loop run again without the side work: the batches it
trains on (their count and contents) and the weights and optimizer state after it must be equal
bit for bit.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from amuse_lightning import AMUSE, partition_parameters
from amuse_lightning.averaging import averaged_weights, finish
from tests.helpers.data_sources import OwnGeneratorSampler, SelfIterating

N, BATCH, EPOCHS, LR, WARMUP = 64, 8, 2, 0.02, 4  # 8 batches an epoch
SIDE_AT = {(0, 2), (1, 5)}  # (epoch, step) after which the side work runs: mid-epoch


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def tensors(n: int = N) -> TensorDataset:
    gen = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(n, 5, generator=gen), torch.randn(n, 3, generator=gen))


class NoisyData(Dataset):
    """A map-style dataset that adds noise from its own NumPy generator to every sample."""

    def __init__(self) -> None:
        self.data = tensors()
        self.rng = np.random.default_rng(7)

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int):
        x, y = self.data[index]
        return x + torch.from_numpy(self.rng.normal(size=5).astype(np.float32)), y


def make_loader(kind: str) -> DataLoader:
    if kind == "shuffle_with_generator":
        return DataLoader(tensors(), batch_size=BATCH, shuffle=True,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    if kind == "persistent_workers":
        order = torch.Generator().manual_seed(1)
        return DataLoader(tensors(), batch_size=BATCH, shuffle=True, num_workers=1,
                          persistent_workers=True, generator=order)  # fmt: skip
    if kind == "sampler_with_generator":
        return DataLoader(tensors(), batch_size=BATCH, sampler=OwnGeneratorSampler(N))
    if kind == "fabric_persistent_workers":  # Lightning Fabric's wrapper around the loader
        return Fabric(accelerator="cpu", devices=1).setup_dataloaders(
            make_loader("persistent_workers")
        )
    assert kind == "dataset_with_numpy_rng"
    return DataLoader(NoisyData(), batch_size=BATCH, shuffle=True)


LOADERS = ["shuffle_with_generator", "persistent_workers", "sampler_with_generator",
           "dataset_with_numpy_rng", "fabric_persistent_workers"]  # fmt: skip


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def make_optimizer(model: nn.Module) -> AMUSE:
    groups = partition_parameters(model).param_groups(weight_decay=0.01)
    return AMUSE(groups, lr=LR, warmup_steps=WARMUP, ns_dtype=torch.float32)


def evaluate_x(optimizer: AMUSE, model: nn.Module, loader: DataLoader) -> None:
    with averaged_weights(optimizer, model, bn_batches=loader, max_bn_batches=3):
        model.eval()
        with torch.no_grad():
            model(torch.ones(4, 5))
        model.train()


def finish_now(optimizer: AMUSE, model: nn.Module, loader: DataLoader) -> None:
    # 11 steps: more than an epoch of the loader, so it is iterated again
    finished = finish(optimizer, model, loader, loss_fn, steps=11, bn_batches=loader,
                      max_bn_batches=2)  # fmt: skip
    assert finished.amuse_finisher.cooldown.steps == 11


SIDE_WORK = {"averaged_weights": evaluate_x, "finish": finish_now}


def training_run(kind: str, side=None) -> tuple[nn.Module, AMUSE, list[torch.Tensor]]:
    """The README loop: ``EPOCHS`` epochs over the loader, with ``side(optimizer, model,
    loader)`` after the steps in ``SIDE_AT``; returns the model, optimizer and every batch's
    inputs as training saw them."""
    torch.manual_seed(11)  # the global stream: a shuffle without a generator draws from it
    model, loader = make_model(), make_loader(kind)
    optimizer = make_optimizer(model)
    seen = []
    for epoch in range(EPOCHS):
        for step, batch in enumerate(loader):
            seen.append(batch[0].clone())
            optimizer.zero_grad()
            loss_fn(model, batch).backward()
            optimizer.step()
            if side is not None and (epoch, step) in SIDE_AT:
                side(optimizer, model, loader)
    return model, optimizer, seen


def assert_same_run(a, b) -> None:
    (model_a, opt_a, seen_a), (model_b, opt_b, seen_b) = a, b
    assert len(seen_a) == len(seen_b) == EPOCHS * N // BATCH
    for x, y in zip(seen_a, seen_b, strict=True):
        assert torch.equal(x, y)
    for (name, value), other in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                                    strict=True):  # fmt: skip
        assert torch.equal(value, other), name
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    for index, state in state_a["state"].items():
        for key, value in state.items():
            other = state_b["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("side", sorted(SIDE_WORK))
def test_side_work_in_the_middle_of_an_epoch_leaves_the_run_unchanged(kind, side):
    """Before: a loader with persistent workers had its live iterator reset by the side pass
    (12 steps in an 8-batch epoch), and finish() refused a loader shorter than the cooldown."""
    assert_same_run(training_run(kind, SIDE_WORK[side]), training_run(kind))


def test_finish_iterates_a_loader_again_as_a_run_of_more_epochs_would():
    """The cooldown takes 11 batches from an 8-batch loader: the 8 of one pass and the first 3
    of the next, as a second loader with an equal generator yields them; the loader's own
    generator is where it was."""
    model, optimizer, _ = training_run("shuffle_with_generator")
    loader, twin = (
        DataLoader(tensors(), batch_size=BATCH, shuffle=True,
                   generator=torch.Generator().manual_seed(99))
        for _ in range(2)
    )  # fmt: skip
    before = loader.generator.get_state()
    expected_batches = list(itertools.islice(itertools.chain(twin, twin), 11))
    finished = finish(optimizer, model, loader, loss_fn, steps=11, lr_factor=0.5)
    expected = finish(optimizer, model, expected_batches, loss_fn, steps=11, lr_factor=0.5)
    for (name, value), other in zip(finished.state_dict().items(),
                                    expected.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(value, other), name
    assert torch.equal(loader.generator.get_state(), before)


def test_the_finished_model_is_in_eval_mode_and_says_what_ran():
    model, optimizer, _ = training_run("shuffle_with_generator")
    t = optimizer.param_groups[0]["step"]
    optimizer.param_groups[0]["lr_scale"] = 0.25  # as timm's layer decay would set it
    finished = finish(optimizer, model, make_loader("shuffle_with_generator"), loss_fn,
                      fraction=0.25, lr_factor=0.5)  # fmt: skip
    assert not finished.training and not any(m.training for m in finished.modules())
    report = finished.amuse_finisher
    assert report.source_step == t == EPOCHS * N // BATCH
    assert report.cooldown.steps == round(0.25 * t) and report.total_steps == t + round(0.25 * t)
    expected_lr = 0.5 * LR * min(1.0, t / WARMUP)
    scales = [0.25] + [1.0] * (len(optimizer.param_groups) - 1)
    assert report.start_lrs == pytest.approx([expected_lr * scale for scale in scales])
    assert report.bn_batches_used == 0


# ------------------------------------------------------------------ what is refused, in words
ONE_SHOT = {
    "itertools.cycle(loader)": lambda loader: itertools.cycle(loader),
    "iter(loader)": lambda loader: iter(loader),
    "a generator": lambda loader: (batch for batch in loader),
}


@pytest.mark.parametrize("source", sorted(ONE_SHOT))
@pytest.mark.parametrize("argument", ["batches", "bn_batches"])
def test_finish_refuses_a_one_shot_iterator_saying_what_to_pass(source, argument):
    """Before: itertools.cycle(loader) hid the sampler's generator, and the source run then
    trained on other batches."""
    model, optimizer, _ = training_run("sampler_with_generator")
    loader = make_loader("sampler_with_generator")
    one_shot = ONE_SHOT[source](loader)
    args = {"batches": loader, "bn_batches": None, argument: one_shot}
    with pytest.raises(TypeError, match=rf"^{argument} is a one-shot iterator .*Pass the "
                       r"DataLoader itself, a list of batches, or a function"):  # fmt: skip
        finish(optimizer, model, args["batches"], loss_fn, steps=2,
               bn_batches=args["bn_batches"], max_bn_batches=2)  # fmt: skip


@pytest.mark.parametrize("source", sorted(ONE_SHOT))
def test_averaged_weights_refuses_a_one_shot_iterator_saying_what_to_pass(source):
    model, optimizer, _ = training_run("sampler_with_generator")
    one_shot = ONE_SHOT[source](make_loader("sampler_with_generator"))
    with pytest.raises(TypeError, match=r"^bn_batches is a one-shot iterator .*Pass the "
                       r"DataLoader itself"):  # fmt: skip
        averaged_weights(optimizer, model, bn_batches=one_shot)


def test_a_dataset_that_is_its_own_iterator_is_refused_by_both():
    """Before: the BatchNorm re-estimate took batches out of the training stream."""
    model, optimizer, _ = training_run("shuffle_with_generator")
    loader = DataLoader(SelfIterating(tensors()), batch_size=BATCH)
    message = r"SelfIterating.__iter__ returns the dataset itself.*Make __iter__ return a new"
    with (
        pytest.raises(ValueError, match=message),
        averaged_weights(optimizer, model, bn_batches=loader),
    ):
        pass
    with pytest.raises(ValueError, match=message):
        finish(optimizer, model, loader, loss_fn, steps=2)
    with pytest.raises(ValueError, match=message):
        finish(optimizer, model, make_loader("shuffle_with_generator"), loss_fn, steps=2,
               bn_batches=loader)  # fmt: skip
    assert loader.dataset.position == 0  # nothing was taken out of it
    assert all(g["train_mode"] for g in optimizer.param_groups)  # y is back


def test_no_bn_batches_is_the_same_error_in_finish_and_averaged_weights():
    """Before: finish() reset BatchNorm to mean 0 / variance 1 and returned that model."""
    model, optimizer, _ = training_run("shuffle_with_generator")
    loader = make_loader("shuffle_with_generator")
    message = r"^BatchNorm re-estimation got no batches from bn_batches \(it is empty\)"
    with pytest.raises(RuntimeError, match=message):
        finish(optimizer, model, loader, loss_fn, steps=2, bn_batches=[])
    with pytest.raises(ValueError, match=r"^max_bn_batches must be an int >= 1 or None, got 0"):
        finish(optimizer, model, loader, loss_fn, steps=2, bn_batches=loader, max_bn_batches=0)
    with (
        pytest.raises(RuntimeError, match=message),
        averaged_weights(optimizer, model, bn_batches=[]),
    ):
        pass


def test_an_empty_loader_for_the_cooldown_is_an_error_not_a_hang():
    model, optimizer, _ = training_run("shuffle_with_generator")
    empty = DataLoader(tensors(0), batch_size=BATCH)
    with pytest.raises(ValueError, match="batches gave no batches"):
        finish(optimizer, model, empty, loss_fn, steps=3)


def test_a_function_returning_batches_is_called_for_every_pass():
    model, optimizer, _ = training_run("shuffle_with_generator")
    calls = []

    def batches():
        calls.append(1)
        return iter([(torch.ones(BATCH, 5) * k, torch.zeros(BATCH, 3)) for k in range(3)])

    finished = finish(optimizer, model, batches, loss_fn, steps=7)
    assert len(calls) == 3 and math.isfinite(sum(p.sum().item() for p in finished.parameters()))


@pytest.mark.parametrize("batch_size", [None, 4])
def test_a_fresh_loader_keeps_the_sampler_and_its_order(batch_size):
    """``batch_size=None`` (the sampler yields whole items): the side pass still draws in the
    loader's own shuffled order, not in dataset order."""
    from amuse_lightning.averaging.batches import fresh_loader

    data = list(range(20))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    state = loader.generator.get_state()
    expected = [b.tolist() if torch.is_tensor(b) else b for b in loader]
    loader.generator.set_state(state)
    got = [b.tolist() if torch.is_tensor(b) else b for b in fresh_loader(loader)]
    assert got == expected
    assert got != sorted(got)
