"""README tables from the committed benchmark JSON (never typed by hand).

    python benchmarks/make_tables.py                  # all tables, Markdown on stdout
    python benchmarks/make_tables.py --results DIR    # read another results folder

Reads ``anytime_fashion_mnist.json`` (anytime accuracy and loss per method and epoch, the sweeps)
and, when present, ``step_time.json`` and ``distributed*.json``; a missing file is skipped with a
one-line note, so the script works at every stage of the project.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ANYTIME = "anytime_fashion_mnist.json"
METHOD_ORDER = (
    "adamw_cosine",
    "muon_cosine",
    "sf_adamw",
    "amuse",
    "amuse_reference_compat",
    "sfmuon",
)
BUDGET_METHODS = ("adamw_cosine", "muon_cosine")


def table(header: Iterable[str], rows: Iterable[Iterable[object]], left: int = 1) -> str:
    """A GitHub Markdown table; the first ``left`` columns left-aligned, the rest right-aligned."""
    header = list(header)
    align = [":---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and spread = half the range (max - min) / 2 over seeds."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


def fmt_cell(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "—"
    mean, spread = mean_spread([scale * v for v in values])
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


# ----------------------------------------------------------------------------- anytime


def cell_values(records: list[dict], method: str, epoch: int, key: str) -> list[float]:
    """Anytime methods: the run's evaluation after ``epoch``; budget methods: the run whose
    budget is ``epoch``, evaluated at its end."""
    rows = [r for r in records if r["optimizer"] == method and r["eval_epoch"] == epoch]
    if method in BUDGET_METHODS:
        rows = [r for r in rows if r["budget_epochs"] == epoch]
    return [r[key] for r in rows if r[key] is not None]


def settings(method: str, selected: dict) -> str:
    pick = selected.get(method, {})
    parts = [f"lr {pick['lr']:g}"] if "lr" in pick else []
    if "beta1" in pick:
        parts.append(f"β1 {pick['beta1']:g}, ρ {pick['rho']:g}")
    elif "beta" in pick:
        parts.append(f"β {pick['beta']:g}, ρ 0")
    return ", ".join(parts)


def anytime_tables(data: dict) -> str:
    meta, records = data["meta"], data["records"]
    cfg, selected = meta["config"], meta.get("selected", {})
    epochs = sorted({r["eval_epoch"] for r in records})
    methods = [m for m in METHOD_ORDER if any(r["optimizer"] == m for r in records)]
    seeds = sorted({r["seed"] for r in records})
    out = [
        f"**Anytime test accuracy (%)** on Fashion-MNIST (CifarResNet width {cfg['width']}, blocks "
        f"{tuple(cfg['num_blocks'])}, {cfg['train_size']:,} training images, "
        f"{cfg['test_size']:,} test images), mean ± half-range over seeds {seeds}. Schedule-free "
        "rows: one run evaluated at x after every epoch (BN recalibrated); cosine rows: a separate "
        "run per budget, evaluated at its end.\n",
        table(
            ["method", "settings", *(f"epoch {e}" for e in epochs)],
            [
                [
                    m,
                    settings(m, selected),
                    *(
                        fmt_cell(cell_values(records, m, e, "test_accuracy"), 100, 2)
                        for e in epochs
                    ),
                ]
                for m in methods
            ],
            left=2,
        ),
        "\n**Test loss** (same runs)\n",
        table(
            ["method", *(f"epoch {e}" for e in epochs)],
            [
                [m, *(fmt_cell(cell_values(records, m, e, "test_loss"), 1, 3) for e in epochs)]
                for m in methods
            ],
        ),
        "\n" + gap_table(records, epochs, methods),
        "\n" + sweep_tables(data.get("sweep", []), cfg),
        "\n" + provenance(meta),
    ]
    return "\n".join(out)


def gap_table(records: list[dict], epochs: list[int], methods: list[str]) -> str:
    """Each schedule-free method minus the best budget-tuned baseline at each budget (points)."""
    budgets = [
        e
        for e in epochs
        if any(cell_values(records, m, e, "test_accuracy") for m in BUDGET_METHODS)
    ]
    rows = []
    for m in (m for m in methods if m not in BUDGET_METHODS):
        cells = []
        for b in budgets:
            own = cell_values(records, m, b, "test_accuracy")
            base = [
                mean_spread(v)[0]
                for v in (cell_values(records, bm, b, "test_accuracy") for bm in BUDGET_METHODS)
                if v
            ]
            cells.append(f"{100 * (mean_spread(own)[0] - max(base)):+.2f}" if own and base else "—")
        rows.append([m, *cells])
    header = ["method", *(f"budget {b}" for b in budgets)]
    return (
        "**Accuracy gap to the best budget-tuned cosine baseline** (percentage points, mean "
        "over seeds; positive = the anytime run is ahead)\n\n" + table(header, rows)
    )


def sweep_tables(sweep: list[dict], cfg: dict) -> str:
    if not sweep:
        return "_no sweep recorded_"
    lr_rows = [s for s in sweep if s["phase"] == "lr"]
    out = [
        f"**Learning-rate sweep** (validation accuracy %, budget {min(cfg['budgets'])} epoch, "
        f"seed {cfg['sweep_seed']}, "
        f"{cfg['val_size']:,} held-out training images; chosen in bold)\n"
    ]
    rows = []
    for method in (m for m in METHOD_ORDER if m in cfg["lr_grid"]):
        tried = sorted((s for s in lr_rows if s["optimizer"] == method), key=lambda s: s["lr"])
        cells = [
            _sweep_cell(f"{s['lr']:g}: ", s["val_accuracy"], s["chosen"], s["diverged"])
            for s in tried
        ]
        rows.append([method, " · ".join(cells)])
    out.append(table(["method", "lr: val acc"], rows, left=2))
    br = [s for s in sweep if s["phase"] == "beta_rho"]
    if br:
        out.append(
            f"\n**AMUSE (β1, ρ) sweep** at lr {br[0]['lr']:g} (validation accuracy %, "
            "chosen by the mean over epochs, in bold)\n"
        )
        epochs = sorted({s["eval_epoch"] for s in br if s["eval_epoch"] is not None})
        pairs = sorted({(s["beta1"], s["rho"]) for s in br})
        rows = []
        for beta1, rho in pairs:
            runs = [s for s in br if (s["beta1"], s["rho"]) == (beta1, rho)]
            accs = {s["eval_epoch"]: s["val_accuracy"] for s in runs}
            valid = [a for a in accs.values() if a is not None]
            mean = sum(valid) / len(valid) if valid and len(valid) == len(epochs) else None
            chosen = runs[0]["chosen"]
            rows.append(
                [
                    f"β1 {beta1:g}, ρ {rho:g}",
                    *(_sweep_cell("", accs.get(e), False, False) for e in epochs),
                    _sweep_cell("", mean, chosen, runs[0]["diverged"]),
                ]
            )
        out.append(table(["pair", *(f"epoch {e}" for e in epochs), "mean"], rows))
    return "\n".join(out)


def _sweep_cell(prefix: str, acc: float | None, chosen: bool, diverged: bool) -> str:
    if diverged or acc is None:
        return f"{prefix}diverged" if diverged else f"{prefix}—"
    text = f"{prefix}{100 * acc:.2f}"
    return f"**{text}**" if chosen else text


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
    wall = meta.get("wall_s", meta.get("wall_seconds"))
    if wall is not None:
        parts.append(f"wall time {wall / 60:.1f} min")
    if "status" in meta:
        parts.append(f"status {meta['status']}")
    return "_" + "; ".join(p for p in parts if p) + "._"


# ----------------------------------------------------------------------------- other studies


def step_time_tables(data: dict) -> str:
    """Per matrix set: optimizer step time against torch.optim.Muon, state and peak memory."""
    out = []
    for model, results in data["models"].items():
        rows = [
            [
                name,
                f"{r['median_ms']:.2f}",
                f"{r.get('ratio_to_torch_muon', float('nan')):.2f}",
                f"{r['state_bytes'] / 2**20:.1f}",
                f"{r['step_peak_bytes'] / 2**20:.1f}",
            ]
            for name, r in results.items()
        ]
        out += [
            f"**Optimizer step, {model}**\n",
            table(["optimizer", "median ms", "× torch Muon", "state MiB", "step peak MiB"], rows),
            "",
        ]
    swap = data.get("swap")
    if swap:
        out += [
            "**y ↔ x swap**\n",
            table(["measure", "value"], [[k, f"{v:.3f}"] for k, v in swap.items()]),
            "",
        ]
    out.append(provenance(data.get("meta", {})))
    return "\n".join(out)


def distributed_tables(data: dict) -> str:
    """``distributed_step.json``: the slowest rank's step per world size, and the ratios."""
    if "results" not in data:
        return generic_tables(data)
    rows = []
    for world, r in data["results"].items():
        slowest = r["slowest_rank"]
        matrices = "/".join(str(rank.get("matrices", "?")) for rank in r["per_rank"])
        rows.append(
            [
                world,
                len(r["per_rank"]),
                matrices,
                f"{1e3 * slowest['step_s']:.1f}",
                f"{1e3 * slowest['ns_s']:.1f}",
                f"{1e3 * slowest['gather_s']:.1f}",
            ]
        )
    cfg = data.get("config", {})
    out = [
        f"**AMUSE step per rank** ({cfg.get('matrices', '?')} matrices, slowest rank, "
        "milliseconds)\n",
        table(
            [
                "setting",
                "ranks",
                "matrices per rank",
                "step ms",
                "Newton-Schulz ms",
                "all-gather ms",
            ],
            rows,
        ),
    ]
    ratios = data.get("ratios")
    if ratios:
        goal = data.get("goal_ns_ratio")
        note = f"; goal for Newton-Schulz <= {goal}" if goal else ""
        out += [
            f"\n**Ratios** (2 ranks over 1{note})\n",
            table(["ratio", "value"], [[k, f"{v:.3f}"] for k, v in ratios.items()]),
        ]
    meta = data.get("meta") or data.get("machine", {})
    out.append("\n" + provenance(meta))
    return "\n".join(out)


def generic_tables(data: dict) -> str:
    """Any JSON with a list of flat ``records``: one row per record, scalar fields as columns."""
    records = data.get("records")
    if not isinstance(records, list) or not records:
        raise KeyError("records")
    columns = [k for k, v in records[0].items() if isinstance(v, (int, float, str, bool))]
    rows = [[_short(r.get(c)) for c in columns] for r in records]
    return table(columns, rows) + "\n\n" + provenance(data.get("meta", {}))


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def section(title: str, path: Path, render: Callable[[dict], str]) -> str:
    if not path.is_file():
        return f"<!-- {path.name} not found: {title} table skipped -->"
    try:
        body = render(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        return f"<!-- {path.name}: unexpected layout ({err!r}); {title} table skipped -->"
    return f"### {title}\n\n{body}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    parts = [
        section("Anytime quality (Fashion-MNIST)", args.results / ANYTIME, anytime_tables),
        section("Optimizer step time", args.results / "step_time.json", step_time_tables),
    ]
    for path in sorted(args.results.glob("distributed*.json")):
        if not path.stem.endswith("_quick"):  # smoke runs do not go into the README
            parts.append(section(f"Distributed ({path.stem})", path, distributed_tables))
    sys.stdout.write("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
