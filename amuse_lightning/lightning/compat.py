"""The one place that reads a private Lightning attribute.

Everything else in the Lightning layer uses public API. One thing has none: before the fit loop
sets up its data (the sanity check runs first), a train dataloader passed as
``trainer.fit(model, train_dataloaders=loader)`` is only reachable through the fit loop's data
source, and without it a module's own ``train_dataloader`` cannot be told apart from it.
:func:`private_attribute` reads it and, should a Lightning release rename it, fails with an error
that names the attribute and the way around it instead of an ``AttributeError`` deep inside a
hook.
"""

from __future__ import annotations

from typing import Any

import lightning

__all__ = ["private_attribute"]


def private_attribute(owner: Any, path: str, workaround: str) -> Any:
    """``owner.<path>`` (dotted) for a private Lightning attribute; a clear ``RuntimeError``
    naming the attribute, the Lightning version and ``workaround`` if it is missing."""
    value = owner
    try:
        for name in path.split("."):
            value = getattr(value, name)
    except AttributeError as error:
        raise RuntimeError(
            f"amuse-lightning reads the private attribute {type(owner).__name__}.{path}, which "
            f"lightning {lightning.__version__} does not have (written against lightning 2.6). "
            f"{workaround}"
        ) from error
    return value
