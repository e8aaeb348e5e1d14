"""The README's plain-PyTorch and Lightning Fabric recipes, run as written (small sizes)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from amuse_lightning import AMUSE, partition_parameters
from amuse_lightning.averaging import averaged_weights, finish


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def make_loader(shuffle: bool = True) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 6, generator=gen)
    data = TensorDataset(inputs, (inputs[:, :3].argmax(1) + (inputs[:, 3] > 1).long()) % 3)
    order = torch.Generator().manual_seed(1)
    return DataLoader(data, batch_size=32, shuffle=shuffle, generator=order)


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    inputs, targets = batch
    return nn.functional.cross_entropy(model(inputs), targets)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    model.train()
    return right / len(loader.dataset)


def plain_pytorch_recipe(evaluate_every: int | None, tmp_path) -> tuple[nn.Module, AMUSE, list]:
    model, loader, val_loader = make_model(), make_loader(), make_loader(shuffle=False)
    optimizer = AMUSE(partition_parameters(model).param_groups(weight_decay=0.05),
                      lr=1e-2, warmup_steps=8)  # fmt: skip
    scores = []
    for epoch in range(3):
        for step, batch in enumerate(loader):
            optimizer.zero_grad()
            loss_fn(model, batch).backward()
            optimizer.step()
            if evaluate_every and step % evaluate_every == 0:
                with averaged_weights(optimizer, model, bn_batches=loader, max_bn_batches=4):
                    scores.append(accuracy(model, val_loader))  # x, BatchNorm re-estimated at x
                    torch.save(model.state_dict(), tmp_path / f"x_{epoch}_{step}.pt")
    return model, optimizer, scores


def test_plain_pytorch_recipe_evaluates_x_and_leaves_the_run_unchanged(tmp_path):
    evaluated, optimizer, scores = plain_pytorch_recipe(3, tmp_path)
    plain, _, _ = plain_pytorch_recipe(None, tmp_path)
    for a, b in zip(evaluated.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # evaluating x changed nothing in the run
    assert len(scores) == 9 and all(0.0 <= s <= 1.0 for s in scores)
    saved = torch.load(tmp_path / "x_2_6.pt")  # x after the last step (test_averaging: exact)
    weights = [n for n in saved if n.endswith("weight")]
    assert any(not torch.equal(saved[n], evaluated.state_dict()[n]) for n in weights)  # not y
    loader = make_loader()
    finished = finish(optimizer, evaluated, loader, loss_fn, bn_batches=loader, max_bn_batches=4)
    assert accuracy(finished, loader) > 0.4
    for a, b in zip(evaluated.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # finishing changed nothing in the run either


def test_fabric_recipe_checkpoints_hold_x_and_resume(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    model = make_model()
    optimizer = AMUSE(partition_parameters(model).param_groups(), lr=1e-2, warmup_steps=8)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(make_loader())
    for batch in loader:
        optimizer.zero_grad()
        fabric.backward(loss_fn(model, batch))
        optimizer.step()
    y = {n: p.detach().clone() for n, p in model.named_parameters()}
    with averaged_weights(optimizer, model, bn_batches=loader, max_bn_batches=4):
        x = {n: p.detach().clone() for n, p in model.named_parameters()}
        fabric.save(tmp_path / "run.ckpt", {"model": model, "optimizer": optimizer})
    for name, value in model.named_parameters():
        assert torch.equal(value, y[name])  # y back after the save

    saved = torch.load(tmp_path / "run.ckpt", weights_only=False)
    for name, value in x.items():  # the checkpoint's weights are x
        assert torch.equal(saved["model"][name.removeprefix("_forward_module.")], value)

    # resume: load (the module gets x, the optimizer its eval mode), then train() rebuilds y
    fresh = make_model()
    fresh_optimizer = AMUSE(partition_parameters(fresh).param_groups(), lr=1e-2, warmup_steps=8)
    fresh, fresh_optimizer = fabric.setup(fresh, fresh_optimizer)
    fabric.load(tmp_path / "run.ckpt", {"model": fresh, "optimizer": fresh_optimizer})
    fresh_optimizer.train()
    for name, value in fresh.named_parameters():
        torch.testing.assert_close(value, y[name], rtol=0, atol=1e-6)


def test_the_plain_pytorch_loop_of_the_docs_runs_as_written(tmp_path, monkeypatch):
    """docs/plain-pytorch.md's loop, executed as written: 80 steps over an 8-batch loader, so
    the finisher's 16 steps read the loader twice (before: 'ran out of batches', and the advice
    itertools.cycle(loader) changed the run's data order)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plain-pytorch.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[0]
    monkeypatch.chdir(tmp_path)
    loader = make_loader()
    namespace = {"model": make_model(), "loader": loader, "val_loader": make_loader(False),
                 "loss_fn": loss_fn, "accuracy": accuracy}  # fmt: skip
    exec(compile(block, "plain-pytorch.md", "exec"), namespace)
    finished, optimizer = namespace["finished"], namespace["optimizer"]
    assert len(loader) == 8 and optimizer.param_groups[0]["step"] == 80
    report = finished.amuse_finisher
    assert (report.source_step, report.cooldown.steps, report.bn_batches_used) == (80, 16, 4)
    assert not finished.training and accuracy(finished, loader) > 0.4
    assert len(namespace["scores"]) == 30
