"""Runs a task's study through the protocol: a process pool, the JSON rewritten after every run,
``--resume`` reusing finished runs of the same configuration."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .methods import BUDGET_METHODS
from .protocol import (
    Choice,
    RunSpec,
    Task,
    choose_anytime,
    choose_budget_lrs,
    final_specs,
    mean_score,
    records,
    train_run,
)

_WORKER: dict[str, Any] = {}


def _init_worker(factory: Callable[[], Task], threads: int) -> None:
    torch.set_num_threads(threads)
    task = factory()
    task.setup()
    _WORKER["task"] = task


def _run_in_worker(spec: RunSpec) -> dict:
    return train_run(spec, _WORKER["task"])


class Runner:
    """Specs run in a spawn pool (``workers > 1``) or in-process, in submission order."""

    def __init__(
        self,
        factory: Callable[[], Task],
        workers: int,
        threads: int,
        cache: dict,
        on_result: Callable[[dict], None],
    ) -> None:
        self.cache, self.on_result = cache, on_result
        self.done: dict[str, dict] = {}
        self.queue: list[RunSpec] = []
        self.futures: dict[cf.Future, RunSpec] = {}
        self.pool = None
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(
                workers, ctx, initializer=_init_worker, initargs=(factory, threads)
            )
        else:
            _init_worker(factory, threads)

    def submit(self, specs: Iterable[RunSpec]) -> None:
        for spec in specs:
            if spec.run_id in self.done or spec in self.queue or spec in self.futures.values():
                continue
            if spec.run_id in self.cache:
                self._finish(self.cache[spec.run_id])
            elif self.pool is None:
                self.queue.append(spec)
            else:
                self.futures[self.pool.submit(_run_in_worker, spec)] = spec

    def wait_for(self, specs: Iterable[RunSpec]) -> None:
        specs = list(specs)
        while any(s.run_id not in self.done for s in specs):
            if self.pool is None:
                self._finish(_run_in_worker(self.queue.pop(0)))
                continue
            finished, _ = cf.wait(list(self.futures), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                self.futures.pop(future)
                self._finish(future.result())

    def _finish(self, result: dict) -> None:
        self.done[RunSpec.from_dict(result["spec"]).run_id] = result
        self.on_result(result)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


RESUME_KEYS = ("date", "load_average_1m", "git_commit")
"""Kept from a study's first invocation on ``--resume``; each resume's own go to ``resumed``."""


class Study:
    """The phases of :mod:`.protocol` for one task, and the JSON they fill."""

    def __init__(
        self, task: Task, factory: Callable[[], Task], output: Path, meta: dict, resume: bool
    ) -> None:
        self.task, self.factory, self.output = task, factory, output
        self.study = task.study
        self.start = time.time()
        self.results: dict[str, dict] = {}
        self.cache: dict[str, dict] = {}
        self.meta = meta
        self.previous_wall_s = 0.0
        self.choices: list[Choice] = []
        if resume and output.is_file():
            previous = json.loads(output.read_text())
            if _comparable(previous["meta"]["config"]) != _comparable(meta["config"]):
                raise SystemExit("--resume: the JSON was made with another config; remove it")
            self.previous_wall_s = float(previous["meta"].get("wall_s", 0.0))
            first = previous["meta"]  # the provenance is the first invocation's, plus resumes
            resumed = [*first.get("resumed", []), {k: meta.get(k) for k in RESUME_KEYS}]
            meta.update({k: first[k] for k in RESUME_KEYS if k in first}, resumed=resumed)
            self.cache = {RunSpec.from_dict(r["spec"]).run_id: r for r in previous["runs"]}
            print(f"resuming: {len(self.cache)} runs done before", flush=True)

    def on_result(self, result: dict) -> None:
        spec = RunSpec.from_dict(result["spec"])
        self.results[spec.run_id] = result
        last = result["evals"][-1]["val"] if result["evals"] else {}
        print(
            f"[{len(self.results)}] {spec.phase} {spec.run_id}: val {last} "
            f"{result['wall_s']:.0f} s (elapsed {time.time() - self.start:.0f} s, "
            f"load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        self.save()

    def save(self, status: str = "running") -> None:
        self.meta.update(
            status=status,
            wall_s=round(self.previous_wall_s + time.time() - self.start, 1),
            selected={
                c.label: {str(b): s.setting_id for b, s in c.specs.items()} for c in self.choices
            },
        )
        payload = {
            "meta": self.meta,
            "runs": list(self.results.values()),
            "records": records(self.choices, self.results, self.study),
        }
        self._write(payload)

    def _write(self, payload: dict) -> None:
        """Atomically (a temporary file renamed over the JSON): an interruption keeps the last
        complete version for ``--resume``."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.output)

    def run(self) -> None:
        st = self.study
        seed, longest = st.sweep_seed, max(st.budgets)
        amuse_sweep = [RunSpec("sweep", "amuse", lr, seed, longest) for lr in st.lr_grid["amuse"]]
        sf_sweep = [
            RunSpec("sweep", "sf_adamw", lr, seed, longest) for lr in st.lr_grid["sf_adamw"]
        ]
        budget_sweep = [
            RunSpec("sweep", m, lr, seed, b)
            for m in BUDGET_METHODS
            for b in sorted(st.budgets, reverse=True)
            for lr in st.lr_grid[m]
        ]
        runner = Runner(self.factory, st.workers, st.threads, self.cache, self.on_result)
        try:
            runner.submit(amuse_sweep + sf_sweep + budget_sweep)
            runner.wait_for(amuse_sweep)
            amuse = choose_anytime("amuse", self.results, amuse_sweep, st.budgets)
            lr = amuse.specs[longest].lr
            screen = [
                RunSpec("screen", "amuse", lr, seed, longest, tuple(sorted(v.items())))
                for _, v in st.variants
            ]
            runner.submit(screen)
            runner.wait_for(sf_sweep + budget_sweep)
            self.choices = [
                choose_budget_lrs(m, self.results, budget_sweep, st.budgets) for m in BUDGET_METHODS
            ]
            self.choices += [choose_anytime("sf_adamw", self.results, sf_sweep, st.budgets), amuse]
            runner.submit(final_specs(self.choices, st.seeds, seed))
            runner.wait_for(screen)
            best = self._best_variant(runner, amuse_sweep, screen)
            self.choices.append(best)
            finals = final_specs(self.choices, st.seeds, seed)
            runner.submit(finals)
            runner.wait_for(finals)
        finally:
            runner.close()
        self.save("complete")

    def _best_variant(
        self, runner: Runner, amuse_sweep: list[RunSpec], screen: list[RunSpec]
    ) -> Choice:
        """The best screened setting (library defaults included), re-run at the neighbouring lrs
        of the grid when ``retune_best``; the best of those by mean validation score."""
        st = self.study
        candidates = [s for s in amuse_sweep if s.lr == screen[0].lr] + screen if screen else []
        if not candidates:
            return Choice("amuse_best")
        pick = max(candidates, key=lambda s: mean_score(self.results[s.run_id], st.budgets))
        if st.retune_best and pick.settings:
            grid = list(st.lr_grid["amuse"])
            i = grid.index(pick.lr)
            near = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]
            retune = [
                RunSpec("screen", "amuse", lr, pick.seed, pick.steps, pick.settings) for lr in near
            ]
            runner.submit(retune)
            runner.wait_for(retune)
            pick = max(
                [pick, *retune], key=lambda s: mean_score(self.results[s.run_id], st.budgets)
            )
        return choose_anytime("amuse_best", self.results, [pick], st.budgets)


def _comparable(config: dict) -> dict:
    ignored = (
        "workers", "threads", "lr_grid", "variants", "seeds", "retune_best", "finishing", "peers"
    )  # fmt: skip
    return {k: v for k, v in config.items() if k not in ignored}


def config_dict(task: Task) -> dict:
    """The study and task configuration as plain JSON data."""
    out = {k: _plain(v) for k, v in dataclasses.asdict(task.study).items()}
    out["task"] = {k: _plain(v) for k, v in dataclasses.asdict(task.cfg).items()}
    for name in ("finishing", "peers"):
        part = getattr(task, name, None)
        if part is not None:
            out[name] = {k: _plain(v) for k, v in dataclasses.asdict(part).items()}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
