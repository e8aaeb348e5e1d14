"""Runnable examples for the ``amuse-lightning`` CLI: CIFAR-style ResNets and timm ViTs trained
with AMUSE on Fashion-MNIST, CIFAR-10/100 and ImageNet-layout folders, and a byte-level GPT on
the Python standard library's source (configs in ``amuse_lightning/configs/``, run by name:
``amuse-lightning fit --config fashion_mnist_resnet``)."""

from amuse_lightning.examples.char_gpt import CharGPT, CharGPTModule, build_char_gpt
from amuse_lightning.examples.classifier import ImageClassifier, ResNetClassifier, TimmClassifier
from amuse_lightning.examples.data import (
    CIFARDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticImageDataModule,
    make_synthetic_image_folder,
)
from amuse_lightning.examples.models import CifarResNet, resnet18_cifar
from amuse_lightning.examples.text_data import (
    TextDataModule,
    eval_windows,
    load_text_corpus,
    sample_batch,
)

__all__ = [
    "CIFARDataModule",
    "CharGPT",
    "CharGPTModule",
    "CifarResNet",
    "FashionMNISTDataModule",
    "ImageClassifier",
    "ImageFolderDataModule",
    "ResNetClassifier",
    "SyntheticImageDataModule",
    "TextDataModule",
    "TimmClassifier",
    "build_char_gpt",
    "eval_windows",
    "load_text_corpus",
    "make_synthetic_image_folder",
    "resnet18_cifar",
    "sample_batch",
]
