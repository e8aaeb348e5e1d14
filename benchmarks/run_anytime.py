"""Anytime-quality studies (issue: one AMUSE run evaluated at x must match budget-tuned runs).

    python benchmarks/run_anytime.py vision [--quick] [--resume] [--workers N]
    python benchmarks/run_anytime.py lm ...
    python benchmarks/run_anytime.py vit ...
    python benchmarks/run_anytime.py vision --study finisher   # round 2 (also lm, vit)
    python benchmarks/run_anytime.py horizon                   # round 2, 200-6,400 steps
    python benchmarks/run_anytime.py horizon_starts --resume   # its finisher start x / y, lr
    python benchmarks/run_anytime.py horizon --study peers     # round 3 (also vision, lm, vit)
    python benchmarks/run_anytime.py vision --study annealed   # round 3b (also lm, vit, horizon)
    python benchmarks/run_anytime.py vision --study auto       # round 3c (also lm, vit)

Writes ``benchmarks/results/anytime_<task>.json`` (``anytime_<task>_finisher.json`` for round 2;
``anytime_<task>_peers.json`` for round 3, ``anytime_<task>_annealed.json`` for round 3b,
``anytime_<task>_auto.json`` for round 3c;
``meta``, ``runs``, ``records``; rewritten after every finished run) and ``.png`` next to it;
``--quick`` writes to ``/tmp`` (CI smoke, < 1 min). The protocols are in
``benchmarks/anytime/protocol.py`` and ``benchmarks/anytime/finisher_study.py``;
``benchmarks/make_tables.py`` turns the JSON into the README tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from anytime import finisher_study, peers_study, protocol  # noqa: E402
from anytime.finisher_study import FinisherStudy  # noqa: E402
from anytime.peers_study import PeersStudy  # noqa: E402
from anytime.report import plot, plot_finisher  # noqa: E402
from anytime.round3 import (  # noqa: E402
    annealed_config,
    auto_config,
    peers_config,
    reusable_cosine_runs,
    reusable_peer_runs,
    same_scores,
)
from anytime.study import Study, config_dict  # noqa: E402
from common import machine_info  # noqa: E402

TASKS = {
    "vision": (
        "anytime.vision",
        "VisionTask",
        "accuracy",
        "Fashion-MNIST, CifarResNet from scratch",
    ),
    "lm": ("anytime.lm", "LMTask", "loss", "char-level GPT on Python stdlib text"),
    "vit": (
        "anytime.vit_finetune",
        "ViTTask",
        "accuracy",
        "ViT fine-tuning, Fashion-MNIST classes 5-9",
    ),
    "horizon": (
        "anytime.horizon",
        "HorizonTask",
        "loss",
        "byte-level GPT (width 64), 200 to 6,400 steps",
    ),
    "horizon_starts": (
        "anytime.horizon",
        "HorizonStartsTask",
        "loss",
        "byte-level GPT (width 64), 200 to 6,400 steps: finisher start and lr",
    ),
}
STUDIES = ("anytime", "finisher", "peers", "annealed", "auto")
REUSE = {
    "vision": ["anytime_vision_finisher.json"],
    "lm": ["anytime_lm_finisher.json"],
    "vit": ["anytime_vit_finisher.json"],
    "horizon": ["anytime_horizon.json", "anytime_horizon_starts.json"],
}
"""Round 2's Muon + cosine runs that round 3 reuses (after re-running one and comparing)."""


def make_task(name: str, quick: bool):
    import importlib

    module, cls, _, _ = TASKS[name]
    return getattr(importlib.import_module(module), cls)(quick=quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument(
        "--study",
        choices=STUDIES,
        default=None,
        help="anytime (round 1: baselines, knob screen), finisher (round 2: finisher, "
        "averages, equal-compute cosine) or peers (round 3: Muon WSD forks, constant-lr Muon, "
        "Schedule-Free AdamW, the finisher against them, mechanism screen), annealed (round 3b: "
        "round 3 with beta annealing in every AMUSE run, its lr, finisher and beta_final chosen "
        "on annealed runs; the peers reused from round 3 where they reproduce), auto (round 3c: "
        "round 3b with beta_final='auto' on the short tasks, the peers reused from round 3b "
        "where they reproduce); default anytime, and finisher for horizon",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (CI), under a minute")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="processes (1 thread each)")
    parser.add_argument("--resume", action="store_true", help="reuse runs already in --output")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="peers: run every Muon + cosine reference anew instead of reusing round 2's; "
        "annealed / auto: run every peer anew instead of reusing round 3's / 3b's where they "
        "reproduce",
    )
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="annealed: the task's budgets up to this list's last one only (a shorter run, "
        "annealed over its own length: a held-out run length for beta_final)",
    )
    parser.add_argument(
        "--beta-finals",
        type=float,
        nargs="*",
        default=None,
        help="annealed: the beta_final values to screen instead of round 3b's (none: no knobs)",
    )
    parser.add_argument(
        "--finishers",
        nargs="+",
        default=None,
        help="annealed, horizon: the finisher variants instead of the screen's (the last fills "
        "the chosen finisher's rows), e.g. x/linear/f=0.2/lr_xauto y/linear/f=0.2/lr_xauto",
    )
    args = parser.parse_args(argv)
    long_runs = args.task.startswith("horizon")
    kind = args.study or ("finisher" if long_runs else "anytime")
    if long_runs and kind == "anytime":
        parser.error("the horizon task runs the finisher or the peers study")
    if kind == "auto" and long_runs:
        parser.error("round 3c runs on vision, lm and vit (over the horizon's 6,400 steps "
                     "beta_final='auto' is 0.965, which round 3b ran)")  # fmt: skip
    factory = functools.partial(make_task, args.task, args.quick)
    task = factory()
    if args.workers is not None:
        task.study = dataclasses.replace(task.study, workers=args.workers)
    if kind == "peers":
        task.peers = peers_config(task, args.quick)
    extra = args.budgets or args.beta_finals is not None or args.finishers
    if extra and (kind != "annealed" or not args.output):
        parser.error("--budgets, --beta-finals and --finishers go with --study annealed and an "
                     "--output")  # fmt: skip
    if args.finishers and args.task != "horizon":
        parser.error("--finishers replaces the horizon screen's finishers (the other tasks "
                     "choose among round 3b's variants on validation)")  # fmt: skip
    if args.budgets:
        if not set(args.budgets) <= set(task.study.budgets):
            parser.error(f"--budgets must be among the task's {task.study.budgets}")
        task.study = dataclasses.replace(task.study, budgets=tuple(sorted(args.budgets)))
    if kind == "annealed":
        if args.task == "horizon_starts":
            parser.error("round 3b runs on vision, lm, vit and horizon, not horizon_starts")
        task.peers = annealed_config(task, args.quick, args.beta_finals, args.finishers)
    if kind == "auto":
        task.peers = auto_config(task, args.quick)
    suffix = {"finisher": "" if long_runs else "_finisher", "peers": "_peers",
              "annealed": "_annealed", "auto": "_auto"}.get(kind, "")  # fmt: skip
    default = (Path("/tmp") if args.quick else ROOT / "benchmarks" / "results") / (
        f"anytime_{args.task}{suffix}" + ("_quick" if args.quick else "") + ".json"
    )
    output = args.output or default
    torch.set_num_threads(task.study.threads)
    _, _, metric, title = TASKS[args.task]
    meta = machine_info("cpu")
    meta.update(
        benchmark=f"anytime_{args.task}{suffix}",
        study=kind,
        task=args.task,
        title=title,
        metric=metric,
        mode="quick" if args.quick else "full",
        command=f"python benchmarks/run_anytime.py {args.task}"
        + (f" --study {kind}" if args.study else "")
        + " --quick" * args.quick
        + " --resume" * args.resume
        + " --no-reuse" * args.no_reuse
        + (" --budgets " + " ".join(map(str, args.budgets)) if args.budgets else "")
        + (
            " --beta-finals" + "".join(f" {b:g}" for b in args.beta_finals)
            if args.beta_finals is not None
            else ""
        )
        + (" --finishers " + " ".join(args.finishers) if args.finishers else ""),
        schedulefree=version("schedulefree"),
        git_commit=_git_commit(),
        config=config_dict(task),
        protocol=PROTOCOLS[kind].__doc__.split("\n\n", 1)[1],
    )
    if hasattr(task, "prepare"):
        task.prepare()
    classes = {"anytime": Study, "finisher": FinisherStudy, "peers": PeersStudy,
               "annealed": PeersStudy, "auto": PeersStudy}  # fmt: skip
    study = classes[kind](task, factory, output, meta, args.resume)
    if kind == "peers" and not args.quick and not args.no_reuse:
        reuse_cosine_runs(study, task, factory)
    screen = kind == "annealed" and task.peers.screen_lr is not None  # nothing to reuse
    if kind in ("annealed", "auto") and not (args.quick or args.no_reuse or screen):
        source = "peers" if kind == "annealed" else "annealed"  # the round before
        reuse_peer_runs(study, task, factory, f"anytime_{task.name}_{source}.json")
    study.run()
    payload = json.loads(output.read_text())
    if not args.no_plot and kind not in ("peers", "annealed", "auto"):
        (plot if kind == "anytime" else plot_finisher)(payload, output.with_suffix(".png"))
    chosen = payload["meta"]["selected" if kind == "anytime" else "selection"]
    if kind != "anytime":
        chosen = {k: v for k, v in chosen.items() if k not in ("variants", "runs")}
    print(f"wrote {output} in {payload['meta']['wall_s']:.0f} s; selected {json.dumps(chosen)}")


PROTOCOLS = {"anytime": protocol, "finisher": finisher_study, "peers": peers_study,
             "annealed": peers_study, "auto": peers_study}  # fmt: skip


def reuse_cosine_runs(study, task, factory) -> None:
    """Seed ``study``'s cache with round 2's Muon + cosine runs of this task, after re-running
    the shortest of them and finding the same scores (the same code path, bit for bit)."""
    paths = [ROOT / "benchmarks" / "results" / name for name in REUSE.get(task.name, [])]
    runs, sources = reusable_cosine_runs([p for p in paths if p.is_file()])
    if not runs:
        return
    probe_id, probe = min(runs.items(), key=lambda kv: (kv[1]["spec"]["steps"], kv[0]))
    if _first_not_reproduced({probe_id: probe}, task, factory) is not None:
        raise SystemExit(
            f"--reuse: {probe_id} no longer reproduces round 2's scores; run with --no-reuse"
        )
    study.cache.update({k: v for k, v in runs.items() if k not in study.cache})
    study.meta["reused"] = {"sources": sources, "checked_by_rerunning": probe_id}
    print(f"reusing {len(runs)} Muon + cosine runs (checked: {probe_id} reproduces)", flush=True)


def reuse_peer_runs(study, task, factory, source: str) -> None:
    """Seed the cache with the runs of the peers and references (every method but AMUSE) of the
    round before (``source``) when the cheapest run of each method reproduces its scores here
    bit for bit (the same code on the same kind of CPU); otherwise every run is made anew on
    this machine, so that all methods of the study ran on one machine."""
    path = ROOT / "benchmarks" / "results" / source
    if not path.is_file():
        return
    runs = reusable_peer_runs(path)
    probes = {}
    for run_id, run in runs.items():
        method = run["spec"]["method"]
        if method not in probes or run["spec"]["steps"] < probes[method][1]["spec"]["steps"]:
            probes[method] = (run_id, run)
    differs = _first_not_reproduced(dict(probes.values()), task, factory)
    if differs is not None:
        print(f"not reusing {source}'s peers: {differs} scores differently here", flush=True)
        study.meta["reused"] = {"source": path.name, "differs": differs}
        return
    study.cache.update({k: v for k, v in runs.items() if k not in study.cache})
    checked = sorted(run_id for run_id, _ in probes.values())
    study.meta["reused"] = {"source": path.name, "runs": len(runs), "checked_by_rerunning": checked}
    print(f"reusing {len(runs)} runs of {source} (checked: {len(probes)} reproduce)", flush=True)


def _first_not_reproduced(probes: dict[str, dict], task, factory) -> str | None:
    """Re-run each probe (``run_id -> result``) on a fresh task; the first ``run_id`` whose
    scores differ from its stored ones, or ``None`` when all reproduce bit for bit."""
    fresh = factory()
    fresh.setup()
    torch.set_num_threads(task.study.threads)
    for run_id, run in probes.items():
        again = protocol.train_run(protocol.RunSpec.from_dict(run["spec"]), fresh)
        if not same_scores(run, again):
            return run_id
    return None


def _git_commit() -> str | None:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it (the run then used code
    that no commit holds)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":
    main()
