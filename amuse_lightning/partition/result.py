"""The result of the partition: one assignment per tensor, param groups, a readable report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from .report import fmt_shape, table

#: What :meth:`Partition.report` can print: every tensor, one row per kind, or nothing.
REPORT_STYLES: tuple[str, ...] = ("full", "compact", "none")


def reason_kind(reason: str) -> str:
    """The kind of a reason, without its details: ``"hidden matrix (Linear 8->4)"`` ->
    ``"hidden matrix"``, ``"stem: first conv (conv1)"`` -> ``"stem: first conv"``."""
    return reason.split(";")[0].split(" (")[0].strip()


def _first_names(names: list[str], count: int = 2) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... (+{len(names) - count})" if len(names) > count else "")


@dataclass(frozen=True)
class ParamAssignment:
    """One trainable tensor and the side it is optimised on.

    ``aliases`` lists the other names of a tied tensor (the same ``nn.Parameter`` reached twice).
    Equality compares the description (names, side, reason), not the tensor values.
    """

    name: str
    param: nn.Parameter = field(repr=False, compare=False)
    use_muon: bool
    reason: str
    aliases: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def side(self) -> str:
        return "muon" if self.use_muon else "fallback"


@dataclass
class Partition:
    """The result of :func:`partition_parameters`.

    ``assignments`` follow ``module.named_parameters()`` order; ``skipped`` holds ``(name, reason)``
    for frozen tensors and for the extra names of tied tensors.
    """

    assignments: list[ParamAssignment]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    module_type: str = ""

    @property
    def muon(self) -> list[ParamAssignment]:
        return [a for a in self.assignments if a.use_muon]

    @property
    def fallback(self) -> list[ParamAssignment]:
        return [a for a in self.assignments if not a.use_muon]

    def by_name(self) -> dict[str, dict]:
        """Plain-data view keyed by parameter name: ``{"use_muon", "reason", "shape"}``.

        It holds no tensors, so it survives wrapping (DDP, FSDP) and pickling.
        """
        return {
            a.name: {"use_muon": a.use_muon, "reason": a.reason, "shape": a.shape}
            for a in self.assignments
        }

    def param_groups(
        self,
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        fallback_lr: float | None = None,
        fallback_weight_decay: float | None = None,
        decay_1d: bool = False,
        lr_scales: Mapping[str, float] | None = None,
    ) -> list[dict]:
        """Param-group dicts for :class:`amuse_lightning.AMUSE` (or any torch optimizer).

        At most one group per (side, decays, lr_scale); empty groups are omitted. Each group has
        ``params``, ``names``, ``use_muon`` and ``group_name``; ``lr`` and ``weight_decay`` appear
        only when given (``fallback_lr`` / ``fallback_weight_decay`` default to ``lr`` /
        ``weight_decay``), so the optimizer's defaults apply otherwise. Tensors with fewer than
        2 dims get ``weight_decay = 0`` unless ``decay_1d=True``. ``lr_scales`` maps parameter
        name -> multiplier (timm layer decay, see :func:`layer_decay_scales`); names it lacks get
        1.0, and the groups then carry ``lr_scale``.
        """
        if not self.assignments:
            raise ValueError(
                f"{self.module_type or 'the module'} has no trainable parameters "
                f"({len(self.skipped)} skipped: frozen or tied); unfreeze some parameters "
                "(requires_grad=True) before building an optimizer."
            )
        if lr_scales is not None:
            self._check_scale_names(lr_scales)
        buckets: dict[tuple[bool, bool, float | None], list[ParamAssignment]] = {}
        for a in self.assignments:
            decays = decay_1d or a.param.ndim >= 2
            scale = None if lr_scales is None else _lookup_scale(lr_scales, a)
            buckets.setdefault((a.use_muon, decays, scale), []).append(a)

        def order(key: tuple[bool, bool, float | None]) -> tuple:
            use_muon, decays, scale = key
            return (not use_muon, not decays, 0.0 if scale is None else scale)

        groups = []
        for key in sorted(buckets, key=order):
            use_muon, decays, scale = key
            side_lr = lr if use_muon or fallback_lr is None else fallback_lr
            side_wd = weight_decay
            if not use_muon and fallback_weight_decay is not None:
                side_wd = fallback_weight_decay
            group = _make_group(buckets[key], use_muon, decays, scale, side_lr, side_wd)
            groups.append(group)
        return groups

    def _check_scale_names(self, lr_scales: Mapping[str, float]) -> None:
        known = {a.name for a in self.assignments}
        known.update(alias for a in self.assignments for alias in a.aliases)
        known.update(name for name, _ in self.skipped)
        unknown = sorted(set(lr_scales) - known)
        if unknown:
            raise ValueError(
                f"lr_scales names parameters the module does not have: {unknown[:5]}; "
                "build it from the same module (e.g. layer_decay_scales(module, decay))."
            )

    def report(self, style: str = "full") -> str:
        """A readable report; ``style`` picks how much of it.

        ``"full"``: totals per side, then one row per tensor (name, shape, side, why).
        ``"compact"``: totals per side, then one row per (side, kind of reason) with the count,
        the elements and the first names, so a ViT-B fits in a dozen lines.
        ``"none"``: the empty string.
        """
        if style not in REPORT_STYLES:
            raise ValueError(f"style must be one of {REPORT_STYLES}, got {style!r}")
        if style == "none":
            return ""
        lines = [self._summary_line()]
        if style == "compact":
            return "\n".join(lines + self._compact_rows())
        rows = [(a.name, fmt_shape(a.shape), a.side, a.reason) for a in self.assignments]
        lines += table(("name", "shape", "side", "reason"), rows)
        if self.skipped:
            lines.append("skipped:")
            lines += table(("name", "reason"), self.skipped)
        return "\n".join(lines)

    def _compact_rows(self) -> list[str]:
        kinds: dict[tuple[str, str], list[ParamAssignment]] = {}
        for a in self.assignments:
            kinds.setdefault((a.side, reason_kind(a.reason)), []).append(a)
        rows = [
            (side, str(len(items)), f"{sum(a.param.numel() for a in items):,}", kind,
             _first_names([a.name for a in items]))
            for (side, kind), items in sorted(kinds.items(), key=lambda kv: kv[0][0] != "muon")
        ]  # fmt: skip
        if self.skipped:
            names = _first_names([name for name, _ in self.skipped])
            rows.append(("skipped", str(len(self.skipped)), "", "frozen or tied", names))
        return table(("side", "tensors", "elements", "kind", "e.g."), rows)

    def _summary_line(self) -> str:
        def count(items: list[ParamAssignment]) -> str:
            numel = sum(a.param.numel() for a in items)
            return f"{len(items)} tensors ({numel:,} elements)"

        head = f"AMUSE partition of {self.module_type}" if self.module_type else "AMUSE partition"
        return (
            f"{head}: Muon {count(self.muon)}, fallback {count(self.fallback)}, "
            f"skipped {len(self.skipped)}"
        )


def _lookup_scale(lr_scales: Mapping[str, float], a: ParamAssignment) -> float:
    for name in (a.name, *a.aliases):
        if name in lr_scales:
            return float(lr_scales[name])
    return 1.0


def _make_group(
    items: list[ParamAssignment],
    use_muon: bool,
    decays: bool,
    scale: float | None,
    lr: float | None,
    weight_decay: float | None,
) -> dict:
    name = f"{'muon' if use_muon else 'fallback'}_{'decay' if decays else 'no_decay'}"
    group: dict = {
        "params": [a.param for a in items],
        "names": [a.name for a in items],
        "use_muon": use_muon,
        "group_name": name if scale is None else f"{name}_scale{scale:g}",
    }
    if lr is not None:
        group["lr"] = lr
    if not decays:
        group["weight_decay"] = 0.0
    elif weight_decay is not None:
        group["weight_decay"] = weight_decay
    if scale is not None:
        group["lr_scale"] = scale
    return group
