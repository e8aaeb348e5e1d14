"""Runnable examples for the ``amuse-lightning`` CLI: CIFAR-style ResNets and timm ViTs trained
with AMUSE on Fashion-MNIST, CIFAR-10/100 and ImageNet-layout folders (configs in ``configs/``)."""

from amuse_lightning.examples.classifier import ImageClassifier, ResNetClassifier, TimmClassifier
from amuse_lightning.examples.data import (
    CIFARDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticImageDataModule,
    make_synthetic_image_folder,
)
from amuse_lightning.examples.models import CifarResNet, resnet18_cifar

__all__ = [
    "CIFARDataModule",
    "CifarResNet",
    "FashionMNISTDataModule",
    "ImageClassifier",
    "ImageFolderDataModule",
    "ResNetClassifier",
    "SyntheticImageDataModule",
    "TimmClassifier",
    "make_synthetic_image_folder",
    "resnet18_cifar",
]
