"""Tables of the round-2 JSON (``anytime_<task>_finisher.json``, ``anytime_horizon.json``):
the numbers per row and the full tables for docs/results.md (``benchmarks/make_tables.py``); the
README summary built on them is ``finisher_summary.py``."""

from __future__ import annotations

from collections.abc import Callable

from .protocol import RunSpec

Table = Callable[..., str]
SERIES = ("amuse_x", "amuse_finished", "muon_cosine", "muon_cosine_equal")
LABELS = {
    "amuse_x": "AMUSE x at t",
    "amuse_finished": "AMUSE finished (t + f t steps)",
    "muon_cosine": "Muon + cosine tuned for t",
    "muon_cosine_equal": "Muon + cosine tuned for t + f t",
}


def metric(meta: dict) -> tuple[str, float, int, float]:
    """(key, display scale, digits, sign): sign +1 when higher is better."""
    if meta["metric"] == "accuracy":
        return "accuracy", 100.0, 2, 1.0
    return "loss", 1.0, 3, -1.0


def values(records: list[dict], method: str, t: int, key: str) -> dict[int, float]:
    """seed -> test value at budget ``t``."""
    return {
        r["seed"]: r["test"][key]
        for r in records
        if r["method"] == method and r["budget_steps"] == t and r["test"] is not None
    }


def total_steps(records: list[dict], method: str, t: int) -> int | None:
    return next(
        (r["total_steps"] for r in records if r["method"] == method and r["budget_steps"] == t),
        None,
    )


def cell(vals: list[float], scale: float, digits: int) -> str:
    if not vals:
        return "—"
    v = [scale * x for x in vals]
    mean, spread = sum(v) / len(v), (max(v) - min(v)) / 2
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(v) > 1 else f"{mean:.{digits}f}"


def difference(own: dict[int, float], ref: dict[int, float], scale: float, sign: float) -> dict:
    """Per-seed ``sign * (own - ref)`` on the seeds both have; verdict ``ahead`` / ``behind``
    when every seed agrees, ``level`` when the signs differ (one seed: its sign)."""
    diffs = [sign * scale * (own[s] - ref[s]) for s in sorted(set(own) & set(ref))]
    if not diffs:
        return {}
    verdict = "ahead" if min(diffs) > 0 else "behind" if max(diffs) < 0 else "level"
    return {"mean": sum(diffs) / len(diffs), "min": min(diffs), "max": max(diffs),
            "n": len(diffs), "verdict": verdict}  # fmt: skip


def gap_text(d: dict, digits: int, brackets: bool = True) -> str:
    if not d:
        return "—"
    if d["n"] == 1:
        return f"{d['mean']:+.{digits}f} (1 seed)"
    spread = f" [{d['min']:+.{digits}f}, {d['max']:+.{digits}f}]" if brackets else ""
    return f"{d['mean']:+.{digits}f}{spread} {d['verdict']}"


def budgets_of(records: list[dict]) -> list[int]:
    return sorted({r["budget_steps"] for r in records})


def gap_rows(data: dict) -> list[dict]:
    """Per budget t: the three comparisons and the finisher's extra steps."""
    meta, records = data["meta"], data["records"]
    key, scale, _digits, sign = metric(meta)
    rows = []
    for t in budgets_of(records):
        x, fin = values(records, "amuse_x", t, key), values(records, "amuse_finished", t, key)
        cos, cos_eq = (
            values(records, "muon_cosine", t, key),
            values(records, "muon_cosine_equal", t, key),
        )
        total = total_steps(records, "amuse_finished", t)
        rows.append(
            {
                "t": t,
                "extra": None if total is None else total - t,
                "x_vs_t": difference(x, cos, scale, sign),
                "finished_vs_equal": difference(fin, cos_eq, scale, sign),
                "finished_vs_t": difference(fin, cos, scale, sign),
                "finished_vs_x": difference(fin, x, scale, sign),
                "seeds": len(set(fin) & set(cos_eq)),
            }
        )
    return rows


def goal(row: dict) -> str:
    """The issue's goal at one budget: the finished model level or better than Muon + cosine at
    equal total steps with at most 20 % extra steps."""
    d = row["finished_vs_equal"]
    if not d or row["extra"] is None:
        return "—"
    ok = d["verdict"] in ("level", "ahead") if d["n"] > 1 else d["mean"] >= 0
    small = row["extra"] <= max(1, round(0.2 * row["t"]))  # the library's rounding of f t
    return "met" if ok and small else "not met"


# ----------------------------------------------------------------------------- docs/results.md


def main_table(data: dict, table: Table) -> str:
    meta, records = data["meta"], data["records"]
    key, scale, digits, _ = metric(meta)
    budgets = budgets_of(records)
    rows = []
    for method in SERIES:
        lrs = sorted({r["lr"] for r in records if r["method"] == method})
        steps = [total_steps(records, method, t) for t in budgets]
        rows.append(
            [
                LABELS[method],
                " / ".join(f"{lr:g}" for lr in lrs),
                " / ".join(str(s) for s in steps),
                *(cell(list(values(records, method, t, key).values()), scale, digits)
                  for t in budgets),
            ]
        )  # fmt: skip
    return table(["model", "lr", "total steps", *(f"t = {t:,}" for t in budgets)], rows, left=2)


def gap_table(data: dict, table: Table) -> str:
    meta = data["meta"]
    _, _, digits, _ = metric(meta)
    rows = gap_rows(data)
    lines = []
    for label, name in (
        ("x − cosine tuned for t", "x_vs_t"),
        ("finished − cosine tuned for t + f t (equal steps)", "finished_vs_equal"),
        ("finished − cosine tuned for t", "finished_vs_t"),
        ("finished − x", "finished_vs_x"),
    ):
        lines.append([label, *(gap_text(r[name], digits) for r in rows)])
    lines.append(["goal (level or better at equal steps, ≤ 20 % extra)", *(goal(r) for r in rows)])
    lines.append(["seeds", *(str(r["seeds"]) for r in rows)])
    return table(["comparison (test)", *(f"t = {r['t']:,}" for r in rows)], lines)


def variant_table(data: dict, table: Table) -> str:
    """The finisher grid on the sweep seed: validation criterion per variant, best first."""
    sel = data["meta"].get("selection", {})
    variants = sel.get("variants", {})
    if not variants:
        return ""
    key, scale, digits, _sign = metric(data["meta"])
    budgets = sorted(int(t) for t in next(iter(variants.values()))["equal"]["per_budget"])
    rows = []
    order = sorted(variants, key=lambda v: -variants[v]["equal"]["mean"])
    for v in order:
        eq, vs_t = variants[v]["equal"], variants[v]["vs_t"]
        gaps = [scale * eq["per_budget"][str(t)] if str(t) in eq["per_budget"]
                else scale * eq["per_budget"][t] for t in budgets]  # fmt: skip
        name = f"**{v}**" if v == sel["variant"] else v
        rows.append(
            [name, f"{scale * eq['mean']:+.{digits}f}", f"{scale * vs_t['mean']:+.{digits}f}",
             *(f"{g:+.{digits}f}" for g in gaps)]
        )  # fmt: skip
    note = "score" if key == "accuracy" else "score = −loss"
    return (
        f"Validation ({note}), sweep seed: finished minus Muon + cosine tuned for the same total "
        "steps (per budget and the mean, the criterion), and the mean against the cosine tuned "
        "for t; chosen in bold.\n\n"
        + table(
            [
                "variant (start/shape/fraction/lr factor)",
                "mean vs t + f t",
                "mean vs t",
                *(f"t = {t:,}" for t in budgets),
            ],
            rows,
        )
    )


def sweep_table(data: dict, table: Table) -> str:
    """Validation score of every sweep/screen run on the sweep seed (AMUSE at x per budget;
    Muon + cosine at the end of its own budget), chosen lrs in bold."""
    meta = data["meta"]
    key, scale, digits, _ = metric(meta)
    sel = meta.get("selection", {})
    chosen_cos = {int(s): lr for s, lr in sel.get("cosine", {}).items()}
    runs = [r for r in data["runs"] if r["spec"]["phase"] != "final"]
    amuse = [r for r in runs if r["spec"]["method"] == "amuse"]
    budgets = meta["config"]["budgets"]
    rows = []
    for r in sorted(amuse, key=lambda r: (r["spec"]["phase"], r["spec"]["lr"])):
        by_step = {e["step"]: scale * e["val"][key] for e in r["evals"]}
        settings = ", ".join(
            f"{k}={v}" for k, v in r["spec"]["settings"] if k not in ("finishers", "averages")
        )
        label = f"AMUSE x, lr {r['spec']['lr']:g}" + (f", {settings}" if settings else "")
        if RunSpec.from_dict(r["spec"]).run_id == sel.get("amuse_run"):
            label = f"**{label}**"
        rows.append([label, *(f"{by_step[b]:.{digits}f}" if b in by_step else "" for b in budgets)])
    out = [
        f"AMUSE runs (validation {key} of x; sweep seed)\n",
        table(["run", *(f"t = {b:,}" for b in budgets)], rows),
    ]
    cosine = [r for r in runs if r["spec"]["method"] == "muon_cosine"]
    steps = sorted({r["spec"]["steps"] for r in cosine})
    lrs = sorted({r["spec"]["lr"] for r in cosine})
    grid = {(r["spec"]["steps"], r["spec"]["lr"]): r for r in cosine}
    rows = []
    for s in steps:
        cells = []
        for lr in lrs:
            r = grid.get((s, lr))
            if r is None or not r["evals"]:
                cells.append("diverged" if r is not None else "")
                continue
            text = f"{scale * r['evals'][-1]['val'][key]:.{digits}f}"
            cells.append(f"**{text}**" if chosen_cos.get(s) == lr else text)
        rows.append([f"{s:,}", *cells])
    out += [
        f"\nMuon + cosine sweep (validation {key} at the end of each budget; the lr chosen for "
        "the budgets the tables use in bold)\n",
        table(["steps", *(f"lr {lr:g}" for lr in lrs)], rows),
    ]
    return "\n".join(out)


def averages_table(data: dict, table: Table) -> str:
    meta, records = data["meta"], data["records"]
    key, scale, digits, sign = metric(meta)
    names = sorted({r["method"] for r in records if r["method"].startswith("ema_")})
    if not names:
        return ""
    budgets = budgets_of(records)
    rows = [["x (AMUSE)", *(cell(list(values(records, "amuse_x", t, key).values()), scale, digits)
                           for t in budgets)]]  # fmt: skip
    for avg in names:
        x_cells = []
        for t in budgets:
            own = values(records, avg, t, key)
            d = difference(own, values(records, "amuse_x", t, key), scale, sign)
            x_cells.append(f"{cell(list(own.values()), scale, digits)} ({gap_text(d, digits)})")
        rows.append([avg.removeprefix("ema_").replace("_", ", width "), *x_cells])
    return (
        f"Test {key} of power-EMAs (Karras et al. 2023) of y and of z, BatchNorm re-estimated "
        "for each, and in brackets their per-seed difference to x (positive = better).\n\n"
        + table(["model (EMA of, relative width)", *(f"t = {t:,}" for t in budgets)], rows)
    )


def render_full(data: dict, table: Table, provenance: Callable[[dict], str]) -> str:
    meta = data["meta"]
    key = meta["metric"]
    what = "accuracy (%)" if key == "accuracy" else "loss (nats per byte)"
    parts = [
        f"**Test {what}**, mean ± half-range over seeds; finisher "
        f"`{meta.get('selection', {}).get('variant', '?')}`; the cosine rows are tuned (lr, "
        "validation) for their own total steps.\n",
        main_table(data, table),
        f"\n**Differences** (test {key}, positive = the first better; mean [min, max] of the "
        "per-seed differences; level = signs differ)\n",
        gap_table(data, table),
    ]
    averages = averages_table(data, table)
    if averages:
        parts += ["\n**Averages of the trajectory**\n", averages]
    variants = variant_table(data, table)
    if variants:
        parts += ["\n<details><summary>Finisher grid (validation)</summary>\n", variants,
                  "\n</details>\n"]  # fmt: skip
    parts += [
        "\n<details><summary>Tuning runs (validation, sweep seed)</summary>\n",
        sweep_table(data, table),
        "\n</details>\n",
        provenance(meta),
    ]
    return "\n".join(parts)


def has_averages(data: dict) -> bool:
    return any(r["method"].startswith("ema_") for r in data["records"])
