"""The tuning protocol shared by every anytime study, and one training run.

Protocol (the same tuning budget for every method; validation split only, never the test split):

1. Budget methods (AdamW + cosine, Muon + cosine): one run per (budget, lr) on the sweep seed,
   the lr with the best validation score at the end of each budget wins that budget.
2. Anytime methods (Schedule-Free AdamW, AMUSE): one run per lr of the longest budget on the sweep
   seed, evaluated at every budget; the lr with the best mean validation score over the budgets
   wins (one lr for every budget: the run does not know its budget). Same lr grid size as 1.
3. AMUSE knob screen: each variant in ``variants`` at AMUSE's chosen lr (sweep seed, validation);
   the best by mean validation score (with the library defaults among the candidates) is re-run
   at the neighbouring lr of the grid, and the best of those is ``amuse_best``.
4. Final: every chosen setting on the other seeds. The sweep-seed run of a chosen setting is its
   first seed (every run is scored on validation and test at each evaluation; only validation
   picks). Anytime runs are scored at ``x`` (BatchNorm recalibrated at ``x`` where the model has
   BatchNorm, without disturbing the run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .methods import BUDGET_METHODS, build_optimizer, is_budget_method
from .probes import Probes


@dataclass(frozen=True)
class StudyConfig:
    """The protocol's knobs; every task has one (``meta.config`` in the JSON)."""

    budgets: tuple[int, ...]  # optimizer steps
    lr_grid: dict[str, tuple[float, ...]]
    weight_decay: float
    warmup_fraction: float = 0.05  # of the run (budget methods) / of the longest budget (anytime)
    seeds: tuple[int, ...] = (0, 1, 2)
    sweep_seed: int = 0
    variants: tuple[tuple[str, dict[str, Any]], ...] = ()
    retune_best: bool = True
    workers: int = 2
    threads: int = 1


BatchNormSource = tuple[Callable[[], Iterator[Any]], int]
"""``(batches, count)``: a function returning training batches, and how many of them re-estimate
the BatchNorm statistics of an averaged model (``None`` for tasks without BatchNorm)."""


class Task(Protocol):
    """What a study needs from a task; ``score`` is higher-is-better (accuracy, or -loss)."""

    name: str
    study: StudyConfig

    def setup(self) -> None: ...
    def build_model(self, seed: int) -> nn.Module: ...
    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]: ...
    def train_batches(self, seed: int) -> Iterator[Any]: ...
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...
    def bn_batches(self, seed: int) -> BatchNormSource | None: ...


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``settings``: AMUSE keyword overrides as sorted ``(key, value)`` pairs,
    plus ``warmup_fraction`` / ``warmup_steps``, ``wd_at_y`` (weight decay applied at y instead of
    at z), ``weight_decay`` (instead of the study's), ``clip`` (gradient-norm clipping before each
    step) and ``fallback_lr_ratio`` (fallback lr / Muon lr), for every method; and the probes'
    keys (``finishers``, ``averages``, ``forks``)."""

    phase: str  # "sweep", "screen", "final"
    method: str
    lr: float
    seed: int
    steps: int
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def run_id(self) -> str:
        extra = "".join(f":{k}={v}" for k, v in self.settings)
        return f"{self.method}:lr={self.lr:g}{extra}:seed={self.seed}:steps={self.steps}"

    @property
    def setting_id(self) -> str:
        """The setting without seed and phase (what a chosen configuration is)."""
        extra = "".join(f":{k}={v}" for k, v in self.settings)
        return f"{self.method}:lr={self.lr:g}{extra}"

    def with_seed(self, seed: int) -> RunSpec:
        return RunSpec("final", self.method, self.lr, seed, self.steps, self.settings)

    @staticmethod
    def from_dict(d: dict) -> RunSpec:
        return RunSpec(
            d["phase"],
            d["method"],
            d["lr"],
            d["seed"],
            d["steps"],
            tuple((k, v) for k, v in d["settings"]),
        )

    def to_dict(self) -> dict:
        return {
            "phase": self.phase,
            "method": self.method,
            "lr": self.lr,
            "seed": self.seed,
            "steps": self.steps,
            "settings": [list(kv) for kv in self.settings],
        }


def eval_points(spec: RunSpec, study: StudyConfig) -> list[int]:
    if is_budget_method(spec.method):
        return [spec.steps]
    return [b for b in study.budgets if b <= spec.steps]


def train_run(spec: RunSpec, task: Task) -> dict:
    """Train one run; evaluate at its end (budget methods) or at every budget (anytime).

    Returns ``{"spec", "evals": [{"step", "val": {...}, "test": {...}}], "wall_s", "diverged"}``;
    an AMUSE run whose settings ask for probes (:mod:`.probes`: ``finishers``, ``averages``) also
    has ``"finished"`` and ``"averages"`` in each evaluation.
    """
    study = task.study
    start = time.perf_counter()
    settings = dict(spec.settings)
    fraction = settings.pop("warmup_fraction", study.warmup_fraction)
    warmup_steps = settings.pop("warmup_steps", None)  # absolute; wins over the fraction
    wd_at_y = settings.pop("wd_at_y", False)
    weight_decay = settings.pop("weight_decay", study.weight_decay)
    clip = settings.pop("clip", None)
    fallback_ratio = settings.pop("fallback_lr_ratio", 1.0)
    probe_keys = {k: settings.pop(k) for k in ("finishers", "averages", "forks") if k in settings}
    horizon = spec.steps if is_budget_method(spec.method) else max(study.budgets)
    warmup = warmup_steps or max(2, round(fraction * horizon))
    torch.manual_seed(spec.seed)  # model init and the data stream of this seed
    model = task.build_model(spec.seed)
    groups = task.param_groups(model, 0.0 if wd_at_y else weight_decay)
    if wd_at_y:
        settings["weight_decay_at_y"] = weight_decay
    for g in groups:  # fallback lr = ratio * Muon lr, through the groups' lr_scale
        if not g["use_muon"] and fallback_ratio != 1.0:
            g["lr_scale"] = g.get("lr_scale", 1.0) * fallback_ratio
    handle = build_optimizer(
        spec.method,
        model,
        groups,
        lr=spec.lr,
        weight_decay=weight_decay,
        warmup_steps=warmup,
        total_steps=spec.steps,
        settings=settings,
    )
    probes = Probes(task, model, handle, probe_keys, spec.seed)
    points = set(eval_points(spec, study))
    batches = probes.wrap(task.train_batches(spec.seed))
    evals: list[dict] = []
    diverged = False
    model.train()
    for step in range(1, spec.steps + 1):
        loss = task.loss(model, next(batches))
        if not torch.isfinite(loss):
            diverged = True
            print(f"  {spec.run_id}: diverged at step {step}", flush=True)
            break
        handle.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        handle.step()
        probes.after_step()
        if step in points:
            evals.append({"step": step, **evaluate_both(task, model, handle, spec.seed)})
            evals[-1].update(probes.at(step))
    return {
        "spec": spec.to_dict(),
        "evals": evals,
        "warmup_steps": warmup,
        "wall_s": round(time.perf_counter() - start, 2),
        "diverged": diverged,
    }


def evaluate_both(task: Task, model: nn.Module, handle: Any, seed: int) -> dict:
    """Validation and test metrics of the model to ship: x for averaged methods (BatchNorm
    re-estimated at x where the task has it), else the iterate; training state (y, BatchNorm
    statistics, random streams) is left as it was."""
    with handle.evaluation_weights(task.bn_batches(seed)):
        result = {"val": task.evaluate(model, "val"), "test": task.evaluate(model, "test")}
    model.train()
    return result


# ----------------------------------------------------------------------------- selection


def score_at(result: dict, step: int, split: str = "val") -> float:
    """The run's score at ``step`` (``-inf`` when it diverged before)."""
    for e in result["evals"]:
        if e["step"] == step:
            value = e[split]["score"]
            return value if math.isfinite(value) else -math.inf
    return -math.inf


def mean_score(result: dict, budgets: tuple[int, ...], split: str = "val") -> float:
    """The anytime criterion: the mean score over the budgets the run covers."""
    scores = [score_at(result, b, split) for b in budgets if b <= result["spec"]["steps"]]
    return sum(scores) / len(scores) if scores else -math.inf


@dataclass
class Choice:
    """A chosen setting: the spec it came from and, for budget methods, one per budget."""

    label: str
    specs: dict[int, RunSpec] = field(default_factory=dict)  # budget -> spec


def choose_budget_lrs(
    method: str, results: dict[str, dict], specs: list[RunSpec], budgets: tuple[int, ...]
) -> Choice:
    choice = Choice(method)
    for b in budgets:
        candidates = [s for s in specs if s.method == method and s.steps == b]
        choice.specs[b] = max(candidates, key=lambda s: score_at(results[s.run_id], b))
    return choice


def choose_anytime(
    label: str, results: dict[str, dict], specs: list[RunSpec], budgets: tuple[int, ...]
) -> Choice:
    best = max(specs, key=lambda s: mean_score(results[s.run_id], budgets))
    return Choice(label, {b: best for b in budgets})


def final_specs(choices: list[Choice], seeds: tuple[int, ...], sweep_seed: int) -> list[RunSpec]:
    specs = {}
    for c in choices:
        for spec in c.specs.values():
            for seed in seeds:
                if seed != sweep_seed:
                    s = spec.with_seed(seed)
                    specs[s.run_id] = s
    return sorted(specs.values(), key=lambda s: -s.steps)


def records(choices: list[Choice], results: dict[str, dict], study: StudyConfig) -> list[dict]:
    """One row per (method, seed, budget): the test (and validation) metrics there."""
    rows = []
    for c in choices:
        for b, spec in c.specs.items():
            for seed in study.seeds:
                s = spec if seed == study.sweep_seed else spec.with_seed(seed)
                result = results.get(s.run_id)
                if result is None:
                    continue
                ev = next((e for e in result["evals"] if e["step"] == b), None)
                rows.append(
                    {
                        "method": c.label,
                        "budget_steps": b,
                        "seed": seed,
                        "lr": spec.lr,
                        "settings": dict(spec.settings),
                        "run_id": s.run_id,
                        "schedule": "budget" if spec.method in BUDGET_METHODS else "anytime",
                        "diverged": result["diverged"],
                        "test": None if ev is None else ev["test"],
                        "val": None if ev is None else ev["val"],
                    }
                )
    return rows
