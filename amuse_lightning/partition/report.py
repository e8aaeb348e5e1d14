"""Plain-text tables for :meth:`Partition.report`."""

from __future__ import annotations

from collections.abc import Iterable


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        return "  " + "  ".join([*cells, row[-1]]).rstrip()

    return [fmt(r) for r in rows]
