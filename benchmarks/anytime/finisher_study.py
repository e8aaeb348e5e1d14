"""Round 2 of the anytime studies: a finisher for any point of an AMUSE run, scored against
Muon + cosine at equal total steps (and a few averages of the trajectory).

Protocol (validation split only for every choice; test reported):

1. Muon + cosine, tuned per budget: one run per (budget, lr) on the sweep seed at every budget
   ``t`` and at every equal-compute budget ``t + round(f t)`` (f: each finisher fraction); the lr
   with the best validation score at that budget wins it. (``equal_lr_from_t``, a compute cut:
   ``t + round(f t)`` is run once, at the lr that won ``t``.)
2. AMUSE: one run per lr in ``finishing.amuse_lrs`` (one lr: the lr round 1 chose for x) on the
   sweep seed, evaluated at ``x`` at every budget; with several lrs, or ``amuse_screen``
   variants, the best mean validation score of ``x`` over the budgets wins (the anytime
   criterion: the product is ``x``, so the finisher does not pick the run's lr).
3. Finisher: at every budget ``t`` of those AMUSE runs, every variant of the grid (start x / y,
   shape linear / 1-sqrt, fraction f, lr factor) is run from the live state with the library's
   ``finish`` (on copies; the run goes on unchanged) on the batches the run sees next. The
   variant with the best mean over budgets of (validation score of the finished model minus the
   validation score of Muon + cosine tuned for ``t + round(f t)``) wins: compared at equal total
   steps. With ``fixed_variant`` only that variant is run and nothing is chosen.
4. Final: the chosen AMUSE setting (with the chosen finisher, and any averages) and Muon +
   cosine at ``t`` and at ``t + round(f t)`` for the chosen fraction, on the other seeds
   (only up to ``final_max_budget`` when set). The sweep-seed runs are the first seed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from .finishing import Variant, equal_compute_steps
from .protocol import RunSpec, Task, score_at
from .study import Runner, Study

BASE = "muon_cosine"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else -math.inf


def finished_score(result: dict, step: int, variant: str, split: str = "val") -> float:
    for e in result["evals"]:
        if e["step"] == step and variant in e.get("finished", {}):
            value = e["finished"][variant][split]["score"]
            return value if math.isfinite(value) else -math.inf
    return -math.inf


class FinisherStudy(Study):
    """The phases above for one task (``task.finishing``), and the JSON they fill."""

    def __init__(self, task: Task, factory: Any, output: Path, meta: dict, resume: bool) -> None:
        super().__init__(task, factory, output, meta, resume)
        self.finishing = task.finishing  # type: ignore[attr-defined]
        self.selection: dict[str, Any] = {}

    # ------------------------------------------------------------------ specs
    def cosine_specs(self, seed: int, steps: list[int], lrs: dict[int, float] | None = None):
        grid = self.study.lr_grid[BASE]
        return [
            RunSpec("sweep" if lrs is None else "final", BASE, lr, seed, s)
            for s in sorted(set(steps), reverse=True)
            for lr in (grid if lrs is None else (lrs[s],))
        ]

    def amuse_spec(
        self, phase: str, lr: float, seed: int, extra: dict, finishers: str, steps: int = 0
    ) -> RunSpec:
        f = self.finishing
        settings = {**dict(f.amuse_settings), **extra, "finishers": finishers}
        if f.ema_widths:
            settings["averages"] = "ema"
        steps = steps or max(self.study.budgets)
        return RunSpec(phase, "amuse", lr, seed, steps, tuple(sorted(settings.items())))

    def equal_steps(self, fractions: tuple[float, ...]) -> list[int]:
        return [equal_compute_steps(t, f) for t in self.study.budgets for f in fractions]

    # ------------------------------------------------------------------ choices
    def best_cosine(self, steps: int, seed: int) -> RunSpec:
        """The best sweep run for ``steps`` by validation (of the lrs that were run there)."""
        candidates = [
            spec
            for lr in self.study.lr_grid[BASE]
            if (spec := RunSpec("sweep", BASE, lr, seed, steps)).run_id in self.results
        ]
        return max(candidates, key=lambda s: score_at(self.results[s.run_id], steps))

    def variant_criterion(self, run: dict, variant: Variant, reference: str) -> dict:
        """Per budget: finished (validation) minus the budget-tuned cosine at equal total steps
        (``reference="equal"``) or at ``t`` (``"t"``); and their mean."""
        seed = self.study.sweep_seed
        gaps = {}
        for t in self.study.budgets:
            steps = equal_compute_steps(t, variant.fraction) if reference == "equal" else t
            cosine = self.results[self.best_cosine(steps, seed).run_id]
            gaps[t] = finished_score(run, t, variant.id) - score_at(cosine, steps)
        return {"per_budget": gaps, "mean": mean(list(gaps.values()))}

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        st, f = self.study, self.finishing
        seed, budgets = st.sweep_seed, st.budgets
        finishers = f.grid_name()
        fractions = tuple(v.fraction for v in f.grid())
        amuse_sweep = [self.amuse_spec("sweep", lr, seed, {}, finishers) for lr in f.amuse_lrs]
        equal = [] if f.equal_lr_from_t else self.equal_steps(fractions)
        cosine_sweep = self.cosine_specs(seed, [*budgets, *equal])
        runner = Runner(self.factory, st.workers, st.threads, self.cache, self.on_result)
        try:
            runner.submit(amuse_sweep + cosine_sweep)
            runner.wait_for(amuse_sweep)
            chosen = max(amuse_sweep, key=lambda s: self._x_mean(s))
            screen = [
                self.amuse_spec("screen", chosen.lr, seed, extra, finishers)
                for _, extra in f.amuse_screen
            ]
            runner.submit(screen)
            runner.wait_for(screen)
            chosen = max([chosen, *screen], key=lambda s: self._x_mean(s))
            runner.wait_for(cosine_sweep)
            if f.equal_lr_from_t:  # one run per t + round(f t), at the lr tuned for t
                lrs = {t: self.best_cosine(t, seed).lr for t in budgets}
                equal_runs = [
                    RunSpec("sweep", BASE, lrs[t], seed, equal_compute_steps(t, fraction))
                    for t in sorted(budgets, reverse=True)
                    for fraction in sorted(set(fractions))
                ]
                runner.submit(equal_runs)
                runner.wait_for(equal_runs)
            variant = self._choose_variant(chosen)
            finals = self._final_specs(chosen, variant)
            runner.submit(finals)
            runner.wait_for(finals)
        finally:
            runner.close()
        self.save("complete")

    def _x_mean(self, spec: RunSpec) -> float:
        return mean([score_at(self.results[spec.run_id], b) for b in self.study.budgets])

    def _choose_variant(self, chosen: RunSpec) -> Variant:
        run = self.results[chosen.run_id]
        table = {
            v.id: {
                "equal": self.variant_criterion(run, v, "equal"),
                "vs_t": self.variant_criterion(run, v, "t"),
            }
            for v in self.finishing.grid()
        }
        best = max(self.finishing.grid(), key=lambda v: table[v.id]["equal"]["mean"])
        self.selection = {
            "amuse": chosen.setting_id,
            "amuse_run": chosen.run_id,
            "variant": best.id,
            "criterion": "mean over budgets of val(finished) - val(Muon+cosine tuned for "
            "t + round(f t)) on the sweep seed",
            "variants": table,
            "cosine": {
                str(s): self.best_cosine(s, self.study.sweep_seed).lr
                for s in sorted({*self.study.budgets, *self.equal_steps((best.fraction,))})
            },
        }
        self.save()
        return best

    def _final_specs(self, chosen: RunSpec, variant: Variant) -> list[RunSpec]:
        st, f = self.study, self.finishing
        lrs = {int(s): lr for s, lr in self.selection["cosine"].items()}
        extra = {k: v for k, v in chosen.settings if k not in ("finishers", "averages")}
        specs = []
        cap = f.final_max_budget or max(st.budgets)
        amuse_steps = max(t for t in st.budgets if t <= cap)
        for seed in st.seeds:
            if seed == st.sweep_seed:
                continue
            specs.append(self.amuse_spec("final", chosen.lr, seed, extra, variant.id, amuse_steps))
            steps = [
                s
                for t in st.budgets
                if t <= cap
                for s in (t, equal_compute_steps(t, variant.fraction))
            ]
            specs += self.cosine_specs(seed, steps, lrs)
        return sorted(specs, key=lambda s: (s.seed, -s.steps))

    # ------------------------------------------------------------------ JSON
    def save(self, status: str = "running") -> None:
        self.meta.update(
            status=status,
            wall_s=round(self.previous_wall_s + time.time() - self.start, 1),
            selection=self.selection,
        )
        payload = {
            "meta": self.meta,
            "runs": list(self.results.values()),
            "records": self.records(),
        }
        self._write(payload)

    def records(self) -> list[dict]:
        """One row per (method, seed, budget t): ``amuse_x``, ``amuse_finished`` (the chosen
        variant, ``total_steps = t + round(f t)``), ``muon_cosine`` (tuned for t),
        ``muon_cosine_equal`` (tuned for the finished model's total steps) and every average."""
        sel = self.selection
        if not sel:
            return []
        variant = Variant.parse(sel["variant"])
        amuse = {}
        for r in self.results.values():
            spec = RunSpec.from_dict(r["spec"])
            core = tuple((k, v) for k, v in spec.settings if k not in ("finishers", "averages"))
            chosen = RunSpec.from_dict(self.results[sel["amuse_run"]]["spec"])
            same = core == tuple(
                (k, v) for k, v in chosen.settings if k not in ("finishers", "averages")
            )
            if (
                spec.method == "amuse"
                and spec.lr == chosen.lr
                and same
                and (spec.phase == "final" or spec.run_id == sel["amuse_run"])
            ):
                amuse[spec.seed] = r
        rows = []
        for seed, run in sorted(amuse.items()):
            for e in run["evals"]:
                t = e["step"]
                rows.append(_row("amuse_x", t, t, seed, run, e))
                if variant.id in e.get("finished", {}):
                    done = e["finished"][variant.id]
                    rows.append(_row("amuse_finished", t, t + done["steps"], seed, run, done))
                for name, scores in e.get("averages", {}).items():
                    rows.append(_row(name, t, t, seed, run, scores))
        cosine = {}
        for r in self.results.values():
            spec = RunSpec.from_dict(r["spec"])
            if spec.method == BASE and sel["cosine"].get(str(spec.steps)) == spec.lr:
                cosine[(spec.seed, spec.steps)] = r
        for t in self.study.budgets:
            for name, steps in (
                (BASE, t),
                (BASE + "_equal", equal_compute_steps(t, variant.fraction)),
            ):
                for (seed, s), run in sorted(cosine.items()):
                    if s == steps and run["evals"]:
                        rows.append(_row(name, t, steps, seed, run, run["evals"][-1]))
        return rows


def _row(method: str, t: int, total: int, seed: int, run: dict, scores: dict) -> dict:
    return {
        "method": method,
        "budget_steps": t,
        "total_steps": total,
        "seed": seed,
        "lr": run["spec"]["lr"],
        "run_id": RunSpec.from_dict(run["spec"]).run_id,
        "diverged": run["diverged"] or bool(scores.get("diverged")),
        "val": scores["val"],
        "test": scores["test"],
    }
