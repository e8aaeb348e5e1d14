"""Batches for work on the side of a training run, taken without touching the run's data stream.

Re-estimating BatchNorm statistics at ``x`` and a finisher's cooldown both need training batches
while the run stands somewhere in an epoch. Whether the run can continue unchanged afterwards
depends on where those batches come from:

- A ``DataLoader`` (also inside Lightning Fabric's wrapper, which keeps it in ``_dataloader``) is
  never iterated itself: ``iter(loader)`` on a loader with ``persistent_workers=True`` resets
  the training loop's live iterator. :func:`fresh_loader` builds a loader over the same dataset,
  sampler / batch sampler, collate function, worker settings and generator, with an iterator of
  its own. A loader whose ``IterableDataset`` is its own iterator (``__iter__`` returns the
  dataset) with ``num_workers=0`` is refused: any second pass over it takes batches out of the
  training stream (:func:`check_separate_iterator`).
- An iterable that hands out a new iterator on every ``iter()`` (a list of batches, a map-style
  dataset, most containers) is iterated anew for every pass.
- A function returning such an iterable (or a new iterator) is called for every pass.
- A one-shot iterator (a generator, ``itertools.cycle(loader)``, ``iter(loader)``, the training
  loop's own iterator) is refused (:func:`check_reiterable`): a side pass would use it up, and
  the loader behind it, whose random generators decide the run's data order, cannot be found.

What a pass draws from random streams and what it changes in a data source's attributes is put
back by :func:`~.random_state.preserved_data_state` around the whole side job.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

__all__ = [
    "Batches",
    "as_loader",
    "check_reiterable",
    "check_separate_iterator",
    "fresh_loader",
    "one_pass",
    "passes",
]

#: A source of batches for a side pass: a re-iterable (DataLoader, list, ...) or a function
#: returning one (or a new iterator).
Batches = Iterable[Any] | Callable[[], Iterable[Any]]


def is_function(source: Any) -> bool:
    """Whether ``source`` is a function to call for a pass rather than an iterable."""
    return callable(source) and not isinstance(source, Iterable)


def check_reiterable(source: Any, argument: str, user: str) -> None:
    """Refuse a one-shot iterator as ``argument`` of ``user`` (a ``TypeError`` saying what to
    pass). Nothing is iterated to decide: an iterator is an object with ``__next__``."""
    if source is None or is_function(source) or not isinstance(source, Iterator):
        return
    raise TypeError(
        f"{argument} is a one-shot iterator ({type(source).__name__}): {user} would use it up, "
        "and behind it (a generator, itertools.cycle(loader), iter(loader)) it cannot find the "
        "loader's random generators, so the run's data order could change. Pass the DataLoader "
        f"itself, a list of batches, or a function that returns a new iterator: {user} then "
        "iterates a fresh loader over the same dataset and sampler (again when it runs out) "
        "and leaves the run's iterator and random streams as they were."
    )


def as_loader(source: Any) -> DataLoader | None:
    """The ``DataLoader`` that ``source`` is, or wraps in ``_dataloader`` (Lightning Fabric's
    ``setup_dataloaders``); ``None`` for anything else."""
    if isinstance(source, DataLoader):
        return source
    inner = getattr(source, "_dataloader", None)
    return inner if isinstance(inner, DataLoader) else None


def fresh_loader(loader: DataLoader) -> DataLoader:
    """A loader over the same data as ``loader`` (dataset, sampler or batch sampler, collate
    function, workers, generator) with an iterator of its own: iterating it never touches
    ``loader``'s iterator (persistent workers, stateful loaders). Its workers are not kept."""
    common: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "generator": loader.generator,
    }
    if loader.num_workers > 0:
        common["multiprocessing_context"] = loader.multiprocessing_context
        common["prefetch_factor"] = loader.prefetch_factor
    if isinstance(loader.dataset, IterableDataset):
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **common
        )
    if loader.batch_sampler is None:  # batch_size=None: the sampler picks whole batches
        return DataLoader(loader.dataset, batch_size=None, sampler=loader.sampler, **common)
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)


def check_separate_iterator(
    loader: Any, remedy: str, error: type[Exception] = ValueError, what: str = "This"
) -> None:
    """Refuse a loader whose ``IterableDataset`` is its own iterator (read in this process,
    ``num_workers=0``): a second pass over it would take batches out of the training stream.
    ``remedy`` ends the message (the caller's way to do without the pass)."""
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, IterableDataset) or getattr(loader, "num_workers", 0) > 0:
        return
    if isinstance(dataset, Iterator):
        raise error(
            f"{what} needs its own pass over the training data, but "
            f"{type(dataset).__name__}.__iter__ returns the dataset itself, so that pass would "
            "take batches out of the training stream. Make __iter__ return a new iterator "
            f"(e.g. write it as a generator function), {remedy}."
        )


def one_pass(source: Batches, argument: str, remedy: str) -> Iterator[Any]:
    """A new iterator over ``source`` for one side pass (see the module docstring): a fresh
    loader for a DataLoader (re-wrapped for Fabric's wrapper), ``iter(source)`` for another
    re-iterable, the function's result for a function. ``argument`` and ``remedy`` word the
    refusals."""
    if is_function(source):
        source = source()  # type: ignore[operator]
        if isinstance(source, Iterator) and as_loader(source) is None:
            return source  # a new iterator made for this pass
    else:
        check_reiterable(source, argument, "this pass")
    loader = as_loader(source)
    if loader is None:
        return iter(source)  # type: ignore[arg-type]
    check_separate_iterator(loader, remedy, what=f"Reading {argument}")
    if source is loader:
        return iter(fresh_loader(loader))
    wrapper = copy.copy(source)  # its pass counter moves on the copy only
    wrapper._dataloader = fresh_loader(loader)  # type: ignore[attr-defined]
    return iter(wrapper)


def passes(source: Batches, argument: str, remedy: str) -> Iterator[Any]:
    """The batches of ``source``, pass after pass without end (each pass by :func:`one_pass`);
    a pass that yields nothing raises ``ValueError`` instead of looping forever."""
    while True:
        empty = True
        iterator = one_pass(source, argument, remedy)
        try:
            for batch in iterator:
                empty = False
                yield batch
        finally:
            del iterator  # a loader's workers end here
        if empty:
            raise ValueError(f"{argument} gave no batches; pass a data source with batches in it.")
