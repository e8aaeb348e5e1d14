"""Round 3 of the anytime studies: AMUSE against what an anytime user really runs.

Protocol (every choice on the validation split; test reported; the same lr grid size for every
method; the fork and the finisher each cost ``k = round(f t)`` extra steps, f = ``fraction``):

1. Sweeps on the sweep seed. ``muon_wsd``: one run per lr of Muon + AdamW at a constant lr after
   the warm-up AMUSE has, scored at every budget ``t`` live (the constant-lr peer, no extra
   steps) and forked (:mod:`.forks`: a linear decay to zero over ``k`` steps, the WSD model, at
   ``t + k`` steps). ``sf_adamw``: one run per lr, scored at ``x``. AMUSE: one run per lr, scored
   at ``x`` and, on the batches the run sees next, finished by every variant in ``variants``
   (:func:`amuse_lightning.averaging.finish`). Muon + cosine: one run per (lr, steps) for
   ``t`` and ``t + k`` (the reference rows).
2. Choices (anytime criterion: the mean validation score over the budgets; one lr for all budgets,
   since an anytime run does not know its budget): the WSD lr by its forks, the constant-lr peer's
   lr by its live scores (both from the same runs), SF-AdamW's and AMUSE's by ``x``. The
   finisher variant: the best mean over budgets of val(finished) - val(WSD fork), on the chosen
   AMUSE run. Cosine: the best lr per step count.
3. Finals: every chosen setting on the other seeds (AMUSE with the chosen and the default
   finisher; WSD forks at the chosen lr).
4. Knob screen (``knobs``, where configured): each mechanism at AMUSE's chosen lr on every seed,
   scored at ``x`` (and finished by the chosen variant with ``knob_finisher``); compared with the
   chosen AMUSE run seed by seed.
5. Confirmation: the knob with the best mean validation gain over the budgets and seeds (when it
   is a gain) runs again on every seed with the chosen finisher, so that its ``x`` and its
   finished ``x`` can be set against the WSD fork (``best_x``, ``best_finished`` rows).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .finisher_study import BASE, FinisherStudy, _row, finished_score, mean
from .finishing import Variant, equal_compute_steps
from .protocol import RunSpec, score_at

PEER_ROLES = (("muon_wsd", "muon_wsd"), ("muon_constant", "muon_wsd"), ("sf_adamw", "sf_adamw"))
"""(role, method): the constant-lr peer is the live iterate of a ``muon_wsd`` run."""

DEFAULT_VARIANT = "x/linear/f=0.2/lr_x0.1"
"""The finisher the library shipped before round 3 (``finish()``'s defaults then); round 3b's
studies set ``PeersConfig.default_variant`` to the ``"auto"`` factor it ships since."""


@dataclass(frozen=True)
class PeersConfig:
    """One task's round-3 study (``meta.config.peers`` in its JSON)."""

    amuse_lrs: tuple[float, ...]
    wsd_lrs: tuple[float, ...]
    sf_lrs: tuple[float, ...]
    fraction: float = 0.2
    variants: tuple[str, ...] = (
        "x/linear/f=0.2/lr_x0.03",
        DEFAULT_VARIANT,
        "x/linear/f=0.2/lr_x0.3",
        "z/linear/f=0.2/lr_x0.3",
        "z/linear/f=0.2/lr_x1",
        "z/linear/f=0.2/lr_x1/fresh",
    )
    #: settings every run of every method gets (e.g. the horizon's fixed 10 warm-up steps)
    common: tuple[tuple[str, Any], ...] = ()
    #: AMUSE settings of every AMUSE run
    amuse_settings: tuple[tuple[str, Any], ...] = ()
    knobs: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    final_max_budget: int | None = None
    #: a compute cut: Muon + cosine for ``t + k`` runs once, at the lr tuned for ``t``
    equal_lr_from_t: bool = False
    #: knob runs also finish ``x`` with the chosen variant (off: a compute cut, x only)
    knob_finisher: bool = False
    #: ``finish()``'s defaults: the finals run it beside the chosen variant (the
    #: ``finished_default`` rows)
    default_variant: str = DEFAULT_VARIANT
    #: a screen without sweeps (a compute cut for the horizon, whose lrs round 3 chose): AMUSE at
    #: this lr with every variant on every seed (``screen_variant`` plays the chosen one), each
    #: knob the same way, and the WSD fork at ``wsd_lrs[0]`` beside them; no SF-AdamW, no cosine
    screen_lr: float | None = None
    #: the variant of a screen's chosen-finisher rows (default: the first of ``variants``)
    screen_variant: str | None = None


def fork_score(result: dict, step: int, split: str = "val") -> float:
    for e in result["evals"]:
        if e["step"] == step and "forked" in e:
            value = e["forked"][split]["score"]
            return value if math.isfinite(value) else -math.inf
    return -math.inf


@dataclass
class Chosen:
    """What step 2 chose: setting ids by role, and the finisher variant."""

    specs: dict[str, RunSpec] = field(default_factory=dict)
    variant: str = DEFAULT_VARIANT


class PeersStudy(FinisherStudy):
    """The phases above for one task (``task.peers``), and the JSON they fill."""

    def __init__(self, task: Any, factory: Any, output: Any, meta: dict, resume: bool) -> None:
        super().__init__(task, factory, output, meta, resume)
        self.peers: PeersConfig = task.peers
        self.chosen = Chosen()

    # ------------------------------------------------------------------ specs
    def spec(self, phase: str, method: str, lr: float, seed: int, extra: dict) -> RunSpec:
        p = self.peers
        settings = {**dict(p.common), **extra}
        if method == "amuse":
            settings = {**dict(p.amuse_settings), **settings}
        if method == "muon_wsd":
            settings["forks"] = f"{p.fraction:g}"
        steps = max(self.study.budgets)
        if p.final_max_budget is not None and phase != "sweep":
            steps = max(t for t in self.study.budgets if t <= p.final_max_budget)
        return RunSpec(phase, method, lr, seed, steps, tuple(sorted(settings.items())))

    def amuse(self, phase: str, lr: float, seed: int, variants: list[str], extra=()) -> RunSpec:
        probes = {"finishers": "|".join(variants)} if variants else {}
        return self.spec(phase, "amuse", lr, seed, {**dict(extra), **probes})

    def cosine_steps(self) -> list[int]:
        budgets = self.study.budgets
        return sorted({*budgets, *(equal_compute_steps(t, self.peers.fraction) for t in budgets)})

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        if self.peers.screen_lr is not None:
            self._run_screen()
            return
        st, p = self.study, self.peers
        seed = st.sweep_seed
        wsd = [self.spec("sweep", "muon_wsd", lr, seed, {}) for lr in p.wsd_lrs]
        sf = [self.spec("sweep", "sf_adamw", lr, seed, {}) for lr in p.sf_lrs]
        amuse = [self.amuse("sweep", lr, seed, list(p.variants)) for lr in p.amuse_lrs]
        budgets = list(st.budgets) if p.equal_lr_from_t else self.cosine_steps()
        cosine = self.cosine_specs(seed, budgets)
        runner = self._runner()
        try:
            runner.submit(amuse + wsd + sf + cosine)
            if p.equal_lr_from_t:
                runner.wait_for(cosine)
                lrs = {t: self.best_cosine(t, seed).lr for t in st.budgets}
                equal = [
                    RunSpec("sweep", BASE, lrs[t], seed, equal_compute_steps(t, p.fraction))
                    for t in sorted(st.budgets, reverse=True)
                ]
                runner.submit(equal)
                cosine = cosine + equal
            runner.wait_for(amuse + wsd + sf + cosine)
            self._choose(wsd, sf, amuse)
            finals = self._final_specs_round3()
            runner.submit(finals)
            knobs = self._knob_specs()
            runner.submit(knobs)
            runner.wait_for(finals + knobs)
            self._confirm(runner)
        finally:
            runner.close()
        self.save("complete")

    def _run_screen(self) -> None:
        """``screen_lr``: the base setting, each knob and the WSD fork on every seed."""
        st, p, c = self.study, self.peers, self.chosen
        variants = list(p.variants)
        phase = {seed: "sweep" if seed == st.sweep_seed else "final" for seed in st.seeds}
        base = [self.amuse(phase[seed], p.screen_lr, seed, variants) for seed in st.seeds]
        wsd = [self.spec(phase[seed], "muon_wsd", p.wsd_lrs[0], seed, {}) for seed in st.seeds]
        first = st.seeds.index(st.sweep_seed)  # the sweep seed's runs play the chosen ones
        c.specs.update(amuse=base[first], muon_wsd=wsd[first], muon_constant=wsd[first])
        c.variant = p.screen_variant or variants[0]
        self.selection = {
            "criterion": f"none (a screen at fixed lrs: AMUSE {p.screen_lr:g}, "
            f"Muon WSD {p.wsd_lrs[0]:g}); {c.variant} fills the chosen finisher's rows",
            **{role: spec.setting_id for role, spec in c.specs.items()},
            "runs": {role: spec.run_id for role, spec in c.specs.items()},
            "variant": c.variant,
        }
        knobs = self._knob_specs()
        runner = self._runner()
        try:
            runner.submit(base + wsd + knobs)
            runner.wait_for(base + wsd)
            self.selection["variants"] = self._variant_gaps(base[first], wsd[first])
            runner.wait_for(knobs)
            self._confirm(runner)
        finally:
            runner.close()
        self.save("complete")

    def _confirm(self, runner) -> None:
        """Step 5 once the knobs are in: run (or find in the cache) the best knob's runs."""
        confirm = self._confirm_specs()
        runner.submit(confirm)
        runner.wait_for(confirm)

    def _variant_gaps(self, amuse: RunSpec, wsd: RunSpec) -> dict[str, dict]:
        """Per variant: val(finished) − val(WSD fork) at every budget and their mean."""
        run, forks = self.results[amuse.run_id], self.results[wsd.run_id]
        table = {}
        for v in self.peers.variants:
            gaps = {t: finished_score(run, t, v) - fork_score(forks, t) for t in self.study.budgets}
            table[v] = {"per_budget": gaps, "mean": mean(list(gaps.values()))}
        return table

    def _runner(self):
        from .study import Runner

        st = self.study
        return Runner(self.factory, st.workers, st.threads, self.cache, self.on_result)

    # ------------------------------------------------------------------ choices
    def _mean(self, spec: RunSpec, score) -> float:
        run = self.results[spec.run_id]
        return mean([score(run, t) for t in self.study.budgets if t <= spec.steps])

    def _choose(self, wsd: list[RunSpec], sf: list[RunSpec], amuse: list[RunSpec]) -> None:
        c = self.chosen
        c.specs["muon_wsd"] = max(wsd, key=lambda s: self._mean(s, fork_score))
        c.specs["muon_constant"] = max(wsd, key=lambda s: self._mean(s, score_at))
        c.specs["sf_adamw"] = max(sf, key=lambda s: self._mean(s, score_at))
        c.specs["amuse"] = max(amuse, key=lambda s: self._mean(s, score_at))
        table = self._variant_gaps(c.specs["amuse"], c.specs["muon_wsd"])
        c.variant = max(self.peers.variants, key=lambda v: table[v]["mean"])
        self.selection = {
            "criterion": "anytime: mean validation score over the budgets (x, live, fork); "
            "finisher: mean over budgets of val(finished) - val(WSD fork at the chosen lr)",
            **{role: spec.setting_id for role, spec in c.specs.items()},
            "runs": {role: spec.run_id for role, spec in c.specs.items()},
            "variant": c.variant,
            "variants": table,
            "cosine": {
                str(s): self.best_cosine(s, self.study.sweep_seed).lr for s in self.cosine_steps()
            },
        }
        self.save()

    def _final_specs_round3(self) -> list[RunSpec]:
        st, c = self.study, self.chosen
        variants = sorted({c.variant, self.peers.default_variant})
        lrs = {int(s): lr for s, lr in self.selection["cosine"].items()}
        cap = self.peers.final_max_budget or max(st.budgets)
        steps = [
            s for s in self.cosine_steps() if s <= equal_compute_steps(cap, self.peers.fraction)
        ]
        specs = []
        for seed in st.seeds:
            if seed == st.sweep_seed:
                continue
            specs.append(self.amuse("final", c.specs["amuse"].lr, seed, variants))
            for role, method in PEER_ROLES:
                specs.append(self.spec("final", method, c.specs[role].lr, seed, {}))
            specs += self.cosine_specs(seed, steps, lrs)
        unique = {s.run_id: s for s in specs}
        return sorted(unique.values(), key=lambda s: (s.seed, -s.steps))

    def _knob_spec(self, seed: int, settings: tuple) -> RunSpec:
        """A knob's screen run at AMUSE's chosen lr (finished by the chosen variant with
        ``knob_finisher``, by every variant in a ``screen_lr`` study)."""
        variants = [self.chosen.variant] if self.peers.knob_finisher else []
        if self.peers.screen_lr is not None:
            variants = list(self.peers.variants)
        return self.amuse("screen", self.chosen.specs["amuse"].lr, seed, variants, settings)

    def _knob_specs(self) -> list[RunSpec]:
        return [self._knob_spec(seed, settings) for _, settings in self.peers.knobs
                for seed in self.study.seeds]  # fmt: skip

    def _confirm_specs(self) -> list[RunSpec]:
        """Step 5: the best knob by mean validation gain (over budgets, then seeds) against the
        chosen AMUSE run of the same seed, on every seed with the chosen finisher."""
        if not self.peers.knobs:
            return []
        lr, gains = self.chosen.specs["amuse"].lr, {}
        base = self._by_setting().get(_key(self.chosen.specs["amuse"]), {})
        for name, settings in self.peers.knobs:
            runs = self._by_setting().get(_key(self._knob_spec(0, settings)), {})
            per_seed = [self._gain(runs[seed], base[seed]) for seed in runs if seed in base]
            if per_seed:
                gains[name] = sum(per_seed) / len(per_seed)
        if not gains or max(gains.values()) <= 0.0:
            return []
        best = max(gains, key=gains.get)
        settings = dict(self.peers.knobs)[best]
        self.selection["best_knob"] = {"name": best, "settings": dict(settings),
                                       "mean_val_gain": gains[best], "gains": gains}  # fmt: skip
        self.save()
        if self.peers.knob_finisher:  # the screen runs were finished already: no second run
            return [self._knob_spec(seed, settings) for seed in self.study.seeds]
        return [self.amuse("confirm", lr, seed, [self.chosen.variant], settings)
                for seed in self.study.seeds]  # fmt: skip

    def _gain(self, run: dict, base: dict) -> float:
        budgets = [t for t in self.study.budgets if t <= min(run["spec"]["steps"],
                                                              base["spec"]["steps"])]  # fmt: skip
        return mean([score_at(run, t) - score_at(base, t) for t in budgets])

    def _by_setting(self) -> dict[str, dict[int, dict]]:
        """Results by setting (:func:`_key`), then by seed."""
        out: dict[str, dict[int, dict]] = {}
        for r in self.results.values():
            out.setdefault(_key(RunSpec.from_dict(r["spec"])), {})[r["spec"]["seed"]] = r
        return out

    # ------------------------------------------------------------------ JSON
    def save(self, status: str = "running") -> None:
        self.meta.update(
            status=status,
            wall_s=round(self.previous_wall_s + time.time() - self.start, 1),
            selection=self.selection,
        )
        payload = {"meta": self.meta, "runs": list(self.results.values()),
                   "records": self.records()}  # fmt: skip
        self._write(payload)

    def records(self) -> list[dict]:
        """One row per (method, seed, budget t): ``amuse_x``, ``amuse_finished`` (the chosen
        variant), ``amuse_finished_default``, ``muon_constant``, ``muon_wsd`` (fork, total
        ``t + k``), ``sf_adamw``, ``muon_cosine`` (tuned for ``t``), ``muon_cosine_equal``
        (tuned for ``t + k``), ``knob:<name>`` (and ``knob:<name>:finished``) rows, and the
        confirmed best knob's ``best_x`` / ``best_finished``."""
        sel = self.selection
        if not sel:
            return []
        by_setting = self._by_setting()
        rows = []
        c = self.chosen
        roles = {
            "muon_constant": ("live", c.specs.get("muon_constant")),
            "muon_wsd": ("fork", c.specs.get("muon_wsd")),
            "sf_adamw": ("live", c.specs.get("sf_adamw")),
        }
        for name, (kind, spec) in roles.items():
            for seed, run in sorted(by_setting.get(_key(spec), {}).items()) if spec else []:
                for e in run["evals"]:
                    if kind == "live":
                        rows.append(_row(name, e["step"], e["step"], seed, run, e))
                    elif "forked" in e:
                        done = e["forked"]
                        rows.append(_row(name, e["step"], e["step"] + done["steps"], seed, run,
                                         done))  # fmt: skip
        amuse = c.specs.get("amuse")
        if amuse is not None:
            rows += self._amuse_rows("amuse", by_setting.get(_key(amuse), {}))
            for knob, settings in self.peers.knobs:
                spec = self._knob_spec(0, settings)
                rows += self._amuse_rows(f"knob:{knob}", by_setting.get(_key(spec), {}))
            best = sel.get("best_knob")
            if best is not None:
                spec = self.amuse("confirm", amuse.lr, 0, [c.variant], best["settings"].items())
                rows += self._amuse_rows("best", by_setting.get(_key(spec), {}))
        lrs = sel.get("cosine", {})
        for r in self.results.values():
            spec = RunSpec.from_dict(r["spec"])
            if spec.method != BASE or lrs.get(str(spec.steps)) != spec.lr or not r["evals"]:
                continue
            for t in self.study.budgets:
                if spec.steps == t:
                    rows.append(_row(BASE, t, t, spec.seed, r, r["evals"][-1]))
                if spec.steps == equal_compute_steps(t, self.peers.fraction):
                    rows.append(_row(BASE + "_equal", t, spec.steps, spec.seed, r, r["evals"][-1]))
        return rows

    def _amuse_rows(self, name: str, runs: dict[int, dict]) -> list[dict]:
        rows = []
        for seed, run in sorted(runs.items()):
            for e in run["evals"]:
                t = e["step"]
                knob = name.startswith("knob:")
                rows.append(_row(name if knob else f"{name}_x", t, t, seed, run, e))
                pairs = (("finished", self.chosen.variant),
                         ("finished_default", self.peers.default_variant))  # fmt: skip
                for label, variant in pairs:
                    done = e.get("finished", {}).get(variant)
                    if done is not None:
                        total = t + Variant.parse(variant).steps(t)
                        row_name = f"{name}:{label}" if knob else f"{name}_{label}"
                        rows.append(_row(row_name, t, total, seed, run, done))
        return rows


def _key(spec: RunSpec | None) -> str:
    """The key that groups a setting's seeds: :func:`_core`, and whether finishers were probed
    (a knob's screen runs and its confirmation runs share their core)."""
    probed = spec is not None and any(k == "finishers" for k, _ in spec.settings)
    return _core(spec) + ("|probed" if probed else "")


def _core(spec: RunSpec | None) -> str:
    """A setting without its phase, seed and probe list."""
    if spec is None:
        return ""
    core = [(k, v) for k, v in spec.settings if k != "finishers"]
    return f"{spec.method}:lr={spec.lr:g}:" + ",".join(f"{k}={v}" for k, v in core)
