"""PEP 562 lazy names: a package's public names imported from their modules on first access.

``import amuse_lightning`` (and ``amuse_lightning.cli`` / ``.lightning``) must load nothing heavy,
so their ``__init__`` modules map each public name to the module that defines it and resolve it
here when it is first read; the value is then cached in the package's namespace.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, names: Mapping[str, str], namespace: dict[str, Any],
    subpackages: frozenset[str] = frozenset(),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:  # fmt: skip
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``names`` maps a public name to its
    module; ``subpackages`` are imported as ``package.<name>`` when read as attributes."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (the PEP 562 name)
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # cache: later look-ups skip this function
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(names) | subpackages)

    return __getattr__, __dir__
