"""Round 3's Markdown (``anytime_<task>_peers.json``) and round 3b's
(``anytime_<task>_annealed.json``): the README's summary tables and docs/results.md's sections
(``benchmarks/make_tables.py`` assembles them)."""

from __future__ import annotations

from pathlib import Path

from md_tables import load_all, provenance, table

from . import peers_tables

PEERS_TASKS = {
    "horizon": "byte GPT, width 64, 200-6,400 steps",
    "vision": "Fashion-MNIST ResNet from scratch",
    "lm": "byte GPT, width 128",
    "vit": "ViT fine-tuning",
}


ANNEALED_TASKS = PEERS_TASKS
"""Round 3b's tasks: the short three, and the horizon as a screen."""

AUTO_TASKS = {task: PEERS_TASKS[task] for task in ("vision", "lm", "vit")}
"""Round 3c's tasks: the short three (over the horizon's 6,400 steps ``"auto"`` is 0.965)."""


def round3_readme(folder: Path, full: bool = False) -> str:
    """Round 3 in one table across tasks, the knob screen and the horizon's gap plot (with
    ``full``, for docs/results.md, also the finisher's lr factor on round 3's runs; the README
    shows round 3b's, on annealed runs)."""
    data, notes = load_all(folder, {t: f"anytime_{t}_peers.json" for t in PEERS_TASKS})
    if not data:
        return "\n".join(notes)
    annealed, _ = load_all(folder, {t: f"anytime_{t}_annealed.json" for t in ANNEALED_TASKS})
    parts = [
        "**AMUSE against what an anytime user runs** (test, 3 seeds, every learning rate and "
        "choice made on validation; `+` = AMUSE better, in nats of loss or points of accuracy; "
        "the verdict is `ahead` / `behind` when every seed agrees, else `level`). *Constant-lr "
        "Muon*: Muon + AdamW at a constant rate after the same warm-up, scored at `t` (no extra "
        "steps). *WSD fork*: that run with a linear cooldown to zero over `0.2 t` steps forked at "
        "`t`; *finished x*: `finish()` from `x` over the same `0.2 t` steps. *cosine(t)*: Muon + "
        "cosine tuned for `t`, a reference that needs the budget in advance. *β-annealed*: AMUSE "
        "with `rho=0, beta_anneal_steps=<longest budget>, beta_final=0.965`, the knob the screen "
        "below chose, run again with the finisher on every seed.\n",
        peers_tables.headline_table(data, table),
        "",
        "**Knob screen** (validation, the knob minus the chosen AMUSE run seed by seed; mean over "
        "the budgets, then the budgets where it was ahead / level / behind; per budget with the "
        "seed range in [docs/results.md](docs/results.md)). Round 3's knobs against the `rho` "
        "rise; round 3b's `beta_final` values (*on annealed runs*) against `beta_final=0.965`, "
        "0.8 being `beta1`, a constant beta without annealing, added after 0.9 won on the "
        "vision and GPT tasks:\n",
        peers_tables.knob_summary_table(data, table, annealed, " (on annealed runs)"),
        "",
    ]
    if full:
        parts += [
            "**The finisher's learning rate on round 3's runs** (validation, sweep seed: "
            "finished `x` minus the WSD fork, mean over the budgets, for a cooldown from `x` at a "
            "constant factor of the run's rate (0.1 was `finish()`'s default then), and for "
            '`lr_factor="auto"`, `0.3 min(1, 800 / t)`, fitted on the horizon and LM rows and '
            "checked on the other two):\n",
            peers_tables.factor_rule_table(data, table, default=""),
            "",
        ]
    png = folder / "anytime_horizon_peers.png"
    if png.is_file():
        parts.append(f"![horizon: gap to cosine](benchmarks/results/{png.name})\n")
    return "\n".join(parts + notes)


def round3b_readme(folder: Path, full: bool = False) -> str:
    """The README's round 3b: AMUSE with ``beta_final="auto"`` against the peers (with ``full``,
    for docs/results.md, also with ``beta_final=0.965``, as round 3b ran it), and the finisher's
    lr factor on annealed runs."""
    data, notes = load_all(folder, {t: f"anytime_{t}_annealed.json" for t in ANNEALED_TASKS})
    if not data:
        return shipped_headline(folder)
    parts = [shipped_headline(folder)]
    if full:
        chosen = ", ".join(
            f"{task} `{payload['meta']['selection']['variant']}`"
            for task, payload in data.items()
            if payload["meta"]["config"]["peers"].get("screen_lr") is None
        )
        parts += [
            "**Round 3b: every AMUSE run annealed to `beta_final=0.965`** (test, 3 seeds, "
            'conventions as above; the default before `"auto"`). On the three short tasks '
            "AMUSE's learning rate and the finisher were chosen on validation on annealed runs "
            f"(finisher: {chosen}), and the peers ran again beside it with round 3's grids "
            "(round 3's runs do not reproduce bit for bit on this CPU). The horizon ran a "
            "screen instead: AMUSE at lr 0.03 and Muon WSD at 0.01 (round 3's choices) on every "
            "seed, its chosen-finisher column being the earlier default factor 0.1; no cosine "
            "runs there (round 3's β-annealed columns have them):\n",
            peers_tables.headline_table(data, table, peers_tables.HEADLINE_ANNEALED),
            "",
        ]
    parts += [
        "**The finisher's learning rate on annealed runs** (round 3b's runs, annealed to "
        "0.965; validation, sweep seed: the model "
        "finished from `x` minus the WSD fork, mean over the budgets, at a constant factor of the "
        'run\'s rate and with `lr_factor="auto"`, `0.3 min(1, 800 / t)`, which is 0.3 up to 800 '
        "steps):\n",
        peers_tables.factor_rule_table(data, table, (0.1, 1.0), default="auto"),
        "",
    ]
    return "\n".join(parts + notes)


def shipped_headline(folder: Path) -> str:
    """AMUSE as the shipped configs run it: round 3c on the short tasks (``beta_final="auto"``,
    0.9 there) and round 3b's horizon screen (where ``"auto"`` is 0.965), test, per seed."""
    files = {"horizon": "anytime_horizon_annealed.json"}
    files.update({t: f"anytime_{t}_auto.json" for t in AUTO_TASKS})
    data, notes = load_all(folder, files)
    if not data:
        return "\n".join(notes)
    from amuse_lightning.optim.schedule import length_aware_beta_final

    chosen = ", ".join(f"{task} `{data[task]['meta']['selection']['variant']}`"
                       for task in AUTO_TASKS if task in data)  # fmt: skip
    short = sorted({length_aware_beta_final(max(peers_tables.budgets_of(data[t]["records"])))
                    for t in AUTO_TASKS if t in data})  # fmt: skip
    reused = [t for t in AUTO_TASKS if "runs" in data.get(t, {}).get("meta", {}).get("reused", {})]
    return "\n".join([
        "**AMUSE as the shipped configs run it** (test, 3 seeds, conventions as above): beta "
        'annealed over the run (`beta_anneal_steps="auto"`) to `beta_final="auto"`, '
        f"{'/'.join(f'{b:g}' for b in short)} on the short tasks (round 3c) and 0.965 on the "
        "horizon's 6,400 steps (round 3b's screen). On the short tasks AMUSE's learning rate "
        f"and the finisher were chosen on validation on these runs (chosen finisher: {chosen}); "
        f"their peers are round 3b's runs ({', '.join(reused) or 'none'}: reused after the "
        "cheapest run of each method reproduced bit for bit here). The horizon ran AMUSE at lr "
        "0.03 (round 3's choice, made on runs without annealing) and Muon WSD at 0.01 (round "
        "3's) on every seed, without cosine or Schedule-Free runs; its chosen-finisher column "
        "is the factor 0.1, which validation did not prefer (`finish()`'s defaults, the column "
        "before, it did):\n",
        peers_tables.headline_table(data, table, peers_tables.HEADLINE_SHIPPED), "", *notes,
    ])  # fmt: skip


ROUND3_STUDIES = {
    "peers": (
        "Round 3: against what an anytime user runs",
        "Per task and budget `t`: AMUSE's `x` against Muon at a constant learning rate (no extra "
        "steps), AMUSE's `x` finished by `finish()` against a warmup-stable-decay (WSD) fork of "
        "that constant-lr run (both cost `f t = 0.2 t` extra steps), Schedule-Free AdamW, and "
        "Muon + cosine tuned for `t` and for `t + f t` as references. Test scores, mean ± half "
        "the seed range over 3 seeds; differences per seed with their verdict (level = the "
        "seeds disagree). Every learning rate and the finisher were chosen on validation.\n",
    ),
    "annealed": (
        "Round 3b: AMUSE with beta annealed, its lr and finisher chosen on annealed runs",
        "Round 3 again with beta annealing as every AMUSE run's setting (`rho=0, "
        'beta_anneal_steps=<longest budget>, beta_final=0.965`: what `beta_anneal_steps="auto"` '
        'gave under Lightning before `beta_final="auto"`), so that '
        "AMUSE's learning rate and the finisher (from `x` at lr "
        'factor 0.1, `"auto"` (0.3 up to 800 steps) or 1, at 0.3 with fresh momentum, or from '
        "`y` at 0.3) are chosen on validation on "
        "annealed runs, and `beta_final` is screened (0.9 and 0.99, then 0.8 after 0.9 won on "
        "the vision and GPT tasks: 0.8 is `beta1`, a constant beta without annealing), each "
        "knob run finished by the chosen finisher. The peers ran again beside "
        "AMUSE with round 3's grids: round 3 ran on an AVX2-only CPU whose runs do not reproduce "
        "bit for bit on this one (native bf16 products). The horizon, whose round 3 took 104 "
        "minutes, runs a screen instead of the sweeps: AMUSE at lr 0.03 and Muon WSD at 0.01 "
        "(round 3's choices on validation) on every seed, every AMUSE run finished by "
        '`lr_factor="auto"` and by 0.1 (in the rows of the chosen finisher); no Schedule-Free '
        "or cosine runs there. Same layout as round 3.\n",
    ),
    "auto": (
        'Round 3c: AMUSE with `beta_final="auto"`, its lr and finisher chosen on those runs',
        'Round 3b again on the short tasks with `beta_final="auto"` (the default since the '
        "held-out 3,200-step check below) in every AMUSE run, which the library resolves to 0.9 "
        "for these 128-200-step runs, so that AMUSE's learning rate and the finisher are chosen "
        "on validation on those runs; 0.965, the earlier default, is the knob. The peers are "
        "round 3b's runs, reused after their cheapest run of each method reproduced bit for bit "
        "here. Same layout as round 3.\n",
    ),
}
"""Round 3's studies in docs/results.md: the JSON suffix, its heading and its introduction."""


def round3_summary(folder: Path, full: bool = False, study: str = "peers") -> str:
    """Round 3 (``study="peers"``; ``"annealed"``: round 3b; ``"auto"``: round 3c): AMUSE
    against Muon WSD forks, constant-lr Muon and Schedule-Free AdamW per task (and, with
    ``full``, the knob screens, the finisher variants and provenance)."""
    tasks = {"peers": PEERS_TASKS, "annealed": ANNEALED_TASKS, "auto": AUTO_TASKS}[study]
    data, notes = load_all(folder, {t: f"anytime_{t}_{study}.json" for t in tasks})
    if not data:
        return "\n".join(notes)
    root = "../" if full else ""
    heading, intro = ROUND3_STUDIES[study]
    parts = [f"### {heading}\n", intro]
    for task, payload in data.items():
        parts += [f"**{task}: {tasks[task]}** ({peers_tables.goal_line(payload)})\n",
                  peers_tables.main_table(payload, table), ""]  # fmt: skip
        png = folder / f"anytime_{task}_{study}.png"
        if png.is_file():
            parts.append(f"![{task} gaps]({root}benchmarks/results/{png.name})\n")
        if full:
            parts += ["Finisher variants (validation, sweep seed, finished − WSD fork):\n",
                      peers_tables.variant_table(payload, table), ""]  # fmt: skip
            if payload["meta"]["config"]["peers"]["knobs"]:
                parts += ["Knob screen (validation, knob − chosen AMUSE, every seed):\n",
                          peers_tables.knob_table(payload, table), "",
                          "Same, test:\n", peers_tables.knob_table(payload, table, "test"),
                          ""]  # fmt: skip
            parts.append(provenance(payload["meta"]) + "\n")
    return "\n".join(parts + notes)
