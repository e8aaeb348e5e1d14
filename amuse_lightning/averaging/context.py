"""``averaged_weights``: the averaged model ``x`` in the parameters for a while, then ``y`` back.

While a schedule-free optimizer trains, the parameters hold the gradient point ``y``; the model
to evaluate, save or export is the average ``x``. One context manager does the whole round
trip, in any training loop::

    with averaged_weights(optimizer, model, bn_batches=train_loader, max_bn_batches=50):
        evaluate(model)            # x, with BatchNorm statistics re-estimated at x
        torch.save(model.state_dict(), "x.pt")
    # y and the training BatchNorm buffers are back bit for bit; the run continues unchanged

On entry it keeps an exact copy of ``y`` (``exact=True``), converts the parameters to ``x``
(``optimizer.eval()``) and, when asked, re-estimates the BatchNorm statistics at ``x`` with
training batches: a DataLoader is read through a fresh loader of its own (:mod:`.batches`), so
the training loop's iterator is never touched, and the pass runs inside
:func:`~.random_state.preserved_data_state`, so the run's random streams and its data sources'
positions are untouched. On exit (also after an exception) it writes ``y`` and the training
BatchNorm buffers back. Under data parallelism the ranks' BatchNorm estimates are merged into one
(every rank must enter together). :class:`AveragedWeights` also offers ``enter()`` /
``restore()`` for code whose "inside" spans several calls (the Lightning callback's hooks); one
object may be entered again and again, and re-estimates the statistics at every entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .batches import Batches, check_reiterable, one_pass
from .batchnorm import (
    batchnorm_buffer_names,
    batchnorm_layers,
    merge_batchnorm_across_ranks,
    reestimate_batchnorm,
    require_batches,
)
from .random_state import preserved_data_state
from .snapshot import load_buffers, snapshot_buffers
from .swap import WeightSwap

__all__ = ["AveragedWeights", "averaged_weights"]


class AveragedWeights:
    """``x`` in the parameters between :meth:`enter` and :meth:`restore` (or inside ``with``).

    Args:
        optimizer: a schedule-free optimizer (``train()``/``eval()`` and ``group["train_mode"]``:
            :class:`~amuse_lightning.AMUSE`, ``schedulefree.AdamWScheduleFree``, ...).
        module: the model the parameters belong to; needed for BatchNorm re-estimation.
        exact: keep a copy of ``y`` and write it back bit for bit (default), or convert back in
            place with ``optimizer.train()`` (no extra memory, ``y`` moves by rounding error).
            ``None`` uses ``swap``'s setting.
        swap: a :class:`~.swap.WeightSwap` of ``optimizer`` to reuse (its copy buffers are
            allocated once and kept between uses); a new one by default.
        bn_batches: batches to re-estimate BatchNorm statistics at ``x`` with, at every entry:
            a DataLoader (read through a fresh loader over the same dataset and sampler), another
            iterable that gives a new iterator on every ``iter()`` (a list of batches), or a
            function returning one (called at every entry). A one-shot iterator (a generator,
            ``iter(loader)``, ``itertools.cycle``) is refused: the pass would use it up.
            ``None`` keeps the statistics the module has. No batches at all is an error.
        max_bn_batches: use at most this many of ``bn_batches`` (all by default).
        bn_forward: ``bn_forward(module, batch)`` runs one batch through the module (default
            ``module(batch[0])`` for tuple batches, else ``module(batch)``).
        bn_statistics: BatchNorm buffers by name to load at ``x`` (at every entry) instead of
            re-estimating (e.g. :attr:`bn_statistics` of an earlier use at the same ``x``).
        bn_reestimate: a function that re-estimates the statistics of the weights now in the
            module in place and returns the number of batches it used; replaces ``bn_batches``
            (for callers that find their batches themselves, such as the Lightning callback).
        random_sources: more objects whose random-number generators must be left as they were
            (``bn_batches`` itself is always searched).
        merge_ranks: merge the ranks' BatchNorm estimates (``None``: when torch.distributed is
            initialised with more than one rank).

    If the parameters already hold ``x`` on entry (the optimizer is in eval mode), the weights
    and the mode are left as they are; asked for BatchNorm statistics, it still brings those at
    ``x`` and puts the module's own buffers back on exit.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        module: nn.Module | None = None,
        *,
        exact: bool | None = True,
        swap: WeightSwap | None = None,
        bn_batches: Batches | None = None,
        max_bn_batches: int | None = None,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
        bn_statistics: dict[str, Tensor] | None = None,
        bn_reestimate: Callable[[], int] | None = None,
        random_sources: Iterable[Any] = (),
        merge_ranks: bool | None = None,
    ) -> None:
        if swap is not None and swap.optimizer is not optimizer:
            raise ValueError("swap belongs to another optimizer; pass that optimizer's swap.")
        wants_bn = any(v is not None for v in (bn_batches, bn_statistics, bn_reestimate))
        if wants_bn and module is None:
            raise ValueError("BatchNorm statistics at x need the module: pass module=...")
        if max_bn_batches is not None and (
            not isinstance(max_bn_batches, int) or max_bn_batches < 1
        ):
            raise ValueError(f"max_bn_batches must be an int >= 1 or None, got {max_bn_batches!r}")
        check_reiterable(bn_batches, "bn_batches", "averaged_weights")
        self.optimizer = optimizer
        self.module = module
        self.swap = swap if swap is not None else WeightSwap(optimizer, exact=exact is not False)
        self.exact = exact
        self.bn_batches = bn_batches
        self.max_bn_batches = max_bn_batches
        self.bn_forward = bn_forward
        self.bn_reestimate = bn_reestimate
        self._given_bn = bn_statistics
        self.random_sources = tuple(random_sources)
        self.merge_ranks = merge_ranks
        #: BatchNorm buffers at ``x`` after the last :meth:`enter` re-estimated or loaded them.
        self.bn_statistics: dict[str, Tensor] | None = bn_statistics
        #: batches the re-estimate used (summed over ranks when merged); 0 without one.
        self.bn_batches_used = 0
        self._bn_names = batchnorm_buffer_names(module) if wants_bn and module else []
        self._train_bn: dict[str, Tensor] | None = None
        self._entered = False
        self._bn_only = False  # entered with x already in place: only the statistics changed

    @property
    def active(self) -> bool:
        """Whether this object put ``x`` in and has not restored ``y`` yet."""
        return self._entered

    @property
    def train_bn(self) -> dict[str, Tensor] | None:
        """The training-time BatchNorm buffers put aside while the statistics at ``x`` are in."""
        return self._train_bn if self._entered or self._bn_only else None

    def enter(self) -> bool:
        """Put ``x`` in, with BatchNorm statistics at ``x`` when asked (re-estimated on every
        entry, or the ``bn_statistics`` given); returns whether this put ``x`` in.

        When the parameters held ``x`` already (the optimizer in eval mode) it returns ``False``
        and leaves the weights and the mode alone, but still brings the BatchNorm statistics at
        ``x``; :meth:`restore` then puts the module's own buffers back.
        """
        if self._entered or self._bn_only:
            raise RuntimeError("averaged_weights is already entered; restore() first.")
        held_x = self.swap.holds_x
        if held_x and not self._bn_names:
            return False
        if self._bn_names:
            assert self.module is not None
            self._train_bn = snapshot_buffers(self.module, self._bn_names)
        if held_x:
            self._bn_only = True
        else:
            self.swap.to_x(exact=self.exact)
            self._entered = True
        try:
            if self._bn_names:
                self._batchnorm_at_x()
        except BaseException:
            self.restore()
            raise
        return not held_x

    def restore(self) -> None:
        """``y`` and the training BatchNorm buffers back (bit for bit with ``exact``); after an
        entry that found ``x`` in place, only the BatchNorm buffers."""
        if not (self._entered or self._bn_only):
            return
        swapped = self._entered
        self._entered = self._bn_only = False
        if self._train_bn is not None:
            assert self.module is not None
            load_buffers(self.module, self._train_bn)
            self._train_bn = None
        if swapped:
            self.swap.to_y()

    def __enter__(self) -> AveragedWeights:
        self.enter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def _batchnorm_at_x(self) -> None:
        module = self.module
        assert module is not None
        if self._given_bn is not None:
            load_buffers(module, self._given_bn)
            self.bn_statistics = self._given_bn
            return
        if self.bn_reestimate is not None:
            used = self.bn_reestimate()
        else:
            with preserved_data_state(self.bn_batches, *self.random_sources):
                batches = one_pass(self.bn_batches, "bn_batches", "or leave bn_batches=None")
                try:
                    used = reestimate_batchnorm(
                        module, batches, self.max_bn_batches, self.bn_forward
                    )
                finally:
                    del batches  # a loader's iterator (and its workers) ends here
            if self._merges():
                used = merge_batchnorm_across_ranks(batchnorm_layers(module), used)
        self.bn_batches_used = require_batches(used)
        self.bn_statistics = snapshot_buffers(module, self._bn_names)

    def _merges(self) -> bool:
        if self.merge_ranks is not None:
            return self.merge_ranks
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def averaged_weights(
    optimizer: torch.optim.Optimizer,
    module: nn.Module | None = None,
    *,
    exact: bool | None = True,
    bn_batches: Batches | None = None,
    max_bn_batches: int | None = None,
    **options: Any,
) -> AveragedWeights:
    """The averaged model ``x`` in the parameters inside ``with``; ``y`` (and the training
    BatchNorm buffers) back bit for bit afterwards. See :class:`AveragedWeights` for every
    option (``bn_forward``, ``bn_statistics``, ``swap``, ``random_sources``, ``merge_ranks``)."""
    return AveragedWeights(
        optimizer,
        module,
        exact=exact,
        bn_batches=bn_batches,
        max_bn_batches=max_bn_batches,
        **options,
    )
