"""Leave no trace in a run's randomness: save every random stream, restore it afterwards.

Work done on the side of a training run (re-estimating BatchNorm statistics with training
batches, a finisher run on a copy) draws random numbers: from the global streams (Python,
NumPy, torch CPU and CUDA) and from random-number generators that a data source keeps itself (a
sampler's ``torch.Generator``, an ``IterableDataset``'s ``numpy.random.Generator``, a transform's
``random.Random``). :func:`preserved_random_state` restores all of them on exit. The generators a
data source keeps are found by :func:`find_generators`, which walks the attributes of the objects
it is given (a DataLoader, its dataset, sampler, transforms, ...). :func:`preserved_data_state`
also puts back the plain attributes of a loader's dataset and samplers (a position, a counter).
"""

from __future__ import annotations

import contextlib
import functools
import random
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

try:
    import numpy
except ImportError:  # pragma: no cover - numpy ships with torch in practice
    numpy = None  # type: ignore[assignment]

__all__ = [
    "data_parts",
    "find_generators",
    "preserved_attributes",
    "preserved_data_state",
    "preserved_random_state",
]

#: How many objects :func:`find_generators` looks at before it stops (large data structures
#: such as lists of samples are not walked element by element past this).
MAX_OBJECTS = 5_000
_LEAVES = (str, bytes, int, float, bool, complex, type(None), torch.Tensor, torch.nn.Module)


def _is_generator(value: Any) -> bool:
    if isinstance(value, (torch.Generator, random.Random)):
        return True
    if numpy is not None:
        return isinstance(value, (numpy.random.Generator, numpy.random.RandomState))
    return False


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if numpy is not None and isinstance(value, numpy.ndarray):
        return []
    state = getattr(value, "__dict__", None)
    children = list(state.values()) if isinstance(state, dict) else []
    for slot in getattr(type(value), "__slots__", ()):
        if isinstance(slot, str) and hasattr(value, slot):
            children.append(getattr(value, slot))
    if isinstance(value, functools.partial):
        children += [value.func, *value.args, *value.keywords.values()]
    closure = value.__closure__ if isinstance(value, types.FunctionType) else None
    for cell in closure or ():  # what a function closes over
        with contextlib.suppress(ValueError):  # an empty cell
            children.append(cell.cell_contents)
    return children


def find_generators(*sources: Any) -> list[Any]:
    """Random-number generators reachable from ``sources`` through attributes, lists, tuples,
    dict values, the variables a function closes over and the arguments of a
    ``functools.partial`` (each once, breadth first, at most :data:`MAX_OBJECTS` objects looked at):
    ``torch.Generator``, ``random.Random``, ``numpy.random.Generator`` and ``RandomState``.
    Tensors, modules and NumPy arrays are not walked into."""
    found: list[Any] = []
    seen: set[int] = set()
    queue = list(sources)
    visited = 0
    while queue and visited < MAX_OBJECTS:
        value = queue.pop(0)
        if id(value) in seen:
            continue
        seen.add(id(value))
        visited += 1
        if _is_generator(value):
            found.append(value)
            continue
        if isinstance(value, _LEAVES):
            continue
        queue.extend(_children(value))
        owner = getattr(value, "__self__", None)  # a bound method (e.g. a collate_fn)
        if owner is not None and not isinstance(owner, _LEAVES):
            queue.append(owner)
    return found


def _get_state(generator: Any) -> Any:
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    if isinstance(generator, random.Random):
        return generator.getstate()
    if isinstance(generator, numpy.random.Generator):
        return generator.bit_generator.state
    return generator.get_state()  # numpy.random.RandomState


def _set_state(generator: Any, state: Any) -> None:
    if isinstance(generator, torch.Generator):
        generator.set_state(state)
    elif isinstance(generator, random.Random):
        generator.setstate(state)
    elif isinstance(generator, numpy.random.Generator):
        generator.bit_generator.state = state
    else:
        generator.set_state(state)


@contextmanager
def preserved_random_state(*sources: Any) -> Iterator[None]:
    """Restore on exit the global random streams (Python, NumPy, torch CPU and CUDA) and every
    generator :func:`find_generators` finds in ``sources`` (generators themselves, or objects
    holding them such as a DataLoader), also after an exception.

    Generators are restored, other mutable state of a data source is not: an ``IterableDataset``
    that counts its own position, for example, would still see the extra iteration.
    """
    generators = find_generators(*sources)
    python_state = random.getstate()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_state = numpy.random.get_state() if numpy is not None else None
    generator_states = [_get_state(g) for g in generators]
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if numpy is not None:
            numpy.random.set_state(numpy_state)
        for generator, state in zip(generators, generator_states, strict=True):
            _set_state(generator, state)


def data_parts(source: Any) -> list[Any]:
    """The objects a pass over ``source`` may change: for a DataLoader its dataset, sampler and
    batch sampler (and the batch sampler's sampler); for a wrapper that keeps its DataLoader in
    ``_dataloader`` (Lightning Fabric's) the wrapper and those; otherwise ``source`` itself."""
    if source is None or isinstance(source, _LEAVES):
        return []
    loader = source if isinstance(source, torch.utils.data.DataLoader) else None
    inner = getattr(source, "_dataloader", None)
    if loader is None and isinstance(inner, torch.utils.data.DataLoader):
        loader = inner
    if loader is None:
        return [source]
    batch_sampler = loader.batch_sampler
    parts = [loader.dataset, loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)]
    if loader is not source:
        parts.insert(0, source)
    unique: list[Any] = []
    for part in parts:
        if part is not None and all(part is not u for u in unique):
            unique.append(part)
    return unique


@contextmanager
def preserved_attributes(*objects: Any) -> Iterator[None]:
    """Put every attribute of ``objects`` back on exit (a shallow restore of ``vars(obj)``):
    a counter or a position that a pass over a data source moves, or an attribute it replaces,
    is what it was before. Objects mutated in place inside an attribute are not restored."""
    saved = [
        (obj, dict(obj.__dict__))
        for obj in objects
        if isinstance(getattr(obj, "__dict__", None), dict)
    ]
    try:
        yield
    finally:
        for obj, attributes in saved:
            state = obj.__dict__
            for name in [n for n in state if n not in attributes]:
                del state[name]
            state.update(attributes)


@contextmanager
def preserved_data_state(*sources: Any) -> Iterator[None]:
    """:func:`preserved_random_state` over ``sources`` plus :func:`preserved_attributes` of their
    :func:`data_parts`: a side pass over a DataLoader (BatchNorm re-estimation, a finisher)
    leaves the training run's data order and random streams as they were."""
    parts = [part for source in sources for part in data_parts(source)]
    with preserved_random_state(*sources), preserved_attributes(*parts):
        yield
