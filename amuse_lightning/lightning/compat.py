"""The one place that reads a private Lightning attribute.

Everything else in the Lightning layer uses public API. One thing has none: before the fit loop
sets up its data (the sanity check runs first), a train dataloader passed as
``trainer.fit(model, train_dataloaders=loader)`` is only reachable through the fit loop's data
source. :func:`private_attribute` reads it and, should a Lightning release rename it, fails with
an error that names the attribute and the way around it instead of an ``AttributeError`` deep
inside a hook.
"""

from __future__ import annotations

from typing import Any

import lightning

__all__ = ["private_attribute"]


def private_attribute(owner: Any, name: str, workaround: str) -> Any:
    """``getattr(owner, name)`` for a private Lightning attribute; a clear ``RuntimeError`` naming
    the Lightning version and ``workaround`` if it is missing."""
    try:
        return getattr(owner, name)
    except AttributeError as error:
        raise RuntimeError(
            f"amuse-lightning reads the private attribute {type(owner).__name__}.{name}, which "
            f"lightning {lightning.__version__} does not have (it was checked against lightning "
            f"2.6). {workaround}"
        ) from error
