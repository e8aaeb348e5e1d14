"""Byte-level text from the Python standard library: a corpus every machine has, no download.

The corpus is the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, minus test suites
(``test``/``tests``/``idle_test`` folders) and installed packages (``site-packages``), taken in
a fixed order (by the SHA-1 of the path relative to the library root, which mixes the packages)
until ``max_bytes`` is reached. Each file goes whole to one split, chosen by the same hash, so
validation and test text comes from files the model never trained on. Files are encoded as raw
bytes (vocabulary 256) and joined with a NUL byte (which Python source does not contain) as the
document separator. The corpus depends on the Python version; :func:`corpus_summary` says which.

Training batches are random windows of ``context + 1`` bytes (inputs and next-byte targets). A
batch is a pure function of ``(seed, global batch index)`` (:func:`sample_batch`), so a resumed
run draws the same batches as an uninterrupted one. Evaluation uses fixed, non-overlapping
windows (:func:`eval_windows`); the loss is the mean next-byte cross-entropy in nats per byte,
every position counted once (early positions of a window see little context).
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

__all__ = [
    "EXCLUDED_DIRS",
    "TextCorpus",
    "TextDataModule",
    "corpus_summary",
    "eval_windows",
    "load_text_corpus",
    "sample_batch",
    "stdlib_files",
    "unigram_entropy",
]

EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
"""Folder names whose ``.py`` files are left out of the corpus."""

SEPARATOR = 0
"""Byte put between two files (NUL)."""


class TextCorpus(NamedTuple):
    """Token ids (``torch.long``, values in ``[0, 256)``) of the three file-disjoint splits."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def _path_hash(relative: str) -> int:
    return int.from_bytes(hashlib.sha1(relative.encode()).digest()[:8], "big")


def stdlib_root() -> Path:
    """The standard library folder of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | Path | None = None, max_bytes: int = 6_000_000) -> list[str]:
    """Relative paths (POSIX) of the corpus files, in corpus order, totalling ``<= max_bytes``.

    Order: the SHA-1 of the relative path (ties impossible in practice; the path breaks them).
    A file that would cross ``max_bytes`` is skipped and the next ones are tried.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    base = Path(root) if root is not None else stdlib_root()
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a folder; pass root= the Python library folder")
    candidates = []
    for path in base.rglob("*.py"):
        relative = path.relative_to(base)
        if EXCLUDED_DIRS.isdisjoint(relative.parts[:-1]) and path.is_file():
            candidates.append((_path_hash(relative.as_posix()), relative.as_posix(), path))
    candidates.sort()
    chosen, total = [], 0
    for _, relative, path in candidates:
        size = path.stat().st_size
        if total + size <= max_bytes:
            chosen.append(relative)
            total += size
    if not chosen:
        raise ValueError(f"no .py file under {base} fits max_bytes={max_bytes}; raise it")
    return chosen


def split_of(relative: str, val_fraction: float, test_fraction: float) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a file, from a second hash of its path."""
    bucket = (_path_hash("split:" + relative) % 10_000) / 10_000
    if bucket < val_fraction:
        return "val"
    if bucket < val_fraction + test_fraction:
        return "test"
    return "train"


@functools.lru_cache(maxsize=4)
def _load(
    root: str | None, max_bytes: int, val_fraction: float, test_fraction: float
) -> tuple[TextCorpus, dict[str, int]]:
    base = Path(root) if root is not None else stdlib_root()
    parts: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
    for relative in stdlib_files(base, max_bytes):
        data = (base / relative).read_bytes().replace(bytes([SEPARATOR]), b"")
        parts[split_of(relative, val_fraction, test_fraction)].append(data)
    tensors, counts = {}, {}
    for name, chunks in parts.items():
        if not chunks:
            raise ValueError(
                f"the {name} split got no file (max_bytes={max_bytes}, val_fraction="
                f"{val_fraction}, test_fraction={test_fraction}); raise max_bytes or the fraction"
            )
        joined = bytes([SEPARATOR]).join(chunks) + bytes([SEPARATOR])
        tensors[name] = torch.frombuffer(bytearray(joined), dtype=torch.uint8).long()
        counts[f"{name}_files"] = len(chunks)
    return TextCorpus(**tensors), counts


def load_text_corpus(
    max_bytes: int = 6_000_000,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    root: str | Path | None = None,
) -> TextCorpus:
    """``(train, val, test)`` byte ids of the standard-library corpus; deterministic.

    Args:
        max_bytes: cap on the total size of the chosen files.
        val_fraction, test_fraction: expected share of files in validation / test.
        root: library folder (default: the running Python's ``stdlib``).

    The tensors are cached per argument set; clone before writing into them.
    """
    _check_fractions(val_fraction, test_fraction)
    return _load(None if root is None else str(root), max_bytes, val_fraction, test_fraction)[0]


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1), got {val_fraction}, {test_fraction}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must leave files for training (< 1)")


def corpus_summary(
    max_bytes: int = 6_000_000,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    root: str | Path | None = None,
) -> str:
    """One line: Python version, library folder, files and bytes per split."""
    _check_fractions(val_fraction, test_fraction)
    corpus, counts = _load(
        None if root is None else str(root), max_bytes, val_fraction, test_fraction
    )
    splits = ", ".join(
        f"{name} {counts[name + '_files']} files / {len(ids):,} bytes"
        for name, ids in corpus._asdict().items()
    )
    where = root if root is not None else stdlib_root()
    return f"Python {platform.python_version()} stdlib .py corpus at {where}: {splits}"


def unigram_entropy(ids: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Cross-entropy in nats per byte of ``ids`` under the byte frequencies of ``reference``
    (default ``ids`` itself: its unigram entropy), add-one smoothed: the loss of a model that
    ignores context."""
    counts = torch.bincount((ids if reference is None else reference), minlength=256).double()
    log_p = torch.log((counts + 1) / (counts.sum() + 256))
    return float(-log_p[ids].mean())


def sample_batch(
    ids: torch.Tensor, batch_size: int, context: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows ``(inputs, targets)``, each ``(batch_size, context)``, targets shifted by
    one. The same ``(seed, step)`` always gives the same batch (NumPy's PCG64 seeded with both)."""
    if len(ids) < context + 2:
        raise ValueError(f"{len(ids)} tokens cannot hold a window of context+1={context + 1}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got {seed}, {step}")
    rng = np.random.default_rng([seed, step])  # SeedSequence of both: no two pairs collide
    starts = torch.from_numpy(rng.integers(0, len(ids) - context, size=batch_size))
    windows = ids[starts[:, None] + torch.arange(context + 1)]
    return windows[:, :-1], windows[:, 1:]


def eval_windows(
    ids: torch.Tensor, context: int, max_windows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows (stride ``context``): every target position appears once.
    With ``max_windows`` the windows are an evenly spaced subset (first and last kept)."""
    count = (len(ids) - 1) // context
    if count < 1:
        raise ValueError(f"{len(ids)} tokens cannot hold a window of context+1={context + 1}")
    index = torch.arange(count)
    if max_windows is not None and count > max_windows:
        index = torch.linspace(0, count - 1, max_windows).round().long()
    windows = ids[index[:, None] * context + torch.arange(context + 1)]
    return windows[:, :-1], windows[:, 1:]


class RandomWindowBatches(Dataset):
    """Item ``i`` is the whole training batch ``sample_batch(ids, ..., seed, step=i)``."""

    def __init__(self, ids: torch.Tensor, batch_size: int, context: int, seed: int) -> None:
        self.ids, self.batch_size, self.context, self.seed = ids, batch_size, context, seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_batch(self.ids, self.batch_size, self.context, self.seed, step)


class EpochSteps(Sampler[int]):
    """Yields the global batch indices of one epoch: ``epoch * n, ..., epoch * n + n - 1``.
    Lightning calls :meth:`set_epoch` before each training epoch (also after a resume)."""

    def __init__(self, batches_per_epoch: int) -> None:
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.batches_per_epoch
        return iter(range(start, start + self.batches_per_epoch))


class TextDataModule(LightningDataModule):
    """Byte-level standard-library text for :class:`~.char_gpt.CharGPTModule` (vocabulary 256).

    An "epoch" is ``batches_per_epoch`` random-window batches; batch ``k`` of epoch ``e`` is
    :func:`sample_batch` at ``step = e * batches_per_epoch + k``, so it depends only on
    ``(seed, e, k)``. Validation and test are fixed windows (at most ``eval_windows`` each).

    Args:
        context: tokens per window (the model's context length).
        batch_size: training windows per batch (evaluation batches too).
        batches_per_epoch: training batches per epoch.
        eval_windows: cap on validation / test windows (``None``: all).
        seed: seed of the training windows (independent of the global torch seed).
        max_bytes, val_fraction, test_fraction, root: as :func:`load_text_corpus`.
    """

    def __init__(
        self,
        context: int = 128,
        batch_size: int = 32,
        batches_per_epoch: int = 200,
        eval_windows: int | None = 512,
        seed: int = 0,
        max_bytes: int = 6_000_000,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        root: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("context", context), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        _check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.context, self.batch_size, self.seed = context, batch_size, seed
        self.batches_per_epoch, self.max_windows = batches_per_epoch, eval_windows
        self.corpus_args = dict(
            max_bytes=max_bytes, val_fraction=val_fraction, test_fraction=test_fraction, root=root
        )
        self.corpus: TextCorpus | None = None

    @property
    def vocab_size(self) -> int:
        return 256

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = load_text_corpus(**self.corpus_args)
            rank_zero_info(self.summary())

    def summary(self) -> str:
        """The corpus line of :func:`corpus_summary` (Python version, files, bytes)."""
        return corpus_summary(**self.corpus_args)

    def train_dataloader(self) -> DataLoader:
        batches = RandomWindowBatches(self.corpus.train, self.batch_size, self.context, self.seed)
        return DataLoader(batches, batch_size=None, sampler=EpochSteps(self.batches_per_epoch))

    def _eval_loader(self, ids: torch.Tensor) -> DataLoader:
        inputs, targets = eval_windows(ids, self.context, self.max_windows)
        return DataLoader(TensorDataset(inputs, targets), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.corpus.val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.corpus.test)


def bits_per_byte(nats: float) -> float:
    """Nats per byte -> bits per byte."""
    return nats / math.log(2)
