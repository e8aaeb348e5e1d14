"""Markdown pieces every benchmark table shares: a GitHub table, a provenance line, and the
loading of the result files a section reads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def table(header: Iterable[str], rows: Iterable[Iterable[object]], left: int = 1) -> str:
    """A GitHub Markdown table; the first ``left`` columns left-aligned, the rest right-aligned."""
    header = list(header)
    align = [":---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(meta: dict) -> str:
    """One italic line: mode and command, date, machine, load, versions, wall time (what exists)."""
    if not meta:
        return "_no provenance recorded_"
    load = meta.get("load_average_start") or [meta.get("load_average_1m")]
    parts = [
        f"{meta['mode']} mode" if "mode" in meta else None,
        f"`{meta['command']}`" if "command" in meta else None,
        meta.get("date"),
        meta.get("platform"),
        f"{meta['cpu_count']} CPUs" if "cpu_count" in meta else None,
        f"load {load[0]} at start" if load[0] is not None else None,
        ", ".join(
            f"{k} {meta[k]}" for k in ("torch", "lightning", "timm", "schedulefree") if meta.get(k)
        ),
    ]
    if meta.get("resumed"):
        parts.append("resumed " + ", ".join(str(r.get("date")) for r in meta["resumed"]))
    wall = meta.get("wall_s", meta.get("wall_seconds"))
    if wall is not None:
        parts.append(f"wall time {wall / 60:.1f} min")
    if "status" in meta:
        parts.append(f"status {meta['status']}")
    return "_" + "; ".join(p for p in parts if p) + "._"


def load_all(folder: Path, names: dict[str, str]) -> tuple[dict[str, dict], list[str]]:
    """name -> JSON for the files that exist; notes for those that do not."""
    found, notes = {}, []
    for name, file in names.items():
        path = folder / file
        if path.is_file():
            found[name] = json.loads(path.read_text())
        else:
            notes.append(f"<!-- {file} not found: its rows are skipped -->")
    return found, notes
