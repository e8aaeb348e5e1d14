"""The README's round-2 summary (``benchmarks/make_tables.py``): per task and budget the
finished model and x against the budget-tuned cosines, one generated verdict per task, the
recipes' finisher table and the averages' summary. The per-row numbers come from
:func:`~anytime.finisher_tables.gap_rows`; docs/results.md's full tables stay in
``finisher_tables.py``."""

from __future__ import annotations

from .finisher_tables import (
    Table,
    budgets_of,
    difference,
    gap_rows,
    gap_text,
    goal,
    metric,
    values,
)
from .finishing import Variant


def summary_table(datasets: dict[str, dict], table: Table) -> str:
    """One row per (task, budget): the finisher's chosen variant and extra steps, and the gaps
    of x and of the finished model to budget-tuned Muon + cosine."""
    rows = []
    for name, data in datasets.items():
        meta = data["meta"]
        _, _, digits, _ = metric(meta)
        unit = "points" if meta["metric"] == "accuracy" else "nats"
        variant = meta.get("selection", {}).get("variant", "?")
        for i, row in enumerate(gap_rows(data)):
            rows.append(
                [
                    name if i == 0 else "",
                    f"{row['t']:,}",
                    "—" if row["extra"] is None else f"+{row['extra']:,}",
                    gap_text(row["x_vs_t"], digits, brackets=False),
                    gap_text(row["finished_vs_equal"], digits, brackets=False),
                    gap_text(row["finished_vs_t"], digits, brackets=False),
                    goal(row),
                    f"`{variant}` ({unit})" if i == 0 else "",
                ]
            )
    return table(
        [
            "task",
            "budget t",
            "finisher steps",
            "x − cosine(t)",
            "finished − cosine(t + f t)",
            "finished − cosine(t)",
            "goal",
            "finisher (unit)",
        ],
        rows,
        left=1,
    )


def averages_summary(datasets: dict[str, dict], table: Table) -> str:
    """Per task and average: the per-seed difference to x (test), mean over the budgets and at
    the longest; whether it beats x by more than x's own seed spread anywhere."""
    rows = []
    for name, data in datasets.items():
        meta, records = data["meta"], data["records"]
        key, scale, digits, sign = metric(meta)
        names = sorted({r["method"] for r in records if r["method"].startswith("ema_")})
        budgets = budgets_of(records)
        for avg in names:
            per_budget = {}
            beats = []
            for t in budgets:
                x = values(records, "amuse_x", t, key)
                d = difference(values(records, avg, t, key), x, scale, sign)
                per_budget[t] = d
                spread = scale * (max(x.values()) - min(x.values())) / 2 if x else 0.0
                if d and d["verdict"] == "ahead" and d["mean"] > spread:
                    beats.append(t)
            mean = [d["mean"] for d in per_budget.values() if d]
            rows.append(
                [
                    name,
                    avg.removeprefix("ema_").replace("_", ", width "),
                    *(gap_text(per_budget[t], digits, brackets=False) for t in budgets),
                    f"{sum(mean) / len(mean):+.{digits}f}" if mean else "—",
                    ", ".join(str(t) for t in beats) or "none",
                ]
            )
    if not rows:
        return ""
    budgets = budgets_of(next(iter(datasets.values()))["records"])
    return table(
        ["task", "EMA of", *(f"t = {t}" for t in budgets), "mean", "beats x beyond x's spread at"],
        rows,
        left=2,
    )


def _where(rows: list[dict], name: str) -> str:
    """``ahead at 16, 32; level at 64; behind at 128`` (one-seed cells by their sign)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        d = r[name]
        if not d:
            continue
        verdict = d["verdict"] if d["n"] > 1 else ("ahead" if d["mean"] > 0 else "behind")
        label = f"{r['t']:,}" + (" (1 seed)" if d["n"] == 1 else "")
        groups.setdefault(verdict, []).append(label)
    return "; ".join(f"{v} at {', '.join(groups[v])}" for v in ("ahead", "level", "behind")
                     if v in groups)  # fmt: skip


def catches_up(rows: list[dict], name: str) -> str:
    """Whether and from which budget on the comparison is never behind again."""
    verdicts = []
    for r in rows:
        d = r[name]
        if d:
            behind = d["verdict"] == "behind" if d["n"] > 1 else d["mean"] < 0
            verdicts.append((r["t"], behind))
    for i, (t, _) in enumerate(verdicts):
        if not any(b for _, b in verdicts[i:]):
            return "never behind" if i == 0 else f"never behind again from t = {t:,}"
    return "still behind at the longest budget"


def verdict_lines(datasets: dict[str, dict]) -> list[str]:
    """One generated sentence per task: where x and the finished model stand, and the goal."""
    lines = []
    for name, data in datasets.items():
        rows = gap_rows(data)
        if not rows:
            continue
        met = [r for r in rows if goal(r) == "met"]
        lines.append(
            f"**{name}**: x against cosine tuned for t: {_where(rows, 'x_vs_t')} "
            f"({catches_up(rows, 'x_vs_t')}); finished against cosine tuned for t + f t: "
            f"{_where(rows, 'finished_vs_equal')}; goal met at {len(met)} of {len(rows)} budgets."
        )
    return lines


def recipe_table(datasets: dict[str, dict], table: Table) -> str:
    """Recipes: per task, the finisher chosen on validation and what it bought at the longest
    budget with all seeds (test; mean and verdict)."""
    rows = []
    for name, data in datasets.items():
        meta = data["meta"]
        _, _, digits, _ = metric(meta)
        unit = "points" if meta["metric"] == "accuracy" else "nats"
        variant = Variant.parse(meta.get("selection", {}).get("variant", "x/linear/f=0/lr_x1"))
        rows_ = [r for r in gap_rows(data) if r["finished_vs_x"]]
        if not rows_:
            continue
        most = max(r["seeds"] for r in rows_)
        row = max((r for r in rows_ if r["seeds"] == most), key=lambda r: r["t"])
        rows.append(
            [
                name,
                f"`start={variant.start!r}, shape={variant.shape!r}, "
                f"fraction={variant.fraction:g}, lr_factor={variant.lr_factor!r}`",
                f"{row['t']:,} (+{row['extra']:,}), {row['seeds']} seeds",
                _with_unit(row["finished_vs_x"], digits, unit),
                _with_unit(row["finished_vs_equal"], digits, unit),
            ]
        )
    return table(
        [
            "task",
            "finish(...) chosen on validation",
            "at budget t (+ cooldown)",
            "finished − x",
            "finished − cosine(t + f t)",
        ],
        rows,
        left=2,
    )


def _with_unit(d: dict, digits: int, unit: str) -> str:
    return "—" if not d else f"{d['mean']:+.{digits}f} {unit} ({d['verdict']})"
