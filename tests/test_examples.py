"""The example models, datamodules and LightningModules (amuse_lightning.examples)."""

from __future__ import annotations

import functools
import warnings

import lightning as pl
import numpy as np
import pytest
import torch

from amuse_lightning import AMUSE, AmuseCallback
from amuse_lightning.examples.classifier import (
    ResNetClassifier,
    TimmClassifier,
    optimizer_class_of,
    warmup_steps_from_fraction,
    with_warmup_steps,
)
from amuse_lightning.examples.data import (
    DEBIAN_FASHION_MNIST,
    BatchAugment,
    CIFARDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticImageDataModule,
    make_synthetic_image_folder,
    read_idx,
    split_train_val,
)
from amuse_lightning.examples.models import CifarResNet, resnet18_cifar
from amuse_lightning.lightning.mixin import default_amuse_factory
from tests.helpers.fashion import write_fake_fashion_mnist, write_idx
from tests.helpers.trainers import quiet_trainer

# ----------------------------------------------------------------------------- models


def test_resnet18_cifar_is_the_standard_size_and_shape():
    model = resnet18_cifar(num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 11_173_962  # the CIFAR ResNet-18 of the literature (10 classes)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_narrow_resnet_forward_shapes(in_channels, size):
    model = CifarResNet(num_classes=7, in_channels=in_channels, width=8, num_blocks=(1, 1, 1, 1))
    x = torch.randn(3, in_channels, size, size)
    assert model(x).shape == (3, 7)
    assert model.forward_features(x).shape == (3, 64)


def test_resnet_rejects_bad_num_blocks():
    with pytest.raises(ValueError, match="four positive ints"):
        CifarResNet(num_blocks=(2, 2, 2))


# ----------------------------------------------------------------------------- batches


def test_batch_augment_eval_only_normalises():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    collate = BatchAugment(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), train=False)
    x, y = collate([(images[i], torch.tensor(i)) for i in range(4)])
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / 0.2)
    assert y.tolist() == [0, 1, 2, 3]


def test_batch_augment_crops_are_shifted_windows_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.rand(16, 2, 6, 6)
    p = 2
    out = BatchAugment((0.0,), (1.0,), train=True, crop_padding=p, hflip=0.5).augment(images)
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    shifts_seen, flips = set(), 0
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, dy : dy + 6, dx : dx + 6].flip(2)
                if flip
                else padded[i, :, dy : dy + 6, dx : dx + 6],
            )
        ]
        assert matches, f"image {i} is not a (flipped) window of its padded input"
        shifts_seen.add(matches[0][:2])
        flips += matches[0][2]
    assert len(shifts_seen) > 3 and 0 < flips < len(images)  # random, not constant


def test_split_is_seeded_disjoint_and_complete():
    train_a, val_a = split_train_val(100, 10, seed=3)
    train_b, val_b = split_train_val(100, 10, seed=3)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert len(val_a) == 10 and sorted(torch.cat([train_a, val_a]).tolist()) == list(range(100))
    assert not torch.equal(split_train_val(100, 10, seed=4)[1], val_a)
    with pytest.raises(ValueError, match="val_size"):
        split_train_val(10, 10, seed=0)


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_read_idx_round_trip_and_bad_magic(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    write_idx(tmp_path / "b-idx3-ubyte", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx3-ubyte"), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_reads_idx_files_from_root(tmp_path):
    write_fake_fashion_mnist(tmp_path, n_train=200, n_test=50)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=40, batch_size=16)
    assert dm.find_local() == tmp_path
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (160, 40, 50)
    expected = torch.from_numpy(read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").copy()).long()
    assert torch.equal(dm.test_set.labels, expected)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_fashion_mnist_offline_without_files_names_the_folders(tmp_path, monkeypatch):
    module = "amuse_lightning.examples.data.fashion_mnist"
    monkeypatch.setattr(f"{module}.DEBIAN_FASHION_MNIST", tmp_path / "none")
    (tmp_path / "empty").mkdir()
    dm = FashionMNISTDataModule(root=str(tmp_path / "empty"), download=False)
    with pytest.raises(FileNotFoundError, match="empty") as err:
        dm.setup()
    assert "dataset-fashion-mnist" in str(err.value)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's Fashion-MNIST missing")
def test_fashion_mnist_from_debian_package_has_the_official_sizes():
    dm = FashionMNISTDataModule()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    assert torch.bincount(dm.test_set.labels).tolist() == [1000] * 10


def test_cifar_missing_offline_names_the_expected_folder(tmp_path):
    dm = CIFARDataModule(root=str(tmp_path), dataset="cifar100", download=False)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="cifar10"):
        CIFARDataModule(dataset="cifar11")


# ----------------------------------------------------------------------------- image folders


def test_image_folder_mixup_gives_soft_targets_and_val_gives_labels(tmp_path):
    make_synthetic_image_folder(tmp_path, num_classes=3, images_per_class=4, image_size=32)
    dm = ImageFolderDataModule(
        str(tmp_path), model_name="vit_tiny_patch16_224", img_size=32, batch_size=4, num_workers=0
    )
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.data_config()["input_size"] == (3, 32, 32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 3) and y.is_floating_point()
    torch.testing.assert_close(y.sum(1), torch.ones(4))
    x_val, y_val = next(iter(dm.val_dataloader()))
    assert x_val.shape == (4, 3, 32, 32) and y_val.dtype == torch.int64


def test_image_folder_missing_split_says_what_layout_is_expected(tmp_path):
    make_synthetic_image_folder(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match="val"):
        ImageFolderDataModule(str(tmp_path), num_workers=0).setup("fit")


# ----------------------------------------------------------------------------- classifiers


def test_loss_matches_cross_entropy_for_labels_and_soft_targets():
    model = ResNetClassifier(num_classes=4, width=4, num_blocks=(1, 1, 1, 1), label_smoothing=0.1)
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(model.loss(logits, labels), expected)
    soft = torch.softmax(torch.randn(5, 4), dim=1)
    expected_soft = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(model.loss(logits, soft), expected_soft)


def test_warmup_fraction_helpers():
    assert warmup_steps_from_fraction(0.05, 1716) == 86
    assert warmup_steps_from_fraction(0.05, 3) == 2  # never 1: beta_t would jump to 1
    assert warmup_steps_from_fraction(0.05, float("inf")) is None
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_steps_from_fraction(1.5, 10)

    def groups():
        return [{"params": [torch.nn.Parameter(torch.zeros(3, 3))], "use_muon": True}]

    factory = with_warmup_steps(default_amuse_factory(lr=0.02), 7)
    opt = factory(groups())
    assert isinstance(opt, AMUSE)
    assert opt.param_groups[0]["warmup_steps"] == 7 and opt.param_groups[0]["lr"] == 0.02
    partial = functools.partial(AMUSE, lr=0.03, warmup_steps=100)
    assert optimizer_class_of(partial) is AMUSE
    assert with_warmup_steps(partial, 5)(groups()).param_groups[0]["warmup_steps"] == 5
    assert with_warmup_steps(functools.partial(torch.optim.SGD, lr=0.1), 5) is None


def test_resnet_learns_synthetic_data_and_ends_holding_x():
    pl.seed_everything(0)
    dm = SyntheticImageDataModule(num_classes=4, image_size=16, num_train=384, val_size=64)
    model = ResNetClassifier(num_classes=4, width=8, num_blocks=(1, 1, 1, 1), warmup_fraction=0.05)
    trainer = quiet_trainer(max_epochs=3, callbacks=[AmuseCallback(bn_recalibration_batches=4)])
    trainer.fit(model, dm)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, AMUSE)
    total = trainer.estimated_stepping_batches
    assert optimizer.param_groups[0]["warmup_steps"] == round(0.05 * total)
    assert not optimizer.param_groups[0]["train_mode"]  # after fit the module holds x
    assert trainer.callback_metrics["val_acc"] > 0.9
    result = trainer.test(model, dm, verbose=False)[0]
    assert result["test_acc"] > 0.9


def test_the_example_modules_anneal_over_the_run_also_without_the_callback():
    """Their default AMUSE says beta_anneal_steps='auto'; configure_optimizers fills the count in
    (AmuseCallback would at fit start), so a run without the callback still trains, warned."""
    dm = SyntheticImageDataModule(num_classes=3, image_size=8, num_train=96, val_size=32)
    model = ResNetClassifier(num_classes=3, width=4, num_blocks=(1, 1, 1, 1))
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    with pytest.warns(UserWarning, match="no AmuseCallback"):
        trainer.fit(model, dm)
    groups = trainer.optimizers[0].param_groups
    assert {(g["beta_anneal_steps"], g["rho"]) for g in groups} == {(3, 0.0)}
    assert trainer.global_step == 3


def test_warmup_fraction_none_keeps_the_factory_value():
    dm = SyntheticImageDataModule(num_classes=3, image_size=8, num_train=96, val_size=32)
    model = ResNetClassifier(
        num_classes=3,
        width=4,
        num_blocks=(1, 1, 1, 1),
        warmup_fraction=None,
        optimizer=default_amuse_factory(warmup_steps=11),
    )
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, callbacks=[AmuseCallback()])
    trainer.fit(model, dm)
    assert trainer.optimizers[0].param_groups[0]["warmup_steps"] == 11


def test_non_amuse_optimizer_trains_with_a_warning_about_warmup():
    dm = SyntheticImageDataModule(num_classes=3, image_size=8, num_train=96, val_size=32)
    model = ResNetClassifier(
        num_classes=3,
        width=4,
        num_blocks=(1, 1, 1, 1),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        warmup_fraction=0.05,
    )
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, dm)
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    assert any("warmup_fraction" in str(w.message) for w in caught)


def test_timm_vit_partition_layer_decay_and_top5():
    model = TimmClassifier(
        "vit_tiny_patch16_224",
        num_classes=6,
        model_kwargs={"img_size": 32},
        layer_decay=0.5,
        drop_path_rate=0.0,
    )
    side = {name: info["use_muon"] for name, info in model.amuse_partition().by_name().items()}
    assert not side["model.patch_embed.proj.weight"] and not side["model.head.weight"]
    assert not side["model.cls_token"] and not side["model.pos_embed"]
    assert side["model.blocks.0.attn.qkv.weight"] and side["model.blocks.11.mlp.fc2.weight"]
    groups = model.amuse_param_groups(model.amuse_partition())
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5**13)  # 12 blocks + stem + head
    assert model.top_k == 5 and hasattr(model, "val_acc_topk")
    assert (
        TimmClassifier("vit_tiny_patch16_224", num_classes=3, model_kwargs={"img_size": 32}).top_k
        is None
    )  # top-5 of 3 classes is meaningless


def test_timm_vit_fits_image_folder_with_mixup(tmp_path):
    make_synthetic_image_folder(tmp_path, num_classes=3, images_per_class=4, image_size=32)
    dm = ImageFolderDataModule(
        str(tmp_path), model_name="vit_tiny_patch16_224", img_size=32, batch_size=4, num_workers=0
    )
    model = TimmClassifier(
        "vit_tiny_patch16_224", num_classes=3, model_kwargs={"img_size": 32}, layer_decay=0.75
    )
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, callbacks=[AmuseCallback()])
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert {g.get("lr_scale", 1.0) for g in trainer.optimizers[0].param_groups} != {1.0}
    predictions = trainer.predict(model, dm)
    assert predictions[0]["probs"].shape == (4, 3) and "target" in predictions[0]


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's Fashion-MNIST missing")
def test_fashion_mnist_short_run_reaches_real_accuracy():
    """200 AMUSE steps (~25k images, under 20 s on 2 cores) of the demo model: test x > 0.78."""
    pl.seed_everything(0)
    dm = FashionMNISTDataModule(batch_size=128, val_size=1000)
    model = ResNetClassifier(num_classes=10, in_channels=1, width=16, num_blocks=(1, 1, 1, 1))
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=200,
        limit_val_batches=0,
        callbacks=[AmuseCallback(bn_recalibration_batches=20)],
    )
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    assert result["test_acc"] > 0.78
