"""Which side a tensor takes once it sits in a param group: the one rule every layer shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def uses_muon(group: Mapping[str, Any], param: Tensor) -> bool:
    """Whether ``param`` of param group ``group`` takes the Muon update (else the fallback).

    The group decides when it says so: ``group["use_muon"]`` first, else timm's
    ``group["use_fallback"]`` negated. A group that says neither (a flat parameter list) sends
    matrices and conv kernels (``param.ndim >= 2``) to Muon and everything else to the fallback,
    which is how :class:`amuse_lightning.AMUSE` splits such a group. Groups built by
    :meth:`Partition.param_groups` always say ``use_muon``, so the finer rules of
    :func:`partition_parameters` (embeddings, stem, head to the fallback) hold for them.
    """
    if "use_muon" in group:
        return bool(group["use_muon"])
    if "use_fallback" in group:
        return not group["use_fallback"]
    return param.ndim >= 2
