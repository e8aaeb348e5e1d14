"""Which side a tensor takes once it sits in a param group: the one rule every layer shares.

The rule is the optimizer's own (:func:`amuse_lightning.optim.validation.uses_muon`), so the
partition, the Lightning layer and :class:`amuse_lightning.AMUSE` cannot disagree. Groups built
by :meth:`Partition.param_groups` always say ``use_muon``, so the finer rules of
:func:`partition_parameters` (embeddings, stem, head to the fallback) hold for them.
"""

from amuse_lightning.optim.validation import uses_muon

__all__ = ["uses_muon"]
