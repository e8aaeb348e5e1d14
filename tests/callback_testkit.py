"""Shared pieces for the AmuseCallback tests: a tiny recording LightningModule, data, oracles."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from amuse_lightning import AMUSE, partition_parameters

IN, HIDDEN, OUT = 6, 8, 3


def make_data(n: int = 48, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, IN, generator=gen)
    targets = torch.randn(n, OUT, generator=gen)
    return TensorDataset(inputs, targets)


def step_batch(step: int, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """A batch that depends on the optimizer step only (independent of any loader state)."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(batch_size, IN, generator=gen), torch.randn(batch_size, OUT, generator=gen)


class Recorder(LightningModule):
    """A small MLP that records which weights each hook sees.

    ``events`` is an ordered list of ``(kind, global_step, {name: tensor})``; kinds:
    ``init`` (fit start), ``train`` (start of training_step), ``step_end`` (after each
    optimizer step, with ``z``), ``val``, ``test``, ``predict``.
    """

    def __init__(
        self,
        optimizer: str = "amuse",
        lr: float = 0.05,
        batchnorm: bool = False,
        dropout: float = 0.0,
        batch_size: int = 8,
        n_train: int = 48,
        shuffle: bool = False,
        data_by_step: bool = False,
        fail_at: dict[str, int] | None = None,
        record: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = [nn.Linear(IN, HIDDEN)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(HIDDEN))
        layers.append(nn.Tanh())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)]
        self.net = nn.Sequential(*layers)
        self.events: list[tuple[str, int, dict[str, Tensor]]] = []
        self.train_batches: list[Tensor] = []
        self.random_draws: list[tuple[float, float, float]] = []
        self.fail_at = dict(fail_at or {})

    # ----------------------------------------------------------------- recording helpers
    def snapshot(self) -> dict[str, Tensor]:
        with torch.inference_mode(False):
            return {n: p.detach().clone() for n, p in self.named_parameters()}

    def record(self, kind: str, extra: dict[str, Any] | None = None) -> None:
        if not self.hparams.record:
            return
        entry = self.snapshot()
        if extra:
            entry.update(extra)
        self.events.append((kind, self.trainer.global_step, entry))

    def optimizer_modes(self) -> set[bool]:
        optimizer = self.trainer.optimizers[0]
        return {bool(g["train_mode"]) for g in optimizer.param_groups}

    def _maybe_fail(self, kind: str) -> None:
        if self.fail_at.get(kind) == self.trainer.global_step:
            self.fail_at.pop(kind)
            raise RuntimeError(f"planned failure in {kind}")

    # ----------------------------------------------------------------- Lightning
    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self, self.hparams.optimizer, self.hparams.lr)

    def on_fit_start(self) -> None:
        self.record("init")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._maybe_fail("train")
        self.record("train", {"__modes__": self.optimizer_modes()})
        if self.hparams.data_by_step:
            batch = step_batch(self.trainer.global_step, self.hparams.batch_size)
        inputs, targets = batch
        self.train_batches.append(inputs.detach().clone())
        self.random_draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
        return nn.functional.mse_loss(self(inputs).float(), targets)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        optimizer = self.trainer.optimizers[0]
        z = {}
        for name, p in self.named_parameters():
            state = optimizer.state.get(p, {})
            if "z" in state:
                z[f"z:{name}"] = state["z"].detach().clone()
                z[f"beta:{name}"] = beta_of(optimizer, p)
        z["__bn__"] = self.bn_state()
        self.record("step_end", z)
        self._maybe_fail("train_end")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._maybe_fail("val")
        self.record("val", {"__modes__": self.optimizer_modes(), "__bn__": self.bn_state()})
        inputs, targets = batch
        loss = nn.functional.mse_loss(self(inputs), targets)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._maybe_fail("test")
        self.record("test", {"__bn__": self.bn_state()})
        inputs, targets = batch
        loss = nn.functional.mse_loss(self(inputs), targets)
        self.log("test_loss", loss)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._maybe_fail("predict")
        self.record("predict")
        return self(batch[0])

    def bn_state(self) -> dict[str, Tensor]:
        return {n: b.detach().clone() for n, b in self.named_buffers() if "running" in n}

    def train_dataloader(self) -> DataLoader:
        data = make_data(self.hparams.n_train, seed=0)
        return DataLoader(data, batch_size=self.hparams.batch_size, shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(make_data(16, seed=1), batch_size=8)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(make_data(16, seed=2), batch_size=8)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(make_data(16, seed=3), batch_size=8)

    # ----------------------------------------------------------------- event queries
    def of_kind(self, kind: str) -> list[tuple[int, dict[str, Tensor]]]:
        return [(step, entry) for k, step, entry in self.events if k == kind]

    def last_y_before(self, index: int) -> dict[str, Tensor]:
        """The y (and z) recorded by the last init/step_end event before ``events[index]``."""
        for kind, _, entry in reversed(self.events[:index]):
            if kind in ("init", "step_end"):
                return entry
        raise AssertionError("no y recorded before this event")

    def y_at_step(self, step: int) -> dict[str, Tensor]:
        """The y after ``step`` optimizer steps (the last record of it)."""
        found = None
        for kind, at, entry in self.events:
            if kind in ("init", "step_end") and at == step:
                found = entry
        assert found is not None, f"no y recorded at step {step}"
        return found


def bn_statistics_at(weights: dict[str, Tensor], inputs: Iterable[Tensor]) -> dict[str, Tensor]:
    """Oracle: the BatchNorm statistics of a :class:`Recorder` with parameters ``weights``,
    re-estimated from ``inputs`` (every layer reset, ``momentum=None``: a cumulative average)."""
    model = Recorder(batchnorm=True, record=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm1d):
                layer.reset_running_stats()
                layer.momentum = None
        model.train()
        for batch in inputs:
            model(batch)
    return model.bn_state()


def first_inputs(loader: Iterable[Any], n_batches: int, scale: float = 1.0) -> list[Tensor]:
    """The inputs of the first ``n_batches`` batches of ``loader``, multiplied by ``scale``."""
    return [inputs * scale for (inputs, _), _ in zip(loader, range(n_batches), strict=False)]


def check_training_sees_y(model: Recorder) -> int:
    """Each training_step sees exactly the y of the previous step, in train mode."""
    checked = 0
    for index, (kind, _, entry) in enumerate(model.events):
        if kind == "train":
            assert entry["__modes__"] == {True}
            assert_same(params_only(entry), params_only(model.last_y_before(index)))
            checked += 1
    return checked


def check_evaluation_sees_x(model: Recorder, kind: str, exact: bool = True) -> int:
    """Each evaluation step sees x = y + (1 - 1/beta)(z - y) of the current y and z."""
    checked = 0
    for index, (k, _, entry) in enumerate(model.events):
        if k == kind:
            assert_same(params_only(entry), expected_x(model.last_y_before(index)), exact=exact)
            checked += 1
    return checked


def make_optimizer(module: nn.Module, kind: str, lr: float) -> torch.optim.Optimizer:
    if kind == "schedulefree":
        import schedulefree  # a dev extra: imported only by the tests that compare with it

        return schedulefree.AdamWScheduleFree(module.parameters(), lr=lr, warmup_steps=2)
    groups = partition_parameters(module).param_groups()  # the library's Muon/fallback rule
    return AMUSE(groups, lr=lr, warmup_steps=2, rho=0.5, ns_dtype=torch.float32)


def beta_of(optimizer: torch.optim.Optimizer, p: Tensor) -> float:
    """The beta that built the parameter's current y (AMUSE: per-tensor; schedulefree: beta1)."""
    state = optimizer.state[p]
    if "beta" in state:
        return float(state["beta"])
    for group in optimizer.param_groups:
        if any(q is p for q in group["params"]):
            return float(group["betas"][0])
    raise KeyError("parameter not in optimizer")


def expected_x(entry: dict[str, Tensor]) -> dict[str, Tensor]:
    """``x = y + (1 - 1/beta)(z - y)`` from a recorded y/z entry (x = y before the first step)."""
    x = {}
    for name, y in entry.items():
        if name.startswith(("z:", "beta:", "__")):
            continue
        z = entry.get(f"z:{name}")
        x[name] = y if z is None else torch.lerp(y, z, 1.0 - 1.0 / entry[f"beta:{name}"])
    return x


def params_only(entry: dict[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in entry.items() if not k.startswith(("z:", "beta:", "__"))}


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor], exact: bool = True) -> None:
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for name in expected:
        if exact:
            assert torch.equal(actual[name], expected[name]), f"{name} differs"
        else:
            torch.testing.assert_close(actual[name], expected[name], msg=f"{name} differs")


def differs(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def trainer(tmp_path: Any, callbacks: list, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
    )
    options.update(kwargs)
    return Trainer(callbacks=callbacks, **options)


def optimizer_state_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bitwise equality of two optimizer state_dicts (tensors and scalars)."""
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        other = b["state"][index]
        assert state.keys() == other.keys()
        for key, value in state.items():
            if isinstance(value, Tensor):
                assert torch.equal(value, other[key]), f"state[{index}][{key}] differs"
            else:
                assert value == other[key], f"state[{index}][{key}] differs"
    for group, other in zip(a["param_groups"], b["param_groups"], strict=True):
        assert group == other
