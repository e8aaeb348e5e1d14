"""The plot of one study: the test metric per budget, mean over seeds with the min..max band
(anytime methods as lines, budget-tuned baselines as points with bars)."""

from __future__ import annotations

from pathlib import Path

ORDER = ("adamw_cosine", "muon_cosine", "sf_adamw", "amuse", "amuse_best")


def cells(records: list[dict], key: str) -> dict[str, dict[int, list[float]]]:
    """method -> budget -> test values over seeds (diverged runs give ``inf`` loss / 0 score)."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in records:
        value = r["test"][key] if r["test"] is not None else float("nan")
        out.setdefault(r["method"], {}).setdefault(r["budget_steps"], []).append(value)
    return out


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = payload["meta"]
    metric = meta["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    table = cells(payload["records"], metric)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in ORDER:
        per_budget = table.get(method)
        if not per_budget:
            continue
        budgets = sorted(per_budget)
        values = [[scale * v for v in per_budget[b]] for b in budgets]
        mean = [sum(v) / len(v) for v in values]
        low, high = [min(v) for v in values], [max(v) for v in values]
        if method in ("adamw_cosine", "muon_cosine"):
            err = [
                [m - lo for m, lo in zip(mean, low, strict=True)],
                [hi - m for m, hi in zip(mean, high, strict=True)],
            ]
            ax.errorbar(
                budgets,
                mean,
                yerr=err,
                fmt="s" if "adamw" in method else "D",
                ms=6,
                capsize=3,
                label=f"{method} (one run per budget)",
            )
        else:
            (line,) = ax.plot(budgets, mean, "o-", lw=1.6, ms=4, label=method)
            ax.fill_between(budgets, low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("optimizer steps (budget)")
    ax.set_ylabel(f"test {metric}" + (" (%)" if metric == "accuracy" else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seeds = len(meta["config"]["seeds"])
    ax.set_title(
        f"{meta['title']} ({seeds} seeds, {meta['mode']} mode, {meta['date'][:10]})", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- round 2

FINISHER_SERIES = (
    ("muon_cosine", "Muon + cosine tuned for t", "D"),
    ("muon_cosine_equal", "Muon + cosine tuned for t(1+f)", "s"),
    ("amuse_x", "AMUSE x at t", "o"),
    ("amuse_finished", "AMUSE finished: t + f t steps", "^"),
)


def gaps(records: list[dict], method: str, reference: str, key: str, sign: float) -> dict:
    """budget t -> per-seed ``sign * (method - reference)`` (positive = method better)."""
    own = {(r["budget_steps"], r["seed"]): r for r in records if r["method"] == method}
    ref = {(r["budget_steps"], r["seed"]): r for r in records if r["method"] == reference}
    out: dict[int, list[float]] = {}
    for (t, seed), r in sorted(own.items()):
        other = ref.get((t, seed))
        if other is not None and r["test"] is not None and other["test"] is not None:
            out.setdefault(t, []).append(sign * (r["test"][key] - other["test"][key]))
    return out


def plot_finisher(payload: dict, path: Path) -> None:
    """Left: the test metric against total optimizer steps (mean, min..max over seeds). Right:
    the gap to budget-tuned Muon + cosine at equal total steps against the budget t."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, records = payload["meta"], payload["records"]
    key = meta["metric"]
    scale, sign = (100.0, 1.0) if key == "accuracy" else (1.0, -1.0)
    unit = " (points)" if key == "accuracy" else " (nats, positive = lower loss)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, label, marker in FINISHER_SERIES:
        by_steps: dict[int, list[float]] = {}
        for r in records:
            if r["method"] == method and r["test"] is not None:
                by_steps.setdefault(r["total_steps"], []).append(scale * r["test"][key])
        if not by_steps:
            continue
        steps = sorted(by_steps)
        mean = [sum(by_steps[s]) / len(by_steps[s]) for s in steps]
        (line,) = left.plot(steps, mean, marker + "-", lw=1.4, ms=4, label=label)
        low = [min(by_steps[s]) for s in steps]
        high = [max(by_steps[s]) for s in steps]
        left.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, lw=0)
    left.set_xscale("log", base=2)
    left.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    left.set_xlabel("total optimizer steps")
    left.set_ylabel(f"test {key}" + (" (%)" if key == "accuracy" else " (nats per byte)"))
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for method, reference, label in (
        ("amuse_x", "muon_cosine", "x minus cosine tuned for t"),
        ("amuse_finished", "muon_cosine_equal", "finished minus cosine tuned for t(1+f)"),
        ("amuse_finished", "muon_cosine", "finished minus cosine tuned for t"),
    ):
        per_budget = gaps(records, method, reference, key, sign * scale)
        if not per_budget:
            continue
        budgets = sorted(per_budget)
        mean = [sum(per_budget[b]) / len(per_budget[b]) for b in budgets]
        (line,) = right.plot(budgets, mean, "o-", lw=1.4, ms=4, label=label)
        right.fill_between(
            budgets,
            [min(per_budget[b]) for b in budgets],
            [max(per_budget[b]) for b in budgets],
            color=line.get_color(),
            alpha=0.15,
            lw=0,
        )
        for b in budgets:
            right.annotate(str(len(per_budget[b])), (b, mean[budgets.index(b)]), fontsize=6)
    right.axhline(0.0, color="k", lw=0.8)
    right.set_xscale("log", base=2)
    budgets = sorted({r["budget_steps"] for r in records})
    right.set_xticks(budgets, [f"{b:,}" for b in budgets])
    right.set_xlabel("budget t (AMUSE steps before the finisher)")
    right.set_ylabel("gap" + unit)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    variant = meta.get("selection", {}).get("variant", "?")
    fig.suptitle(
        f"{meta['title']}: finisher {variant} ({meta['mode']} mode, {meta['date'][:10]}; "
        "bands: min..max over seeds, numbers: seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
