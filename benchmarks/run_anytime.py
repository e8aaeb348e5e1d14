"""Anytime-quality studies (issue: one AMUSE run evaluated at x must match budget-tuned runs).

    python benchmarks/run_anytime.py vision [--quick] [--resume] [--workers N]
    python benchmarks/run_anytime.py lm ...
    python benchmarks/run_anytime.py vit ...
    python benchmarks/run_anytime.py vision --study finisher   # round 2 (also lm, vit)
    python benchmarks/run_anytime.py horizon                   # round 2, 200-6,400 steps
    python benchmarks/run_anytime.py horizon_starts --resume   # its finisher start x / y, lr

Writes ``benchmarks/results/anytime_<task>.json`` (``anytime_<task>_finisher.json`` for round 2;
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

from anytime import finisher_study, protocol  # noqa: E402
from anytime.finisher_study import FinisherStudy  # noqa: E402
from anytime.report import plot, plot_finisher  # noqa: E402
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
STUDIES = ("anytime", "finisher")


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
        help="anytime (round 1: baselines, knob screen) or finisher (round 2: finisher, "
        "averages, equal-compute cosine); default anytime, and finisher for horizon",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (CI), under a minute")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="processes (1 thread each)")
    parser.add_argument("--resume", action="store_true", help="reuse runs already in --output")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    long_runs = args.task.startswith("horizon")
    kind = args.study or ("finisher" if long_runs else "anytime")
    if long_runs and kind != "finisher":
        parser.error("the horizon task runs the finisher study only")
    factory = functools.partial(make_task, args.task, args.quick)
    task = factory()
    if args.workers is not None:
        task.study = dataclasses.replace(task.study, workers=args.workers)
    suffix = "_finisher" if kind == "finisher" and not long_runs else ""
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
        + " --quick" * args.quick,
        schedulefree=version("schedulefree"),
        git_commit=_git_commit(),
        config=config_dict(task),
        protocol=(protocol if kind == "anytime" else finisher_study).__doc__.split("\n\n", 1)[1],
    )
    if hasattr(task, "prepare"):
        task.prepare()
    study_class = Study if kind == "anytime" else FinisherStudy
    study = study_class(task, factory, output, meta, args.resume)
    study.run()
    payload = json.loads(output.read_text())
    if not args.no_plot:
        (plot if kind == "anytime" else plot_finisher)(payload, output.with_suffix(".png"))
    chosen = payload["meta"]["selected" if kind == "anytime" else "selection"]
    if kind == "finisher":
        chosen = {k: v for k, v in chosen.items() if k != "variants"}
    print(f"wrote {output} in {payload['meta']['wall_s']:.0f} s; selected {json.dumps(chosen)}")


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
