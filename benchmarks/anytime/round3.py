"""Round 3's per-task settings (:class:`~.peers_study.PeersConfig`) and the reuse of earlier
Muon + cosine runs.

Grids: three learning rates per method (the cosine references keep their earlier grids), around
what rounds 1-2 chose on validation. Every anytime method warms up as AMUSE does (5 % of the
longest budget; the horizon's fixed 10 steps). Knobs (the mechanisms of the literature) are
screened on the horizon and the vision task, at AMUSE's chosen lr, on every seed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .peers_study import PeersConfig
from .protocol import RunSpec

KNOBS_COMMON = (
    ("wd=0 (no decay of z)", (("weight_decay", 0.0),)),
    ("r=2", (("r", 2.0),)),
    ("c_scale=4", (("c_scale", 4.0),)),
)
"""Weight decay on z (every run decays z by 0.05: the knob takes it away), the t^r weighting
(ScheduleFree+'s suggestion for long runs) and the decoupled window. A compute cut on the shared
2-core machine: r=1 (screened in round 1) and a larger decay of z are not screened."""


def knobs(longest: int, c_warmup: int, official: tuple) -> tuple:
    """The screen: the common knobs, the c warm-up (``c_warmup_steps = c_warmup``: the horizon
    passes its shortest budget, 200 steps, as its lr warm-up of 10 steps is too short to matter;
    the vision task twice its lr warm-up, ScheduleFree+'s advice), beta annealing over the
    longest budget, and the official recipe of the AMUSE authors for the task's kind
    (``official``)."""
    return (
        *KNOBS_COMMON,
        ("c warm-up", (("c_warmup_steps", c_warmup),)),
        beta_annealing(longest),
        official,
    )


def beta_annealing(longest: int) -> tuple:
    """ScheduleFree+'s annealing of ``1 - beta`` from ``1 - beta1`` to 0.035 over the longest
    budget, instead of the ``rho`` rise."""
    settings = (("beta_anneal_steps", longest), ("beta_final", 0.965), ("rho", 0.0))
    return ("beta annealed to 0.965", settings)


def official_lm(longest: int) -> tuple:
    """The authors' 124M LM launch script: warm-up 37.5 % of the run, beta1 0.6, rho 0.8,
    gradient clipping 0.5 (weight decay 0.05 on z, as every run here has)."""
    settings = (("warmup_steps", round(0.375 * longest)), ("beta1", 0.6), ("rho", 0.8),
                ("clip", 0.5))  # fmt: skip
    return ("official recipe (LM: warm-up 37.5 %, beta1 0.6, rho 0.8, clip 0.5)", settings)


OFFICIAL_VISION = (
    "official recipe (ImageNet: beta1 0.6, rho 0.8)",
    (("beta1", 0.6), ("rho", 0.8)),
)
"""The authors' ImageNet ResNet-50 settings (warm-up 5 %, as every vision run here has)."""


def peers_config(task: Any, quick: bool) -> PeersConfig:
    name, longest = task.name, max(task.study.budgets)
    if quick:
        lrs = task.study.lr_grid["amuse"][:2]
        return PeersConfig(
            amuse_lrs=lrs, wsd_lrs=lrs, sf_lrs=lrs,
            variants=("x/linear/f=0.2/lr_x0.1", "z/linear/f=0.2/lr_x1/fresh"),
            common=(("warmup_steps", 2),) if name == "horizon" else (),
            knobs=(("r=1", (("r", 1.0),)),) if name in ("horizon", "vision") else (),
        )  # fmt: skip
    if name == "horizon":
        return PeersConfig(
            amuse_lrs=(1e-2, 3e-2, 1e-1), wsd_lrs=(3e-3, 1e-2, 3e-2), sf_lrs=(1e-3, 3e-3, 1e-2),
            common=(("warmup_steps", 10),),
            knobs=knobs(longest, min(task.study.budgets), official_lm(longest)),
            equal_lr_from_t=True,
        )  # fmt: skip
    if name == "vision":
        warmup = max(2, round(task.study.warmup_fraction * longest))
        # one more point where the first sweep chose an end of its grid: AMUSE 0.1 (top),
        # Muon WSD 0.01 (bottom)
        return PeersConfig(
            amuse_lrs=(1e-2, 3e-2, 1e-1, 3e-1), wsd_lrs=(3e-3, 1e-2, 3e-2, 1e-1),
            sf_lrs=(3e-3, 1e-2, 3e-2),
            knobs=knobs(longest, 2 * warmup, OFFICIAL_VISION),
        )  # fmt: skip
    # the LM and the ViT screen only the knob that won the horizon and vision screens (added
    # after those finished), to see whether it holds on the other two tasks
    if name == "lm":
        return PeersConfig(
            amuse_lrs=(3e-3, 1e-2, 3e-2), wsd_lrs=(3e-3, 1e-2, 3e-2), sf_lrs=(3e-4, 1e-3, 3e-3),
            knobs=(beta_annealing(longest),),
        )  # fmt: skip
    if name == "vit":
        return PeersConfig(
            amuse_lrs=(3e-3, 1e-2, 3e-2), wsd_lrs=(3e-3, 1e-2, 3e-2), sf_lrs=(1e-3, 3e-3, 1e-2),
            knobs=(beta_annealing(longest),),
        )  # fmt: skip
    raise ValueError(f"no round-3 settings for task {name!r}")


AUTO_VARIANT = "x/linear/f=0.2/lr_xauto"
"""``finish()``'s defaults since round 3b (``lr_factor="auto"``, 0.3 up to 800 steps: on the
short tasks the same cooldown as ``x/linear/f=0.2/lr_x0.3``, which it replaced in the grid)."""

ANNEALED_VARIANTS = (
    "x/linear/f=0.2/lr_x0.1",
    AUTO_VARIANT,
    "x/linear/f=0.2/lr_x1",
    "x/linear/f=0.2/lr_x0.3/fresh",
    "y/linear/f=0.2/lr_x0.3",
)
"""The finishers screened on annealed runs: round 3 chose them on runs with the ``rho`` rise,
whose ``y`` sits further from ``x``; with ``beta`` annealed to 0.965 the gradient point is
``x`` within 3.5 % of ``z - x`` late in the run, so a larger lr factor may pay."""

BETA_FINALS = (0.8, 0.9, 0.99)
"""``beta_final`` around the 0.965 of ScheduleFree+ (``1 - beta`` of 0.1 and 0.01 at the end;
0.8 is ``beta1``: a constant ``beta``, no annealing and no ``rho`` rise). 0.8 was added after
0.9 beat 0.965 and 0.99 lost on the vision and LM screens, to see where the trend ends."""

HELD_OUT_LENGTH = """A held-out run length for a length-aware ``beta_final`` (written before the
run): 0.9 was the safe winner on the 128-200-step tasks and 0.965 on the 6,400-step horizon;
``1 - beta_final = 0.1 min(1, (200 / A)^0.3)`` for a run of ``A`` planned steps passes through
both (it was fitted on them) and predicts 0.946 for ``A = 1,600``. The check: the horizon
annealed over 1,600 steps, ``beta_final`` 0.9, 0.946 and 0.99 against 0.965 on every seed

    python benchmarks/run_anytime.py horizon --study annealed --budgets 200 400 800 1600 \\
        --beta-finals 0.9 0.946 0.99 --output benchmarks/results/anytime_horizon_annealed_1600.json

The rule holds there if 0.946 is level with or ahead of every other value on validation."""

HELD_OUT_LENGTH_2 = """A second held-out run length (written before the run, after the first check
failed its criterion): at 1,600 steps 0.9 was best (0.946 behind it by 0.007 nats, 0.965 by
0.034), at 6,400 steps 0.965 (0.9 behind by 0.015, 0.99 by 0.033); on the three short tasks
0.9 beat 0.965 or was level with it (0.8 beat it on two and lost on the ViT). The second
rule keeps 0.9 up to 1,600 planned steps, moves ``1 - beta`` log-linearly in ``log A`` to
0.035 at 6,400 and holds 0.965 beyond (no run was longer):
``1 - beta_final = 0.1 * 0.35^u``, ``u = clamp(log2(A / 1600) / 2, 0, 1)``; 0.941 at
``A = 3,200``. The check: the horizon annealed over 3,200 steps, ``beta_final`` 0.9, 0.941 and
0.9565 (the first rule's value) against 0.965, 3 seeds

    python benchmarks/run_anytime.py horizon --study annealed \\
        --budgets 200 400 800 1600 3200 --beta-finals 0.9 0.941 0.9565 \\
        --output benchmarks/results/anytime_horizon_annealed_3200.json

The rule holds there if, on validation, (a) at every budget the mean loss of 0.941 is above the
best value's by no more than ``s``, half the seed range of 0.965's loss at that budget, and (b)
at 3,200 steps 0.941 is not behind 0.965 on every seed. Then ``beta_final="auto"`` (this rule,
resolved with ``beta_anneal_steps``) becomes the default; otherwise 0.965 stays."""

HORIZON_SCREEN = (AUTO_VARIANT, "x/linear/f=0.2/lr_x0.1")
"""The horizon's finishers in round 3b: ``finish()``'s ``lr_factor="auto"`` (which the short
tasks' annealed runs favoured, at 0.3 there; the ``finished_default`` rows) and the earlier
default 0.1 (the rows of the chosen finisher)."""


Y_START_CHECK = """The finisher's start on the long run (written before the run): on the three
short tasks a start from ``y`` at factor 0.3 led ``finish()``'s ``x`` start in rounds 3b and 3c
(0.3-0.65 points, 0.003-0.004 nats, one seed), but no annealed run of the horizon was finished
from ``y``. The check: the horizon annealed over 6,400 steps at lr 0.03, 3 seeds, every run
finished from ``x`` and from ``y`` with ``lr_factor="auto"``, no knobs

    python benchmarks/run_anytime.py horizon --study annealed --beta-finals \\
        --finishers x/linear/f=0.2/lr_xauto y/linear/f=0.2/lr_xauto \\
        --output benchmarks/results/anytime_horizon_ystart.json

``y`` supports a later change of ``finish()``'s default start if, on validation, it is level
with or ahead of ``x`` at every budget (the every-seed verdict) and ahead at one at least; this
session reports the result and changes no default."""


def annealed_config(
    task: Any, quick: bool, beta_finals: list[float] | None = None,
    finishers: list[str] | None = None,
) -> PeersConfig:  # fmt: skip
    """Round 3b: the round-3 study with beta annealing as every AMUSE run's setting (what the
    shipped configs and ``AmuseCallback`` run), so that AMUSE's lr and the finisher are chosen
    on annealed runs, with ``beta_final`` screened (each knob run finished by the chosen
    variant). The peers, their grids and the references are round 3's. The horizon (whose
    round 3 took 104 minutes) runs a screen only: AMUSE and the WSD fork at round 3's lrs on
    every seed, the finisher's ``"auto"`` and 0.1 factors, and the ``beta_final`` knobs
    (``beta_finals`` instead of :data:`BETA_FINALS` where given)."""
    base = peers_config(task, quick)
    anneal = beta_annealing(max(task.study.budgets))[1]
    values = BETA_FINALS if beta_finals is None else tuple(beta_finals)
    knobs = tuple((f"beta_final={b:g}", (("beta_final", b),)) for b in values)
    if quick and beta_finals is None:  # one knob, the value the smoke tests look for
        knobs = (("beta_final=0.9", (("beta_final", 0.9),)),)
    if task.name == "horizon":  # a compute cut: no sweeps, round 3's lrs (AMUSE 0.03, WSD 0.01)
        lr, wsd_lr = (base.amuse_lrs[0], base.wsd_lrs[0]) if quick else (0.03, 0.01)
        variants = HORIZON_SCREEN if finishers is None else tuple(finishers)
        return dataclasses.replace(
            base, amuse_settings=anneal, variants=variants, knob_finisher=True,
            knobs=knobs, screen_lr=lr, wsd_lrs=(wsd_lr,), default_variant=AUTO_VARIANT,
            screen_variant=variants[-1],
        )  # fmt: skip
    if quick:
        return dataclasses.replace(
            base, amuse_settings=anneal, knobs=knobs, knob_finisher=True,
            default_variant=AUTO_VARIANT,
        )  # fmt: skip
    return dataclasses.replace(
        base, amuse_settings=anneal, variants=ANNEALED_VARIANTS, knobs=knobs, knob_finisher=True,
        default_variant=AUTO_VARIANT,
    )  # fmt: skip


def reusable_cosine_runs(paths: list[Path]) -> tuple[dict[str, dict], dict[str, Any]]:
    """Muon + cosine runs of earlier studies by ``run_id`` (the same task, code path and spec),
    and where they came from (for ``meta.reused``)."""
    runs: dict[str, dict] = {}
    sources = {}
    for path in paths:
        payload = json.loads(path.read_text())
        found = 0
        for run in payload["runs"]:
            spec = RunSpec.from_dict(run["spec"])
            if spec.method == "muon_cosine" and not run["diverged"]:
                key = RunSpec("sweep", spec.method, spec.lr, spec.seed, spec.steps).run_id
                runs.setdefault(key, {**run, "reused_from": path.name})
                found += 1
        sources[path.name] = {"git_commit": payload["meta"].get("git_commit"), "runs": found}
    return runs, sources


def reusable_peer_runs(path: Path) -> dict[str, dict]:
    """Every run of a round-3 study that is not AMUSE's (the peers and the cosine references),
    by ``run_id``: round 3b runs the same specs."""
    payload = json.loads(path.read_text())
    return {
        RunSpec.from_dict(run["spec"]).run_id: run
        for run in payload["runs"]
        if run["spec"]["method"] != "amuse"
    }


def same_scores(a: dict, b: dict) -> bool:
    """Whether two results of one spec scored the same at every evaluation (validation, test)."""
    pairs = zip(a["evals"], b["evals"], strict=False)
    return len(a["evals"]) == len(b["evals"]) and all(
        x["step"] == y["step"] and x["val"] == y["val"] and x["test"] == y["test"] for x, y in pairs
    )


def auto_config(task: Any, quick: bool) -> PeersConfig:
    """Round 3c: round 3b on the short tasks with ``beta_final="auto"``, the default since the
    3,200-step check (``HELD_OUT_LENGTH_2``), as every AMUSE run's setting: the library resolves
    it from the annealing length (0.9 for these 128-200-step runs), AMUSE's lr and the finisher
    are chosen anew on validation on those runs, and 0.965 (the earlier default) is the knob.
    The horizon is not run: over its 6,400 steps ``"auto"`` is 0.965, which round 3b ran."""
    if task.name == "horizon":
        raise ValueError("over the horizon's 6,400 steps beta_final='auto' is 0.965: round 3b")
    base = annealed_config(task, quick)
    settings = {**dict(base.amuse_settings), "beta_final": "auto"}
    return dataclasses.replace(
        base, amuse_settings=tuple(sorted(settings.items())),
        knobs=(("beta_final=0.965", (("beta_final", 0.965),)),),
    )  # fmt: skip
