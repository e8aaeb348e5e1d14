"""README tables of one anytime study JSON (``benchmarks/make_tables.py`` calls :func:`render`)."""

from __future__ import annotations

from collections.abc import Callable

ORDER = ("adamw_cosine", "muon_cosine", "sf_adamw", "amuse", "amuse_best")
BUDGET_METHODS = ("adamw_cosine", "muon_cosine")
REFERENCE = "muon_cosine"

Table = Callable[..., str]


def _metric(meta: dict) -> tuple[str, float, int, int]:
    """(key, display scale, digits, sign): sign +1 when higher is better."""
    if meta["metric"] == "accuracy":
        return "accuracy", 100.0, 2, 1
    return "loss", 1.0, 3, -1


def _values(records: list[dict], method: str, budget: int, key: str) -> dict[int, float]:
    """seed -> test value (diverged or missing runs are left out)."""
    return {
        r["seed"]: r["test"][key]
        for r in records
        if r["method"] == method and r["budget_steps"] == budget and r["test"] is not None
    }


def _cell(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "—"
    v = [scale * x for x in values]
    mean, spread = sum(v) / len(v), (max(v) - min(v)) / 2
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(v) > 1 else f"{mean:.{digits}f}"


def _budget_label(meta: dict, budget: int) -> str:
    per_epoch = meta["config"]["task"].get("train_size", 0) // meta["config"]["task"].get(
        "batch_size", 1
    )
    if meta["task"] == "vision" and per_epoch:
        return f"{budget // per_epoch} ep ({budget} st)"
    return f"{budget} st"


def _lr(lr: float, grid: list[float]) -> str:
    """The lr, starred when it is an end of its grid (the grid may be too narrow there)."""
    return f"{lr:g}" + ("*" if len(grid) > 1 and lr in (min(grid), max(grid)) else "")


def _settings(records: list[dict], method: str, grids: dict) -> str:
    rows = [r for r in records if r["method"] == method]
    if not rows:
        return ""
    grid = grids.get("amuse" if method.startswith("amuse") else method, [])
    per_budget = {r["budget_steps"]: _lr(r["lr"], grid) for r in rows}
    lrs = [per_budget[b] for b in sorted(per_budget)]
    text = "lr " + " / ".join(lrs if len(set(lrs)) > 1 else lrs[:1])
    extra = ", ".join(f"{k}={v}" for k, v in rows[0]["settings"].items())
    return text + (f", {extra}" if extra else "")


def main_table(data: dict, table: Table) -> str:
    meta, records = data["meta"], data["records"]
    key, scale, digits, _ = _metric(meta)
    budgets = sorted({r["budget_steps"] for r in records})
    methods = [m for m in ORDER if any(r["method"] == m for r in records)]
    rows = [
        [
            m,
            _settings(records, m, meta["config"]["lr_grid"]),
            *(_cell(list(_values(records, m, b, key).values()), scale, digits) for b in budgets),
        ]
        for m in methods
    ]
    return table(
        ["method", "chosen on validation", *(_budget_label(meta, b) for b in budgets)], rows, left=2
    )


def gap_table(data: dict, table: Table) -> str:
    """Per seed: anytime method minus budget-tuned Muon + cosine (positive = anytime better);
    "level" when the per-seed differences do not all have the same sign."""
    meta, records = data["meta"], data["records"]
    key, scale, digits, sign = _metric(meta)
    budgets = sorted({r["budget_steps"] for r in records})
    rows = []
    for m in (m for m in ORDER if m not in BUDGET_METHODS):
        if not any(r["method"] == m for r in records):
            continue
        cells = []
        for b in budgets:
            own, ref = _values(records, m, b, key), _values(records, REFERENCE, b, key)
            diffs = [sign * scale * (own[s] - ref[s]) for s in sorted(set(own) & set(ref))]
            if not diffs:
                cells.append("—")
                continue
            mean = sum(diffs) / len(diffs)
            verdict = "ahead" if min(diffs) > 0 else "behind" if max(diffs) < 0 else "level"
            cells.append(
                f"{mean:+.{digits}f} [{min(diffs):+.{digits}f}, {max(diffs):+.{digits}f}] {verdict}"
            )
        rows.append([m, *cells])
    return table(["method", *(_budget_label(meta, b) for b in budgets)], rows)


def sweep_table(data: dict, table: Table) -> str:
    """Validation score of every tuning run on the sweep seed: lr sweeps and the AMUSE screen."""
    meta = data["meta"]
    key, scale, digits, _ = _metric(meta)
    budgets = meta["config"]["budgets"]
    chosen = {(s, int(b)) for per in meta.get("selected", {}).values() for b, s in per.items()}
    rows = []
    runs = sorted(
        data["runs"],
        key=lambda r: (
            r["spec"]["method"],
            r["spec"]["phase"],
            r["spec"]["steps"],
            r["spec"]["lr"],
        ),
    )
    for r in runs:
        spec = r["spec"]
        if spec["phase"] == "final":
            continue
        extra = "".join(f":{k}={v}" for k, v in spec["settings"])
        setting = f"{spec['method']}:lr={spec['lr']:g}{extra}"
        by_step = {e["step"]: scale * e["val"][key] for e in r["evals"]}
        cells = [f"{by_step[b]:.{digits}f}" if b in by_step else "" for b in budgets]
        if r["diverged"]:
            cells = [c or "diverged" for c in cells]
        name = f"**{setting}**" if (setting, spec["steps"]) in chosen else setting
        rows.append([spec["phase"], name, *cells])
    return table(["phase", "setting", *(_budget_label(meta, b) for b in budgets)], rows, left=2)


def render(data: dict, table: Table, provenance: Callable[[dict], str]) -> str:
    meta = data["meta"]
    key = meta["metric"]
    seeds = meta["config"]["seeds"]
    what = "accuracy (%)" if key == "accuracy" else "loss (nats per byte)"
    return "\n".join(
        [
            f"**Test {what}**, mean ± half-range over seeds {seeds}. Budget rows (cosine): one "
            "run per budget, lr tuned per budget on validation; anytime rows: one run, evaluated "
            "at x at every budget, one lr for all budgets chosen on validation. lr* = an end of "
            "its grid.\n",
            main_table(data, table),
            f"\n**Anytime minus budget-tuned Muon + cosine** (test {key}, positive = anytime "
            "better; mean [min, max] of the per-seed differences; level = signs differ)\n",
            gap_table(data, table),
            f"\n<details><summary>Tuning runs (validation {key}, seed "
            f"{meta['config']['sweep_seed']}; chosen in bold)</summary>\n",
            sweep_table(data, table),
            "\n</details>\n",
            provenance(meta),
        ]
    )
