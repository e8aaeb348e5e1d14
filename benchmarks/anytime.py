"""Anytime quality on Fashion-MNIST: one AMUSE run evaluated at x after every epoch, against
baselines tuned to each budget.

Methods (all on the same narrow CIFAR-style ResNet, the same data order per seed):

- ``adamw_cosine``: torch.optim.AdamW, linear warmup + cosine to zero over the budget, one run per
  budget.
- ``muon_cosine``: torch.optim.Muon (``adjust_lr_fn="match_rms_adamw"``) for the Muon partition
  (conv kernels flattened to ``(out, in*kh*kw)``) plus torch.optim.AdamW for the fallback tensors,
  both with warmup + cosine over the budget, one run per budget.
- ``sf_adamw``: schedulefree.AdamWScheduleFree, one run evaluated at x after every epoch.
- ``amuse``: AMUSE (exact sequence), one run evaluated at x after every epoch.
- ``amuse_reference_compat``: AMUSE with ``reference_compat=True`` and AMUSE's chosen settings.
- ``sfmuon``: SFMuon (``rho = 0``, ``beta = 0.9``).

Protocol: the learning rate of every swept method is chosen by validation accuracy (a held-out
split of the training images, never the test set) at the shortest budget and kept for all budgets;
AMUSE's ``(beta1, rho)`` is then chosen at the best lr by mean validation accuracy over the epochs
of a short run. Schedule-free methods (everything evaluated at x) get BatchNorm recalibration
before each evaluation: running statistics reset and re-estimated at x from ``bn_batches``
training batches (train mode, no gradients, cumulative average); the y-time statistics and the
exact y parameters are restored afterwards, so the training run is not disturbed. The final runs
are evaluated on the full 10k test set, for every seed.

    python benchmarks/anytime.py --quick     # smoke run (CI), well under a minute
    python benchmarks/anytime.py             # full study, about 25 min on 2 CPU cores
    python benchmarks/anytime.py --resume    # continue a full study that stopped

Full mode: 20k of the 60k training images (a fixed random subset; 5k others for validation), the
full 10k test set, ResNet width 16 with one block per stage (0.31M parameters), batch 128, 2 seeds,
budgets 1, 2 and 4 epochs, 2 worker processes of 1 thread. The committed result took 25.8 min of
wall time in three ``--resume`` invocations (the lr grids were widened twice until every chosen lr
was inside its grid; runs already done were reused, so the numbers equal one fresh run).

Writes ``benchmarks/results/anytime_fashion_mnist.json`` (``meta``, ``sweep``, ``records``;
rewritten after every finished run, so a crash keeps what was done) and ``.png`` next to it.
``benchmarks/make_tables.py`` turns the JSON into the README tables.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_info  # noqa: E402

from amuse_lightning import AMUSE, SFMuon, partition_parameters  # noqa: E402
from amuse_lightning.examples.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, read_idx  # noqa: E402
from amuse_lightning.examples.models import CifarResNet  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUTPUT = RESULTS / "anytime_fashion_mnist.json"
MEAN, STD = 0.2860, 0.3530
BUDGET_METHODS = ("adamw_cosine", "muon_cosine")
ANYTIME_METHODS = ("sf_adamw", "amuse", "amuse_reference_compat", "sfmuon")
METHODS = BUDGET_METHODS + ANYTIME_METHODS
SWEPT_METHODS = ("adamw_cosine", "muon_cosine", "sf_adamw", "amuse", "sfmuon")


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study; saved in ``meta.config``."""

    train_size: int = 20_000
    val_size: int = 5_000
    test_size: int = 10_000
    subset_seed: int = 1234
    width: int = 16
    num_blocks: tuple[int, ...] = (1, 1, 1, 1)
    batch_size: int = 128
    eval_batch_size: int = 1000
    crop_padding: int = 2
    hflip: float = 0.5
    warmup_steps: int = 16
    weight_decay: float = 0.05
    budgets: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1)
    sweep_seed: int = 0
    lr_grid: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "adamw_cosine": (1e-3, 3e-3, 1e-2, 3e-2),
            "muon_cosine": (3e-3, 1e-2, 3e-2, 1e-1),
            "sf_adamw": (1e-3, 3e-3, 1e-2, 3e-2),
            "amuse": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
            "sfmuon": (3e-3, 1e-2, 3e-2, 1e-1),
        }
    )
    amuse_default: tuple[float, float] = (0.8, 0.3)
    beta_rho_grid: tuple[tuple[float, float], ...] = (
        (0.8, 0.3),
        (0.9, 0.3),
        (0.8, 0.8),
        (0.6, 0.8),
    )
    beta_rho_epochs: int = 2
    sfmuon_beta: float = 0.9
    bn_batches: int = 50
    threads: int = 1
    workers: int = 2


QUICK = StudyConfig(
    train_size=512,
    val_size=256,
    test_size=512,
    width=8,
    batch_size=64,
    eval_batch_size=512,
    warmup_steps=2,
    budgets=(1, 2),
    lr_grid={m: (3e-3, 1e-2) for m in SWEPT_METHODS},
    beta_rho_grid=((0.8, 0.3), (0.6, 0.8)),
    bn_batches=2,
    workers=1,
)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a method at one lr (and beta1/rho) for ``epochs`` epochs on one seed."""

    phase: str  # "lr" or "beta_rho" (validation), "final" (test)
    method: str
    lr: float
    seed: int
    epochs: int
    beta1: float | None = None
    rho: float | None = None

    @property
    def split(self) -> str:
        return "test" if self.phase == "final" else "val"

    @property
    def run_id(self) -> str:
        extra = "" if self.beta1 is None else f":beta1={self.beta1:g}:rho={self.rho:g}"
        return f"{self.phase}:{self.method}:lr={self.lr:g}{extra}:seed={self.seed}:e{self.epochs}"


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    train_x: torch.Tensor  # float [0, 1], (N, 1, 28, 28)
    train_y: torch.Tensor
    val_x: torch.Tensor  # normalised
    val_y: torch.Tensor
    test_x: torch.Tensor  # normalised
    test_y: torch.Tensor


def load_data(cfg: StudyConfig, folder: Path = DEBIAN_FASHION_MNIST) -> Data:
    """A fixed random ``train_size`` subset of the 60k training images (``subset_seed``), the
    next ``val_size`` images as validation, the first ``test_size`` test images (all 10k in full
    mode)."""
    arrays = {}
    for key, name in FASHION_MNIST_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; install Debian's dataset-fashion-mnist or pass --data-dir "
                "with the four *-ubyte.gz files"
            )
        arrays[key] = torch.from_numpy(read_idx(path).copy())
    images = arrays["train_images"].unsqueeze(1).float().div_(255)
    labels = arrays["train_labels"].long()
    if cfg.train_size + cfg.val_size > len(images):
        raise ValueError(f"train_size + val_size must be <= {len(images)}")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.subset_seed))
    train_idx, val_idx = (
        perm[: cfg.train_size],
        perm[cfg.train_size : cfg.train_size + cfg.val_size],
    )
    test_x = arrays["test_images"][: cfg.test_size].unsqueeze(1).float().div_(255)
    return Data(
        images[train_idx].contiguous(),
        labels[train_idx],
        normalise(images[val_idx]),
        labels[val_idx],
        normalise(test_x),
        arrays["test_labels"][: cfg.test_size].long(),
    )


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def augment(images: torch.Tensor, gen: torch.Generator, padding: int, hflip: float) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a ``[0, 1]`` batch, then normalise."""
    b, _, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen)
        rows = (dy + torch.arange(h)).view(b, 1, h, 1)
        cols = (dx + torch.arange(w)).view(b, 1, 1, w)
        images = padded[
            torch.arange(b).view(b, 1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long), rows, cols
        ]
    if hflip > 0:
        flip = torch.rand(b, generator=gen) < hflip
        images = torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)
    return normalise(images)


def train_batches(
    data: Data, cfg: StudyConfig, gen: torch.Generator, count: int | None = None
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of augmented batches (drop-last), or the first ``count`` of them."""
    steps = len(data.train_x) // cfg.batch_size
    perm = torch.randperm(len(data.train_x), generator=gen)
    for i in range(steps if count is None else min(count, steps)):
        idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        yield augment(data.train_x[idx], gen, cfg.crop_padding, cfg.hflip), data.train_y[idx]


# ----------------------------------------------------------------------------- optimizers


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """``lr(s) / lr = (s + 1) / warmup`` for ``s < warmup``, then ``(1 + cos(pi u)) / 2`` with
    ``u = (s - warmup) / (total - warmup)`` (0-based step ``s``; reaches 0 after the last step)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class OptimizerHandle:
    """The optimizers of one run behind one interface: step, and the y <-> x switch."""

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    averaged: bool  # True: parameters hold y while training and x is the model to evaluate
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = field(default_factory=list)
    flat_views: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        for view, _ in self.flat_views:
            view.grad = None

    def step(self) -> None:
        for view, param in self.flat_views:
            view.grad = param.grad.view_as(view)
        for opt in self.optimizers:
            opt.step()
        for scheduler in self.schedulers:
            scheduler.step()

    def to_x(self) -> list[torch.Tensor]:
        """Parameters -> x (schedule-free methods); returns an exact copy of y to restore."""
        if not self.averaged:
            return []
        y = [p.detach().clone() for p in self.model.parameters()]
        for opt in self.optimizers:
            opt.eval()
        return y

    def to_y(self, y: list[torch.Tensor]) -> None:
        """Back to training mode with the exact y saved by :meth:`to_x`."""
        if not self.averaged:
            return
        for opt in self.optimizers:
            opt.train()
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), y, strict=True):
                p.copy_(saved)


def decay_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW-style groups: decay for tensors with >= 2 dims, none for biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
    ]


def build_optimizer(spec: RunSpec, model: nn.Module, cfg: StudyConfig, total_steps: int):
    wd, warmup = cfg.weight_decay, cfg.warmup_steps
    if spec.method == "adamw_cosine":
        opt = torch.optim.AdamW(decay_groups(model, spec.lr, wd), lr=spec.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total_steps))
        return OptimizerHandle(model, [opt], False, [sched])
    if spec.method == "muon_cosine":
        return _muon_cosine(spec, model, cfg, total_steps)
    if spec.method == "sf_adamw":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(
            decay_groups(model, spec.lr, wd), lr=spec.lr, warmup_steps=warmup, weight_decay=wd
        )
        opt.train()
        return OptimizerHandle(model, [opt], True)
    groups = partition_parameters(model).param_groups(lr=spec.lr, weight_decay=wd)
    if spec.method == "sfmuon":
        opt = SFMuon(groups, lr=spec.lr, beta=cfg.sfmuon_beta, warmup_steps=warmup)
        return OptimizerHandle(model, [opt], True)
    if spec.method in ("amuse", "amuse_reference_compat"):
        opt = AMUSE(
            groups,
            lr=spec.lr,
            beta1=spec.beta1,
            rho=spec.rho,
            warmup_steps=warmup,
            reference_compat=spec.method == "amuse_reference_compat",
        )
        return OptimizerHandle(model, [opt], True)
    raise ValueError(f"unknown method {spec.method!r}; choose from {METHODS}")


def _muon_cosine(
    spec: RunSpec, model: nn.Module, cfg: StudyConfig, total_steps: int
) -> OptimizerHandle:
    """torch.optim.Muon takes 2-D tensors only: it gets ``(out, in*kh*kw)`` views of the kernels
    (sharing storage, so its in-place update moves the model); AdamW takes the fallback side."""
    partition = partition_parameters(model)
    views = [(p.detach().view(p.shape[0], -1), p) for p in (a.param for a in partition.muon)]
    muon = torch.optim.Muon(
        [v for v, _ in views],
        lr=spec.lr,
        weight_decay=cfg.weight_decay,
        momentum=0.95,
        nesterov=True,
        adjust_lr_fn="match_rms_adamw",
    )
    fallback = [a.param for a in partition.fallback]
    adamw = torch.optim.AdamW(
        [
            {"params": [p for p in fallback if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in fallback if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=spec.lr,
    )
    factor = warmup_cosine(cfg.warmup_steps, total_steps)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (muon, adamw)]
    return OptimizerHandle(model, [muon, adamw], False, scheds, views)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Re-estimate BatchNorm running statistics at the current weights (cumulative average over
    ``batches``); returns the previous statistics and momenta for :func:`restore_bn`."""
    saved = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved[name] = (
                m.momentum,
                m.running_mean.clone(),
                m.running_var.clone(),
                m.num_batches_tracked.clone(),
            )
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for images, _ in batches:
        model(images)
    return saved


@torch.no_grad()
def restore_bn(model: nn.Module, saved: dict) -> None:
    for name, m in model.named_modules():
        if name in saved:
            m.momentum, mean, var, count = saved[name]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@torch.no_grad()
def accuracy_and_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int
) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(images), batch):
        logits = model(images[i : i + batch])
        loss += F.cross_entropy(logits, labels[i : i + batch], reduction="sum").item()
        correct += int((logits.argmax(1) == labels[i : i + batch]).sum())
    return correct / len(images), loss / len(images)


def evaluate(
    model: nn.Module,
    handle: OptimizerHandle,
    data: Data,
    split: str,
    cfg: StudyConfig,
    gen: torch.Generator,
) -> tuple[float, float]:
    """Accuracy and mean loss of the model to ship: x (BN recalibrated) or the scheduled iterate."""
    y = handle.to_x()
    saved = {}
    if handle.averaged:
        saved = recalibrate_bn(model, train_batches(data, cfg, gen, cfg.bn_batches))
    images, labels = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    result = accuracy_and_loss(model, images, labels, cfg.eval_batch_size)
    restore_bn(model, saved)
    handle.to_y(y)
    model.train()
    return result


# ----------------------------------------------------------------------------- one run


def train_run(spec: RunSpec, cfg: StudyConfig, data: Data) -> dict:
    """Train one run; evaluate after every epoch (anytime methods, validation runs) or at the end
    (budget methods in the final phase). Returns ``{"spec", "evals", "wall_s", "diverged"}``."""
    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = CifarResNet(10, 1, cfg.width, cfg.num_blocks)
    data_gen = torch.Generator().manual_seed(spec.seed)
    bn_gen = torch.Generator().manual_seed(10_000 + spec.seed)
    steps_per_epoch = len(data.train_x) // cfg.batch_size
    handle = build_optimizer(spec, model, cfg, steps_per_epoch * spec.epochs)
    every_epoch = spec.method in ANYTIME_METHODS or spec.phase != "final"
    evals, diverged = [], False
    for epoch in range(1, spec.epochs + 1):
        model.train()
        for images, labels in train_batches(data, cfg, data_gen):
            loss = F.cross_entropy(model(images), labels)
            if not torch.isfinite(loss):
                diverged = True
                break
            handle.zero_grad()
            loss.backward()
            handle.step()
        if diverged:
            print(f"  {spec.run_id}: diverged in epoch {epoch}", flush=True)
            break
        if every_epoch or epoch == spec.epochs:
            acc, mean_loss = evaluate(model, handle, data, spec.split, cfg, bn_gen)
            evals.append({"epoch": epoch, "accuracy": acc, "loss": mean_loss})
            elapsed = time.perf_counter() - start
            print(
                f"  {spec.run_id} epoch {epoch}: {spec.split} acc {acc:.4f} loss "
                f"{mean_loss:.4f} ({elapsed:.0f} s)",
                flush=True,
            )
    return {
        "spec": asdict(spec),
        "evals": evals,
        "wall_s": time.perf_counter() - start,
        "diverged": diverged,
        "bn_recalibrated": handle.averaged,
        "steps": steps_per_epoch * spec.epochs,
    }


_WORKER: dict[str, Any] = {}


def _init_worker(cfg: StudyConfig, data_dir: str) -> None:
    torch.set_num_threads(cfg.threads)
    _WORKER["cfg"] = cfg
    _WORKER["data"] = load_data(cfg, Path(data_dir))


def _run_in_worker(spec: RunSpec) -> dict:
    return train_run(spec, _WORKER["cfg"], _WORKER["data"])


# ----------------------------------------------------------------------------- scheduling


class Runner:
    """Runs specs in a process pool (``workers > 1``) or in-process, in submission order;
    ``on_result`` sees every finished run (the study saves the JSON there)."""

    def __init__(
        self,
        cfg: StudyConfig,
        data_dir: Path,
        on_result: Callable[[dict], None],
        cache: dict[str, dict] | None = None,
    ) -> None:
        self.cfg, self.on_result, self.cache = cfg, on_result, cache or {}
        self.done: dict[str, dict] = {}
        self.queue: list[RunSpec] = []
        self.futures: dict[cf.Future, RunSpec] = {}
        self.pool = None
        if cfg.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(
                cfg.workers, ctx, initializer=_init_worker, initargs=(cfg, str(data_dir))
            )
        else:
            _init_worker(cfg, str(data_dir))

    def submit(self, specs: Iterable[RunSpec]) -> None:
        for spec in specs:
            if spec.run_id in self.done:
                continue
            if spec.run_id in self.cache:  # finished by an earlier invocation (--resume)
                self._finish(self.cache[spec.run_id])
                continue
            if self.pool is None:
                self.queue.append(spec)
            else:
                self.futures[self.pool.submit(_run_in_worker, spec)] = spec

    def wait_for(self, specs: Iterable[RunSpec]) -> list[dict]:
        specs = list(specs)
        while any(s.run_id not in self.done for s in specs):
            if self.pool is None:
                self._finish(_run_in_worker(self.queue.pop(0)))
                continue
            finished, _ = cf.wait(list(self.futures), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                self.futures.pop(future)
                self._finish(future.result())
        return [self.done[s.run_id] for s in specs]

    def _finish(self, result: dict) -> None:
        self.done[RunSpec(**result["spec"]).run_id] = result
        self.on_result(result)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# ----------------------------------------------------------------------------- the study


class Study:
    """The three phases (lr sweep, AMUSE beta1/rho sweep, final runs) and the JSON they fill."""

    def __init__(self, cfg: StudyConfig, output: Path, quick: bool, data_dir: Path, resume: bool):
        self.cfg, self.output, self.quick, self.data_dir = cfg, output, quick, data_dir
        self.start = time.time()
        self.results: dict[str, dict] = {}  # runs of this study's plan, in finishing order
        self.cache: dict[str, dict] = {}  # runs of a previous invocation (--resume)
        self.previous_wall_s = 0.0
        self.meta = self._meta()
        if resume and output.is_file():
            self._load_previous(json.loads(output.read_text()))
        self.total_runs = 0

    def _meta(self) -> dict:
        import numpy
        import schedulefree

        meta = machine_info("cpu")
        meta.update(
            benchmark="anytime_fashion_mnist",
            mode="quick" if self.quick else "full",
            command="python benchmarks/anytime.py" + (" --quick" if self.quick else ""),
            numpy=numpy.__version__,
            schedulefree=getattr(schedulefree, "__version__", _dist_version("schedulefree")),
            git_commit=_git_commit(),
            config=_jsonable(asdict(self.cfg)),
            status="running",
            load_average_start=_loadavg(),
            protocol=__doc__.split("Protocol: ")[1].split("\n\n")[0].replace("\n", " "),
        )
        return meta

    def _load_previous(self, previous: dict) -> None:
        if _comparable(previous.get("meta", {}).get("config")) != _comparable(self.meta["config"]):
            raise SystemExit("--resume: the existing JSON was made with another config; remove it")
        self.previous_wall_s = float(previous["meta"].get("wall_s", 0.0))
        self.meta["resumed"] = True
        for result in previous.get("meta", {}).get("runs", []):
            self.cache[RunSpec(**result["spec"]).run_id] = result
        print(f"resuming: {len(self.cache)} runs already done", flush=True)

    # -- results
    def on_result(self, result: dict) -> None:
        spec = RunSpec(**result["spec"])
        self.results[spec.run_id] = result
        best = max((e["accuracy"] for e in result["evals"]), default=float("nan"))
        print(
            f"[{len(self.results)}/{self.total_runs}] {spec.run_id}: best {spec.split} acc "
            f"{best:.4f}, {result['wall_s']:.0f} s (elapsed {time.time() - self.start:.0f} s, "
            f"load {_loadavg()})",
            flush=True,
        )
        self.save()

    def save(self, status: str = "running") -> None:
        self.meta.update(
            status=status,
            wall_s=round(self.previous_wall_s + time.time() - self.start, 1),  # all invocations
            wall_s_this_invocation=round(time.time() - self.start, 1),
            load_average_end=_loadavg(),
            runs=list(self.results.values()),
        )
        payload = {"meta": self.meta, "sweep": self.sweep_entries(), "records": self.records()}
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.output)

    def sweep_entries(self) -> list[dict]:
        chosen = self.meta.get("selected", {})
        rows = []
        for run_id, result in self.results.items():
            spec = RunSpec(**result["spec"])
            if spec.phase == "final":
                continue
            pick = chosen.get(spec.method, {})
            is_chosen = pick.get("lr") == spec.lr and (
                spec.phase == "lr" or (pick.get("beta1"), pick.get("rho")) == (spec.beta1, spec.rho)
            )
            for e in result["evals"] or [{"epoch": None, "accuracy": None, "loss": None}]:
                rows.append(
                    {
                        "phase": spec.phase,
                        "optimizer": spec.method,
                        "lr": spec.lr,
                        "beta1": spec.beta1,
                        "rho": spec.rho,
                        "seed": spec.seed,
                        "budget_epochs": spec.epochs,
                        "eval_epoch": e["epoch"],
                        "val_accuracy": e["accuracy"],
                        "val_loss": e["loss"],
                        "diverged": result["diverged"],
                        "chosen": is_chosen,
                        "run_id": run_id,
                    }
                )
        return rows

    def records(self) -> list[dict]:
        rows = []
        for run_id, result in self.results.items():
            spec = RunSpec(**result["spec"])
            if spec.phase != "final":
                continue
            for e in result["evals"]:
                rows.append(
                    {
                        "optimizer": spec.method,
                        "budget_epochs": spec.epochs,
                        "eval_epoch": e["epoch"],
                        "test_accuracy": e["accuracy"],
                        "test_loss": e["loss"],
                        "seed": spec.seed,
                        "lr": spec.lr,
                        "schedule": "anytime" if spec.method in ANYTIME_METHODS else "budget",
                        "beta1": spec.beta1 if spec.method != "sfmuon" else self.cfg.sfmuon_beta,
                        "rho": spec.rho if spec.method != "sfmuon" else 0.0,
                        "bn_recalibrated": result["bn_recalibrated"],
                        "steps": result["steps"],
                        "run_wall_s": round(result["wall_s"], 1),
                        "diverged": result["diverged"],
                        "run_id": run_id,
                    }
                )
        return rows

    # -- phases
    def run(self) -> None:
        cfg = self.cfg
        shortest, longest = min(cfg.budgets), max(cfg.budgets)
        beta1, rho = cfg.amuse_default
        lr_runs = [
            RunSpec(
                "lr",
                m,
                lr,
                cfg.sweep_seed,
                shortest,
                *((beta1, rho) if m == "amuse" else (None, None)),
            )
            for m in SWEPT_METHODS
            for lr in cfg.lr_grid[m]
        ]
        self.total_runs = (
            len(lr_runs)
            + len(cfg.beta_rho_grid)
            + len(cfg.seeds) * (len(BUDGET_METHODS) * len(cfg.budgets) + 4)
        )
        runner = Runner(cfg, self.data_dir, self.on_result, self.cache)
        try:
            runner.submit(lr_runs)
            runner.wait_for(lr_runs)
            lrs = {
                m: self.best([s for s in lr_runs if s.method == m], "last") for m in SWEPT_METHODS
            }
            self.meta["selected"] = {m: {"lr": s.lr} for m, s in lrs.items()}
            br_epochs = min(cfg.beta_rho_epochs, longest)
            br_runs = [
                RunSpec("beta_rho", "amuse", lrs["amuse"].lr, cfg.sweep_seed, br_epochs, b, r)
                for b, r in cfg.beta_rho_grid
            ]
            runner.submit(br_runs)
            others = self.final_specs(lrs, ("sf_adamw", "sfmuon", *BUDGET_METHODS), None)
            runner.submit(others)
            runner.wait_for(br_runs)
            best_br = self.best(br_runs, "mean")
            self.meta["selected"]["amuse"] = {
                "lr": best_br.lr,
                "beta1": best_br.beta1,
                "rho": best_br.rho,
            }
            self.meta["selected"]["amuse_reference_compat"] = dict(self.meta["selected"]["amuse"])
            self.meta["selected"]["sfmuon"]["beta"] = cfg.sfmuon_beta
            amuse = self.final_specs(lrs, ("amuse", "amuse_reference_compat"), best_br)
            runner.submit(amuse)
            runner.wait_for(others + amuse)
        finally:
            runner.close()
        self.mark_edges()
        self.save("complete")

    def best(self, specs: list[RunSpec], rule: str) -> RunSpec:
        """Highest validation accuracy: at the last epoch (``"last"``) or averaged over epochs
        (``"mean"``, the anytime criterion); diverged runs never win; ties go to lower loss."""

        def score(spec: RunSpec) -> tuple[float, float]:
            result = self.results[spec.run_id]
            evals = result["evals"]
            if result["diverged"] or not evals:
                return (-1.0, 0.0)
            if rule == "last":
                return (evals[-1]["accuracy"], -evals[-1]["loss"])
            n = len(evals)
            return (sum(e["accuracy"] for e in evals) / n, -sum(e["loss"] for e in evals) / n)

        return max(specs, key=score)

    def final_specs(
        self, lrs: dict[str, RunSpec], methods: Iterable[str], amuse: RunSpec | None
    ) -> list[RunSpec]:
        """Final runs, longest first (the pool then ends evenly)."""
        cfg, specs = self.cfg, []
        for seed in cfg.seeds:
            for method in methods:
                if method in BUDGET_METHODS:
                    specs += [
                        RunSpec("final", method, lrs[method].lr, seed, b) for b in cfg.budgets
                    ]
                elif method in ("amuse", "amuse_reference_compat"):
                    specs.append(
                        RunSpec(
                            "final",
                            method,
                            amuse.lr,
                            seed,
                            max(cfg.budgets),
                            amuse.beta1,
                            amuse.rho,
                        )
                    )
                else:
                    specs.append(RunSpec("final", method, lrs[method].lr, seed, max(cfg.budgets)))
        return sorted(specs, key=lambda s: -s.epochs)

    def mark_edges(self) -> None:
        """Flag chosen values that sit on the edge of their grid (the grid may be too narrow)."""
        for method, pick in self.meta.get("selected", {}).items():
            grid = self.cfg.lr_grid.get(method)
            if grid and len(grid) > 1:
                pick["lr_at_grid_edge"] = pick["lr"] in (min(grid), max(grid))


# ----------------------------------------------------------------------------- plot


def plot(payload: dict, path: Path) -> None:
    """Test accuracy of x vs epoch: a line per anytime method (mean over seeds, band min..max),
    budget-tuned baselines as points at their budget (mean, bar min..max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = payload["records"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"adamw_cosine": "s", "muon_cosine": "D"}
    for key, ax, label in (
        ("test_accuracy", axes[0], "test accuracy (%)"),
        ("test_loss", axes[1], "test loss"),
    ):
        scale = 100.0 if key == "test_accuracy" else 1.0
        for method in METHODS:
            rows = [r for r in records if r["optimizer"] == method and r[key] is not None]
            if not rows:
                continue
            epochs = sorted({r["eval_epoch"] for r in rows})
            stats = [_stats([scale * r[key] for r in rows if r["eval_epoch"] == e]) for e in epochs]
            mean = [s[0] for s in stats]
            if method in ANYTIME_METHODS:
                (line,) = ax.plot(epochs, mean, "o-", label=method, lw=1.6, ms=4)
                ax.fill_between(
                    epochs,
                    [s[1] for s in stats],
                    [s[2] for s in stats],
                    color=line.get_color(),
                    alpha=0.15,
                    lw=0,
                )
            else:
                err = [
                    [m - s[1] for m, s in zip(mean, stats, strict=True)],
                    [s[2] - m for m, s in zip(mean, stats, strict=True)],
                ]
                ax.errorbar(
                    epochs,
                    mean,
                    yerr=err,
                    fmt=markers[method],
                    ms=7,
                    capsize=3,
                    label=f"{method} (one run per budget)",
                )
        ax.set_xticks(sorted({r["eval_epoch"] for r in records}))
        ax.set_xlabel("epoch (= budget for the cosine baselines)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    meta = payload["meta"]
    cfg = meta["config"]
    fig.suptitle(
        f"Fashion-MNIST, CifarResNet width {cfg['width']} blocks {tuple(cfg['num_blocks'])}, "
        f"{cfg['train_size']} train images, {len(cfg['seeds'])} seeds ({meta['mode']} mode, "
        f"{meta['date'][:10]})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _stats(values: list[float]) -> tuple[float, float, float]:
    return sum(values) / len(values), min(values), max(values)


# ----------------------------------------------------------------------------- helpers


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _comparable(config: dict | None) -> dict | None:
    """A config without the fields that do not change one run's result (grids and seeds only add
    runs; every run is keyed by its own settings)."""
    if config is None:
        return None
    ignored = ("workers", "threads", "lr_grid", "beta_rho_grid", "seeds")
    return {k: v for k, v in config.items() if k not in ignored}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (CI), under a minute")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DEFAULT_OUTPUT}")
    parser.add_argument("--workers", type=int, default=None, help="processes (1 thread each)")
    parser.add_argument("--data-dir", type=Path, default=DEBIAN_FASHION_MNIST)
    parser.add_argument("--resume", action="store_true", help="skip runs already in --output")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else StudyConfig()
    if args.workers is not None:
        cfg = replace(cfg, workers=args.workers)
    output = args.output or (
        Path("/tmp/anytime_fashion_mnist_quick.json") if args.quick else DEFAULT_OUTPUT
    )
    torch.set_num_threads(cfg.threads)
    study = Study(cfg, output, args.quick, args.data_dir, args.resume)
    study.run()
    payload = json.loads(output.read_text())
    if not args.no_plot:
        plot(payload, output.with_suffix(".png"))
    print(
        f"wrote {output} ({len(payload['records'])} records) in {study.meta['wall_s']:.0f} s; "
        f"selected {json.dumps(study.meta['selected'])}",
        flush=True,
    )


if __name__ == "__main__":
    main()
