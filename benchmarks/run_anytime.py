"""Anytime-quality studies (issue: one AMUSE run evaluated at x must match budget-tuned runs).

    python benchmarks/run_anytime.py vision [--quick] [--resume] [--workers N]
    python benchmarks/run_anytime.py lm ...
    python benchmarks/run_anytime.py vit ...

Writes ``benchmarks/results/anytime_<task>.json`` (``meta``, ``runs``, ``records``; rewritten after
every finished run) and ``.png`` next to it; ``--quick`` writes to ``/tmp`` (CI smoke, < 1 min).
The protocol is in ``benchmarks/anytime/protocol.py``; ``benchmarks/make_tables.py`` turns the JSON
into the README tables.
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

from anytime import protocol  # noqa: E402
from anytime.report import plot  # noqa: E402
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
}


def make_task(name: str, quick: bool):
    import importlib

    module, cls, _, _ = TASKS[name]
    return getattr(importlib.import_module(module), cls)(quick=quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--quick", action="store_true", help="smoke run (CI), under a minute")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="processes (1 thread each)")
    parser.add_argument("--resume", action="store_true", help="reuse runs already in --output")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    factory = functools.partial(make_task, args.task, args.quick)
    task = factory()
    if args.workers is not None:
        task.study = dataclasses.replace(task.study, workers=args.workers)
    default = (Path("/tmp") if args.quick else ROOT / "benchmarks" / "results") / (
        f"anytime_{args.task}" + ("_quick" if args.quick else "") + ".json"
    )
    output = args.output or default
    torch.set_num_threads(task.study.threads)
    _, _, metric, title = TASKS[args.task]
    meta = machine_info("cpu")
    meta.update(
        benchmark=f"anytime_{args.task}",
        task=args.task,
        title=title,
        metric=metric,
        mode="quick" if args.quick else "full",
        command=f"python benchmarks/run_anytime.py {args.task}" + " --quick" * args.quick,
        schedulefree=version("schedulefree"),
        git_commit=_git_commit(),
        config=config_dict(task),
        protocol=protocol.__doc__.split("\n\n", 1)[1],
    )
    if hasattr(task, "prepare"):
        task.prepare()
    study = Study(task, factory, output, meta, args.resume)
    study.run()
    payload = json.loads(output.read_text())
    if not args.no_plot:
        plot(payload, output.with_suffix(".png"))
    print(
        f"wrote {output} in {payload['meta']['wall_s']:.0f} s; selected "
        f"{json.dumps(payload['meta']['selected'])}",
        flush=True,
    )


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
