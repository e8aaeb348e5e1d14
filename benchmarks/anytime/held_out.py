"""The held-out run lengths of a length-aware ``beta_final`` (round 3b and after).

Each check anneals the horizon over a run length no rule was fitted on and screens
``beta_final`` values against 0.965 (``round3.HELD_OUT_LENGTH``, ``HELD_OUT_LENGTH_2``: the
rules and the pass criteria, committed before the runs). :func:`second_criterion` evaluates the
second check's criterion from the JSON, and applies it to the first check for comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from md_tables import provenance, table

from . import peers_tables

DEFAULT = 0.965
"""``beta_final`` of the chosen AMUSE run (``amuse_x`` rows) in every check."""


@dataclass(frozen=True)
class Check:
    file: str
    title: str
    rule: float
    """The value the rule under test gives for this run length."""
    text: str
    outcome: str


CHECKS = (
    Check(
        "anytime_horizon_annealed_1600.json", "the horizon annealed over 1,600 steps", 0.946,
        "Written down before the run (`benchmarks/anytime/round3.py`, `HELD_OUT_LENGTH`): "
        "`1 - beta_final = 0.1 min(1, (200 / A)^0.3)` for a run of `A` planned steps goes "
        "through the screens' winners at 200 steps (0.9) and 6,400 steps (0.965), which it was "
        "fitted on, and predicts 0.946 for 1,600 steps; it holds if 0.946 is level with or "
        "ahead of 0.9, 0.965 and 0.99 on validation.",
        "It did not hold (0.946 behind 0.965 at 200 steps by 0.001 nats on every seed), so no "
        "rule shipped then.",
    ),
    Check(
        "anytime_horizon_annealed_3200.json", "the horizon annealed over 3,200 steps", 0.941,
        "Written down before the run (`benchmarks/anytime/round3.py`, `HELD_OUT_LENGTH_2`), "
        "after the first check: 0.9 up to 1,600 planned steps, `1 - beta_final` log-linear in "
        "`log A` to 0.035 at 6,400 steps and 0.965 beyond, which predicts 0.941 for 3,200 "
        "steps; it holds if (a) at every budget the validation loss of 0.941 is above the best "
        "value's by no more than `s`, half the seed range of 0.965's loss there, and (b) at "
        "3,200 steps 0.941 is not behind 0.965 on every seed.",
        'It held, so `beta_final="auto"` (this rule) became the default. 0.9 was ahead of '
        "0.965 at 3,200 steps on every seed, so the crossover lies beyond 3,200 steps and the "
        "rule is on the cautious side there. The check is a weak one: 0.9, 0.9565 and 0.965 "
        "were within the seed spread of the best value at every budget too, so it shows that "
        "the rule loses nothing there rather than that it beats a constant.",
    ),
)  # fmt: skip


def losses(data: dict, split: str = "val") -> dict[float, dict[int, dict[int, float]]]:
    """``beta_final -> budget -> seed -> loss`` of ``x`` (no finisher)."""
    values: dict[float, dict[int, dict[int, float]]] = {}
    for record in data["records"]:
        method = record["method"]
        if method == "amuse_x":
            value = DEFAULT
        elif method.startswith("knob:beta_final=") and method.count(":") == 1:
            value = float(method.split("=")[1])
        else:
            continue
        by_budget = values.setdefault(value, {}).setdefault(record["budget_steps"], {})
        by_budget[record["seed"]] = record[split]["loss"]
    return values


def second_criterion(data: dict, rule: float) -> tuple[list[list[str]], bool]:
    """``HELD_OUT_LENGTH_2``'s criterion for ``rule``: one row per budget (each value's mean
    validation loss minus the best mean, ``s``, whether (a) holds) and whether (a) and (b)
    hold; (b) is whether ``rule`` is not behind 0.965 on every seed at the longest budget."""
    table = losses(data)
    budgets = sorted(table[DEFAULT])
    values = sorted(table)
    rows, holds = [], True
    for t in budgets:
        means = {v: sum(table[v][t].values()) / len(table[v][t]) for v in values}
        best = min(means.values())
        base = table[DEFAULT][t].values()
        s = (max(base) - min(base)) / 2
        ok = means[rule] - best <= s
        holds &= ok
        rows.append([f"{t:,}", *(f"{means[v] - best:+.4f}" for v in values), f"{s:.4f}",
                     "yes" if ok else "no"])  # fmt: skip
    last = budgets[-1]
    behind = all(table[rule][last][k] > table[DEFAULT][last][k] for k in table[DEFAULT][last])
    rows.append([f"(b) at {last:,}", *[""] * len(values), "",
                 "no: behind on every seed" if behind else "yes"])  # fmt: skip
    return rows, holds and not behind


def criterion_table(data: dict, rule: float) -> str:
    values = sorted(losses(data))
    rows, holds = second_criterion(data, rule)
    header = ["budget t", *(f"{v:g} − best" for v in values), "s", f"(a): {rule:g} within s"]
    verdict = "holds" if holds else "does not hold"
    return table(header, rows) + f"\n\nThe second check's criterion for {rule:g} {verdict}."


def held_out_section(folder: Path) -> str:
    """docs/results.md: each held-out check (validation, then test; each value − 0.965 per
    seed), with the second check's criterion evaluated on both."""
    parts = []
    for check in CHECKS:
        path = folder / check.file
        if not path.is_file():
            parts.append(f"<!-- {check.file} not found: the held-out check is skipped -->")
            continue
        data = json.loads(path.read_text())
        parts += [
            f"#### Held-out run length: {check.title}\n",
            check.text + " Each value minus 0.965, every seed, validation:\n",
            peers_tables.knob_table(data, table), "", "Same, test:\n",
            peers_tables.knob_table(data, table, "test"), "",
            "The second check's criterion (validation; mean loss minus the best value's mean, "
            "lower is better):\n",
            criterion_table(data, check.rule), "", check.outcome, "",
            provenance(data["meta"]) + "\n",
        ]  # fmt: skip
    return "\n".join(parts)


Y_START_FILE = "anytime_horizon_ystart.json"
"""The finisher's start on the long run (``round3.Y_START_CHECK``)."""


def y_start_section(folder: Path) -> str:
    """docs/results.md: the horizon finished from ``y`` against from ``x`` (both with
    ``lr_factor="auto"``; the ``amuse_finished`` and ``amuse_finished_default`` rows), every
    seed, validation and test, and each against the WSD fork; with the written-down verdict."""
    path = folder / Y_START_FILE
    if not path.is_file():
        return f"<!-- {Y_START_FILE} not found: the finisher-start check is skipped -->"
    data = json.loads(path.read_text())
    budgets = peers_tables.budgets_of(data["records"])
    _, _, digits, _ = peers_tables.metric(data["meta"])
    pairs = (("amuse_finished", "amuse_finished_default", "from y − from x"),
             ("amuse_finished_default", "muon_wsd", "from x − WSD fork"),
             ("amuse_finished", "muon_wsd", "from y − WSD fork"))  # fmt: skip
    parts = [
        "#### The finisher's start on the long run\n",
        "Written down before the run (`benchmarks/anytime/round3.py`, `Y_START_CHECK`): the "
        "horizon annealed over 6,400 steps (lr 0.03, 3 seeds), every run finished from `x` and "
        'from `y` with `lr_factor="auto"`; a start from `y` would support changing `finish()`\'s '
        "default if it is level with or ahead of `x` at every budget on validation (every-seed "
        "verdict) and ahead at one at least.\n",
    ]
    verdicts = []
    for split in ("val", "test"):
        rows = []
        for own, ref, label in pairs:
            gaps = [peers_tables.comparison(data, own, ref, t, split) for t in budgets]
            if split == "val" and own == "amuse_finished" and ref.endswith("default"):
                verdicts = [g.get("verdict") for g in gaps]
            rows.append([label, *(peers_tables.gap_text(g, digits) for g in gaps)])
        parts += [f"{'Validation' if split == 'val' else 'Test'} (nats, + = first better):\n",
                  table(["finished", *(f"t = {t:,}" for t in budgets)], rows), ""]  # fmt: skip
    holds = verdicts and "behind" not in verdicts and "ahead" in verdicts
    parts += [f"The criterion {'holds' if holds else 'does not hold'} on validation.", "",
              provenance(data["meta"]) + "\n"]  # fmt: skip
    return "\n".join(parts)
