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
