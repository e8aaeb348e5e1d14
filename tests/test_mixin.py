"""AmuseMixin: configure_optimizers from the partition, under Trainer and LightningCLI."""

from __future__ import annotations

import logging
import pickle
import sys
import types
import warnings

import pytest
import timm
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from amuse_lightning import AMUSE, AmuseMixin, default_amuse_factory
from amuse_lightning.lightning.mixin import PARTITION_ATTR, AmuseFactory


class TinyNet(AmuseMixin, LightningModule):
    """Conv stem, a hidden conv and Linear (Muon), a BN and a head (fallback)."""

    def __init__(self, optimizer: OptimizerCallable | None = None, hidden: int = 8) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.conv1 = nn.Conv2d(3, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(torch.relu(self.hidden(x.mean(dim=(2, 3)))))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)


class CLIModel(TinyNet):
    """What a LightningCLI user writes: the optimizer is injected as an OptimizerCallable."""

    def __init__(self, hidden: int = 8, optimizer: OptimizerCallable | None = None) -> None:
        super().__init__(optimizer=optimizer, hidden=hidden)


def loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    )
    return DataLoader(data, batch_size=8)


def quiet_trainer(**kwargs) -> Trainer:
    args = dict(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**{**args, **kwargs})


class Recorder:
    """An optimizer factory that keeps the groups it was given and builds real AMUSE."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.groups = kwargs, None

    def __call__(self, groups: list[dict]) -> AMUSE:
        self.groups = groups
        return AMUSE(groups, **self.kwargs)


@pytest.fixture
def report_lines():
    """Capture what rank_zero_info writes (Lightning's logger does not propagate to root)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_mixin_trains_two_steps_with_real_amuse(report_lines) -> None:
    recorder = Recorder(lr=0.05, warmup_steps=2)
    model = TinyNet(optimizer=recorder)
    model.partition_report = "full"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = quiet_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "no AmuseCallback" warning once it exists
        trainer.fit(model, loader())
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, AMUSE)
    assert all(group["step"] == 2 for group in optimizer.param_groups)
    muon_names = {n for g in optimizer.param_groups if g["use_muon"] for n in g["names"]}
    assert muon_names == {"conv2.weight", "hidden.weight"}
    fallback = {n for g in optimizer.param_groups if not g["use_muon"] for n in g["names"]}
    assert {"conv1.weight", "fc.weight", "bn.weight", "hidden.bias"} <= fallback
    assert recorder.groups is not None and [g["use_muon"] for g in recorder.groups] == [
        g["use_muon"] for g in optimizer.param_groups
    ]
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    text = "\n".join(report_lines)
    assert all(name in text for name in before), "the partition table is logged at fit start"
    record = getattr(model, PARTITION_ATTR)
    assert record["conv1.weight"]["use_muon"] is False and record["conv2.weight"]["use_muon"]
    assert "stem" in record["conv1.weight"]["reason"]


@pytest.mark.parametrize("style", ["compact", "none"])
def test_partition_report_style_decides_what_fit_logs(report_lines, style) -> None:
    model = TinyNet(optimizer=Recorder(warmup_steps=2))
    if style != "compact":  # compact is the default
        model.partition_report = style
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet_trainer(max_steps=1).fit(model, loader(8))
    text = "\n".join(report_lines)
    if style == "none":
        assert "AMUSE partition" not in text
        return
    assert "AMUSE partition of TinyNet: Muon 2 tensors" in text
    assert "stem: first conv" in text and "classifier head" in text
    assert "hidden.bias" not in text  # one row per kind: 1-D tensors are not all listed


def test_default_optimizer_is_amuse_with_its_defaults() -> None:
    optimizer = TinyNet().configure_optimizers()
    assert type(optimizer) is AMUSE
    fresh = AMUSE([{"params": [nn.Parameter(torch.zeros(2, 2))], "use_muon": True}])
    assert optimizer.defaults["lr"] == fresh.defaults["lr"]
    assert optimizer.defaults["beta1"] == fresh.defaults["beta1"]


def test_instance_attributes_override_class_defaults() -> None:
    class Patterned(TinyNet):
        fallback_patterns = ("hidden.weight",)

    model = Patterned()
    assert [a.name for a in model.amuse_partition().muon] == ["conv2.weight"]
    model.fallback_patterns = ()
    model.muon_patterns = ("fc.weight",)
    muon = [a.name for a in model.amuse_partition().muon]
    assert muon == ["conv2.weight", "hidden.weight", "fc.weight"]
    assert TinyNet.muon_patterns == () and Patterned.fallback_patterns == ("hidden.weight",)


def test_partition_is_cached_until_parameters_change() -> None:
    model = TinyNet()
    first = model.amuse_partition()
    assert model.amuse_partition() is first
    model.hidden.requires_grad_(False)
    second = model.amuse_partition()
    assert second is not first
    assert ("hidden.weight", "frozen (requires_grad=False)") in second.skipped
    model.configure_optimizers()
    assert model.amuse_partition() is not second  # each fit partitions afresh


def test_layer_decay_reaches_amuse_as_lr_scale() -> None:
    class ViTModule(AmuseMixin, LightningModule):
        layer_decay = 0.5

        def __init__(self, optimizer) -> None:
            super().__init__()
            self.optimizer = optimizer
            self.model = timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
            )

    recorder = Recorder()
    optimizer = ViTModule(recorder).configure_optimizers()
    scales = {n: g["lr_scale"] for g in optimizer.param_groups for n in g["names"]}
    assert scales["model.head.weight"] == 1.0
    assert scales["model.blocks.1.attn.qkv.weight"] == 0.5
    assert scales["model.blocks.0.attn.qkv.weight"] == 0.25
    assert scales["model.patch_embed.proj.weight"] == 0.125
    assert len(scales) == sum(1 for _ in ViTModule(None).parameters())


def test_non_schedule_free_optimizer_warns_and_non_optimizer_raises() -> None:
    with pytest.warns(UserWarning, match=r"no train\(\)/eval\(\)"):
        optimizer = TinyNet(
            optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1)
        ).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    with pytest.raises(TypeError, match=r"not a torch\.optim\.Optimizer"):
        TinyNet(optimizer=lambda groups: groups).configure_optimizers()


def test_nothing_to_train_fails_early() -> None:
    model = TinyNet().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        model.configure_optimizers()


def test_mixin_outside_a_module_is_a_type_error() -> None:
    class NotAModule(AmuseMixin):
        pass

    with pytest.raises(TypeError, match="LightningModule"):
        NotAModule().amuse_partition()


def test_default_factory_passes_kwargs_checks_names_and_pickles() -> None:
    factory = default_amuse_factory(lr=0.03, beta1=0.7)
    restored = pickle.loads(pickle.dumps(factory))
    assert isinstance(restored, AmuseFactory) and restored.kwargs == {"lr": 0.03, "beta1": 0.7}
    optimizer = TinyNet(optimizer=restored).configure_optimizers()
    assert optimizer.defaults["lr"] == 0.03 and optimizer.defaults["beta1"] == 0.7
    with pytest.raises(TypeError, match="beta_1"):
        default_amuse_factory(beta_1=0.7)


def test_warns_when_the_trainer_has_no_amuse_callback(monkeypatch) -> None:
    fake = types.ModuleType("amuse_lightning.lightning.callback")

    class AmuseCallback(Callback):
        pass

    fake.AmuseCallback = AmuseCallback
    monkeypatch.setitem(sys.modules, "amuse_lightning.lightning.callback", fake)
    with pytest.warns(UserWarning, match="no AmuseCallback"):
        quiet_trainer(max_steps=1).fit(TinyNet(), loader(8))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*AmuseCallback.*")
        quiet_trainer(max_steps=1, callbacks=[AmuseCallback()]).fit(TinyNet(), loader(8))


def test_lightning_cli_injects_an_amuse_optimizer_callable(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
model:
  class_path: {CLIModel.__module__}.CLIModel
  init_args:
    hidden: 6
    optimizer:
      class_path: amuse_lightning.AMUSE
      init_args:
        lr: 0.02
        beta1: 0.9
        warmup_steps: 1
        weight_decay: 0.01
trainer:
  max_steps: 2
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
"""
    )
    cli = LightningCLI(
        LightningModule,
        subclass_mode_model=True,
        args=["--config", str(config)],
        run=False,
        save_config_callback=None,
    )
    assert isinstance(cli.model, CLIModel) and cli.model.hidden.out_features == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.trainer.fit(cli.model, loader())
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is AMUSE
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["beta1"] == 0.9
    assert all(g["step"] == 2 for g in optimizer.param_groups)
    decays = {(g["use_muon"], g["weight_decay"]) for g in optimizer.param_groups}
    assert decays == {(True, 0.01), (False, 0.01), (False, 0.0)}
