"""Tables and the gap plot of the round-3 JSON (``anytime_<task>_peers.json``): AMUSE against
what an anytime user runs (``benchmarks/make_tables.py`` calls them).

Every number is a test score, mean over seeds with half the seed range (``±``); a difference is
per seed with its verdict (``ahead`` / ``behind`` when every seed agrees, ``level`` when the
signs differ); choices were made on validation (the JSON's ``meta.selection``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .finisher_tables import budgets_of, cell, difference, gap_text, metric, values

Table = Callable[..., str]

ROWS = (
    ("amuse_x", "AMUSE, x at t"),
    ("muon_constant", "Muon, constant lr at t (the WSD run before its cooldown)"),
    ("sf_adamw", "Schedule-Free AdamW, x at t"),
    ("muon_cosine", "reference: Muon + cosine tuned for t"),
    ("amuse_finished", "AMUSE, x finished (t + f t steps)"),
    ("muon_wsd", "Muon WSD: constant lr, cooldown fork (t + f t steps)"),
    ("muon_cosine_equal", "reference: Muon + cosine tuned for t + f t"),
)
COMPARISONS = (
    ("amuse_x", "muon_constant", "x − constant-lr Muon (no extra steps)"),
    ("amuse_finished", "muon_wsd", "finished x − WSD fork (equal total steps)"),
    ("amuse_x", "muon_cosine", "x − cosine tuned for t"),
    ("amuse_finished", "muon_cosine_equal", "finished x − cosine tuned for t + f t"),
)
BEST_ROWS = (
    ("best_x", "AMUSE with {knob}, x at t"),
    ("best_finished", "AMUSE with {knob}, x finished (t + f t steps)"),
)
BEST_COMPARISONS = (
    ("best_x", "muon_wsd", "{knob}: x − WSD fork (x without the fork's extra steps)"),
    ("best_finished", "muon_wsd", "{knob}: finished x − WSD fork (equal total steps)"),
    ("best_x", "muon_cosine", "{knob}: x − cosine tuned for t"),
)


def unit(meta: dict) -> str:
    return "points" if meta["metric"] == "accuracy" else "nats"


def comparison(data: dict, own: str, ref: str, t: int, split: str = "test") -> dict:
    key, scale, _, sign = metric(data["meta"])
    recs = data["records"]
    return difference(_split(recs, own, t, key, split), _split(recs, ref, t, key, split), scale,
                      sign)  # fmt: skip


def _split(records: list[dict], method: str, t: int, key: str, split: str) -> dict[int, float]:
    if split == "test":
        return values(records, method, t, key)
    return {
        r["seed"]: r[split][key]
        for r in records
        if r["method"] == method and r["budget_steps"] == t and r[split] is not None
    }


def _equal_label(meta: dict, label: str) -> str:
    """With ``equal_lr_from_t`` (a compute cut), cosine for ``t + f t`` ran at the lr tuned for
    ``t``, and the labels say so; the finished rows name the chosen finisher's start (``x``,
    or ``y`` where round 3b chose a cooldown from ``y``)."""
    if meta["config"].get("peers", {}).get("equal_lr_from_t"):
        label = label.replace("tuned for t + f t", "for t + f t at the lr tuned for t")
    start = meta.get("selection", {}).get("variant", "x").split("/")[0]
    if start != "x":
        label = label.replace("x finished", f"{start} finished")
        label = label.replace("finished x", f"finished {start}")
    return label


def main_table(data: dict, table: Table) -> str:
    """Scores at every budget (rows: methods, columns: budgets), then the comparisons."""
    meta, records = data["meta"], data["records"]
    key, scale, digits, _ = metric(meta)
    budgets = budgets_of(records)
    rows = [
        [_equal_label(meta, label),
         *(cell(list(values(records, m, t, key).values()), scale, digits) for t in budgets)]
        for m, label in ROWS
        if any(r["method"] == m for r in records)
    ]  # fmt: skip
    rows += [
        [f"**{_equal_label(meta, label)}**",
         *(gap_text(comparison(data, own, ref, t), digits, False) for t in budgets)]
        for own, ref, label in COMPARISONS
        if any(comparison(data, own, ref, t) for t in budgets)  # a screen has no cosine
    ]  # fmt: skip
    knob = meta["selection"].get("best_knob", {}).get("name")
    if knob and any(r["method"] == "best_x" for r in records):
        rows += [
            [_equal_label(meta, label.format(knob=knob)),
             *(cell(list(values(records, m, t, key).values()), scale, digits) for t in budgets)]
            for m, label in BEST_ROWS
        ]  # fmt: skip
        rows += [
            [f"**{_equal_label(meta, label.format(knob=knob))}**",
             *(gap_text(comparison(data, own, ref, t), digits, False) for t in budgets)]
            for own, ref, label in BEST_COMPARISONS
            if any(comparison(data, own, ref, t) for t in budgets)
        ]  # fmt: skip
    metric_name = "test accuracy (%)" if meta["metric"] == "accuracy" else "test loss (nats)"
    return table([f"{metric_name} at budget t", *(f"t = {t:,}" for t in budgets)], rows)


def goal_line(data: dict, prefix: str = "amuse") -> str:
    """The issue's goal on one task: AMUSE (x, or finished x at equal total steps) level with or
    ahead of the WSD fork at every budget, and x level with cosine(t) at the longest budget
    (``prefix="best"``: AMUSE with the confirmed best knob)."""
    budgets = budgets_of(data["records"])
    met = []
    for t in budgets:
        best = [
            comparison(data, f"{prefix}_x", "muon_wsd", t),
            comparison(data, f"{prefix}_finished", "muon_wsd", t),
        ]
        met.append(any(d and d["verdict"] in ("ahead", "level") for d in best))
    longest = comparison(data, f"{prefix}_x", "muon_cosine", budgets[-1]) if budgets else {}
    level_long = bool(longest) and longest["verdict"] in ("ahead", "level")
    against = f"{'level with or ahead of' if level_long else 'behind'} cosine tuned for t"
    return (
        f"x or finished x level with or ahead of the WSD fork at {sum(met)} of {len(budgets)} "
        f"budgets; x {against if longest else 'not run against cosine'} at the longest budget"
    )


def knob_table(data: dict, table: Table, split: str = "val") -> str:
    """Each mechanism against the chosen AMUSE run, seed by seed, at every budget (``x``) and
    finished at the longest budget: ``knob − baseline`` on ``split``."""
    meta, records = data["meta"], data["records"]
    _, _, digits, _ = metric(meta)
    budgets = budgets_of(records)
    knobs = [k for k, _ in meta["config"]["peers"]["knobs"]]
    finished = any(r["method"].endswith(":finished") for r in records)
    rows = []
    for knob in knobs:
        cells = [gap_text(comparison(data, f"knob:{knob}", "amuse_x", t, split), digits)
                 for t in budgets]  # fmt: skip
        if finished:
            fin = comparison(data, f"knob:{knob}:finished", "amuse_finished", budgets[-1], split)
            cells.append(gap_text(fin, digits))
        rows.append([knob, *cells])
    header = ["knob (− chosen AMUSE)", *(f"x, t = {t:,}" for t in budgets)]
    if finished:
        header.append(f"finished, t = {budgets[-1]:,}")
    return table(header, rows)


def variant_table(data: dict, table: Table) -> str:
    """The finisher variants on the sweep seed: mean over budgets of val(finished) − val(WSD
    fork), and per budget (the selection criterion)."""
    meta = data["meta"]
    _, scale, digits, _ = metric(meta)  # scores are higher-is-better already
    table_data = meta["selection"].get("variants", {})
    budgets = budgets_of(data["records"])
    screen = meta["selection"].get("criterion", "").startswith("none")
    mark = " (in the finished rows; not chosen)" if screen else " (chosen)"
    rows = []
    for variant, entry in sorted(table_data.items(), key=lambda kv: -kv[1]["mean"]):
        per = entry["per_budget"]
        rows.append(
            [f"`{variant}`" + (mark if variant == meta["selection"]["variant"] else ""),
             _fmt(scale * entry["mean"], digits),
             *(_fmt(scale * per.get(str(t), per.get(t, math.nan)), digits)
               for t in budgets)]
        )  # fmt: skip
    return table(["finisher variant", "mean", *(f"t = {t:,}" for t in budgets)], rows)


BETA_ANNEALED = "beta annealed to 0.965"
"""The knob the headline's β-annealed columns show (round3.beta_annealing)."""

HEADLINE = (
    ("amuse_x", "muon_constant", "x − constant-lr Muon"),
    ("amuse_finished", "muon_wsd", "finished x − WSD fork"),
    ("amuse_x", "muon_cosine", "x − cosine(t)"),
    ("best_x", "muon_constant", "β-annealed x − constant-lr Muon"),
    ("best_finished", "muon_wsd", "β-annealed finished x − WSD fork"),
    ("best_x", "muon_cosine", "β-annealed x − cosine(t)"),
)


HEADLINE_ANNEALED = (
    ("amuse_x", "muon_constant", "x − constant-lr Muon"),
    ("amuse_finished_default", "muon_wsd", "finished x (`finish()` defaults) − WSD fork"),
    ("amuse_finished", "muon_wsd", "finished (chosen finisher) − WSD fork"),
    ("amuse_x", "muon_cosine", "x − cosine(t)"),
)
"""Round 3b's headline (``anytime_<task>_annealed.json``): every AMUSE run is beta-annealed,
finished by ``finish()``'s defaults (``lr_factor="auto"``) and by the finisher chosen on
annealed runs."""

HEADLINE_SHIPPED = (*HEADLINE_ANNEALED, ("amuse_x", "sf_adamw", "x − SF-AdamW"))
"""Round 3c's headline (round 3b's columns, and Schedule-Free AdamW)."""


def headline_table(tasks: dict[str, dict], table: Table, columns: tuple = HEADLINE) -> str:
    """One row per task and budget: the comparisons of ``columns`` on test, per seed, with
    the verdict (``—`` where a task has no confirmed knob)."""
    rows = []
    for task, data in tasks.items():
        _, _, digits, _ = metric(data["meta"])
        best = data["meta"]["selection"].get("best_knob", {}).get("name")
        for t in budgets_of(data["records"]):
            cells = [
                "—" if own.startswith("best") and best != BETA_ANNEALED
                else gap_text(comparison(data, own, ref, t), digits, False)
                for own, ref, _ in columns
            ]  # fmt: skip
            rows.append([f"{task} ({unit(data['meta'])})", f"{t:,}", *cells])
    return table(["task", "budget t", *(label for _, _, label in columns)], rows, left=2)


def knob_summary_table(
    tasks: dict[str, dict], table: Table, later: dict[str, dict] | None = None, mark: str = ""
) -> str:
    """Per knob and task (validation, knob − chosen AMUSE per seed): the mean gain over the
    budgets and at how many budgets it was ahead / level / behind; then the knobs of the
    ``later`` study's payloads (named with ``mark``), in the same task columns."""
    screened = [t for t, d in tasks.items() if d["meta"]["config"]["peers"]["knobs"]]
    rows = _knob_rows(tasks, screened)
    if later:
        rows += [[name + mark, *cells] for name, *cells in _knob_rows(later, screened)]
    header = [f"{t} ({unit(tasks[t]['meta'])})" for t in screened]
    return table(["knob", *header], rows)


def _knob_rows(tasks: dict[str, dict], columns: list[str]) -> list[list[str]]:
    knobs: list[str] = []
    for data in tasks.values():
        knobs += [k for k, _ in data["meta"]["config"]["peers"]["knobs"] if k not in knobs]
    rows = []
    for knob in knobs:
        cells = []
        for task in columns:
            data = tasks.get(task)
            diffs = [] if data is None else [
                comparison(data, f"knob:{knob}", "amuse_x", t, "val")
                for t in budgets_of(data["records"])
            ]  # fmt: skip
            diffs = [d for d in diffs if d]
            if not diffs:
                cells.append("not screened")
                continue
            _, _, digits, _ = metric(data["meta"])
            count = {v: sum(d["verdict"] == v for d in diffs) for v in ("ahead", "level", "behind")}
            mean = sum(d["mean"] for d in diffs) / len(diffs)
            cells.append(f"{mean:+.{digits}f} ({count['ahead']} / {count['level']} / "
                         f"{count['behind']})")  # fmt: skip
        rows.append([knob, *cells])
    return rows


def auto_factor(t: int) -> float:
    """The finisher's ``lr_factor="auto"`` (``averaging/finisher.py``): 0.3 min(1, 800 / t)."""
    return 0.3 * min(1.0, 800 / t)


def factor_rule_row(data: dict) -> dict[str, float]:
    """Mean over budgets of val(finished) − val(WSD fork) on the sweep seed for the ``x``
    starts at each lr factor of the grid, and for the ``auto`` rule (run as a variant of its
    own where the study ran it, else at each budget the grid factor nearest to the rule's in
    log scale)."""
    variants = data["meta"]["selection"].get("variants", {})
    by_factor, auto = {}, None
    for vid, entry in variants.items():
        start, shape, _fraction, factor, *rest = vid.split("/")
        if start == "x" and shape == "linear" and not rest:
            gaps = {int(t): g for t, g in entry["per_budget"].items()}
            if factor == "lr_xauto":
                auto = sum(gaps.values()) / len(gaps)
            else:
                by_factor[float(factor[4:])] = gaps
    if not by_factor:
        return {}
    budgets = sorted(next(iter(by_factor.values())))
    out = {f"lr_x{f:g}": sum(g.values()) / len(g) for f, g in sorted(by_factor.items())}
    if auto is not None:  # the rule itself was run
        out["auto"] = auto
        return out
    nearest = [min(by_factor, key=lambda f: abs(math.log(f / auto_factor(t)))) for t in budgets]
    out["auto"] = sum(by_factor[f][t] for f, t in zip(nearest, budgets, strict=True)) / len(budgets)
    if any(not math.isclose(f, auto_factor(t)) for f, t in zip(nearest, budgets, strict=True)):
        out["auto_approximate"] = 1.0  # a grid factor stood in for the rule at some budget
    return out


def factor_rule_table(
    tasks: dict[str, dict],
    table: Table,
    factors: tuple[float, ...] = (0.03, 0.1, 0.3),
    default: str = "lr_x0.1",
) -> str:
    """:func:`factor_rule_row` per task (points or nats, positive = the finisher ahead), for the
    lr ``factors`` of the grid and the ``auto`` rule (``≈``: the nearest grid factor stood in for
    the rule at a budget where it is none of them); ``default`` names the column of ``finish()``'s
    default in the study's time."""
    rows = []
    keys = [f"lr_x{f:g}" for f in factors] + ["auto"]
    for task, data in tasks.items():
        row = factor_rule_row(data)
        if not row:
            continue
        _, scale, digits, _ = metric(data["meta"])
        cells = [_fmt(scale * row.get(k, math.nan), digits) for k in keys]
        if "auto_approximate" in row:
            cells[-1] = "≈ " + cells[-1]
        rows.append([f"{task} ({unit(data['meta'])})", *cells])
    header = [f"lr factor {f:g}" for f in factors] + ["auto"]
    header = [h + (" (default)" if k == default else "") for h, k in zip(header, keys, strict=True)]
    return table(["task", *header], rows)


def _fmt(value: float, digits: int) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.{digits}f}"


def plot_gaps(data: dict, path) -> None:
    """Test gap to Muon + cosine tuned for the same total steps, against the budget: x and the
    constant-lr peer at t, the finished x and the WSD fork at t + f t (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = data["meta"]
    budgets = budgets_of(data["records"])
    if not any(r["method"] == "muon_cosine" for r in data["records"]):
        return  # a screen without cosine references: nothing to draw against
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    series = (
        ("amuse_x", "muon_cosine", "AMUSE x (t)", "C0", "-"),
        ("muon_constant", "muon_cosine", "Muon constant lr (t)", "C1", "-"),
        ("amuse_finished", "muon_cosine_equal", "AMUSE finished (t + f t)", "C0", "--"),
        ("muon_wsd", "muon_cosine_equal", "Muon WSD fork (t + f t)", "C1", "--"),
    )
    for own, ref, label, color, style in series:
        points = [(t, comparison(data, own, ref, t)) for t in budgets]
        points = [(t, d["mean"]) for t, d in points if d]
        if points:
            ax.plot(*zip(*points, strict=True), style, color=color, marker="o", label=label)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{t:,}" for t in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget t (steps)")
    ax.set_ylabel(f"test {unit(meta)} vs tuned cosine (+ = better)")
    ax.set_title(f"{meta['task']}: gap to Muon + cosine tuned for the same steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
