"""The horizon study on one GPU: the 10.7M-parameter byte GPT to 8,000 steps, one script, under
8 minutes on an H200 (planned from the step times measured there: AMUSE ~12-15 ms, torch Muon +
AdamW ~18-26 ms per step at width 384, depth 6, context 256, batch 64, bf16 autocast).

    python benchmarks/gpu_horizon.py                      # cuda, writes gpu_horizon.json to $OUT
    python benchmarks/gpu_horizon.py --tiny --device cpu  # dry run of the script (seconds)

What it runs (one seed; no lr tuning fits in the time, so the lrs are the ones the GPU grid
{5e-3, 1e-2} chose at this size: AMUSE 1e-2, Muon + cosine 5e-3):

1. One AMUSE run to the longest budget, scored at ``x`` at every budget, and the finisher
   (``--finisher``: the library's default, chosen on validation by the CPU studies) run from the
   live state at every budget with the library's ``finish`` on the batches the run sees next.
2. One Muon WSD run (Muon + AdamW at a constant lr after the same warm-up, at the cosine's lr):
   its live iterate at every budget (the constant-lr peer) and a fork decayed linearly to zero
   over the finisher's ``round(f t)`` steps (``anytime/forks.py``), the run restored after each.
3. Muon + cosine, one run per total-step count, in this order while the time limit allows:
   the finished model's total ``t + round(f t)`` and then ``t`` itself, longest budget first.
   A run that would not finish inside ``--time-limit`` (estimated from the step times measured
   so far) is skipped and listed as such.

The JSON (``meta``, ``runs``, ``gaps``) is rewritten after every run, so whatever fits is kept.
Needs only torch, lightning and the project (no schedulefree, no timm at run time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from anytime.finishing import Lookahead, Variant  # noqa: E402
from anytime.forks import wsd_fork_evals  # noqa: E402
from anytime.methods import build_optimizer  # noqa: E402
from common import machine_info  # noqa: E402

from amuse_lightning import partition_parameters  # noqa: E402
from amuse_lightning.averaging import finish  # noqa: E402
from amuse_lightning.examples.char_gpt import build_char_gpt, lm_loss  # noqa: E402
from amuse_lightning.examples.text_data import eval_windows, load_text_corpus, sample_batch  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny model and budgets (dry run)")
    p.add_argument("--budgets", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    p.add_argument("--finisher", default="x/linear/f=0.2/lr_x0.1")  # the library's default
    p.add_argument("--amuse-lr", type=float, default=1e-2)
    p.add_argument("--cosine-lr", type=float, default=5e-3)
    p.add_argument("--warmup-fraction", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--eval-windows", type=int, default=256)
    p.add_argument("--time-limit", type=float, default=450.0, help="seconds for all runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    args.model = dict(width=384, depth=6, heads=6, context=256)
    args.batch = 64
    if args.tiny:
        args.model = dict(width=32, depth=1, heads=2, context=32)
        args.batch, args.budgets, args.eval_windows = 8, [8, 16], 16
    out = Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))
    args.output = args.output or out / (
        "gpu_horizon_tiny.json" if args.tiny else "gpu_horizon.json"
    )
    return args


class Setup:
    """Data, model and loss on the device, bf16 autocast on CUDA."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.device = args, torch.device(args.device)
        corpus = load_text_corpus(max_bytes=1_000_000 if args.tiny else 6_000_000)
        self.train_ids = corpus.train
        ctx = args.model["context"]
        self.splits = {
            s: tuple(t.to(self.device) for t in eval_windows(ids, ctx, args.eval_windows))
            for s, ids in (("val", corpus.val), ("test", corpus.test))
        }

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def model(self) -> torch.nn.Module:
        torch.manual_seed(self.args.seed)
        return build_char_gpt(**self.args.model).to(self.device)

    def batches(self):
        step = 0
        while True:
            x, y = sample_batch(
                self.train_ids, self.args.batch, self.args.model["context"], self.args.seed, step
            )
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            step += 1

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        with self.autocast():
            return lm_loss(model(batch[0]).float(), batch[1])

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        out = {}
        for split, (x, y) in self.splits.items():
            total = 0.0
            for i in range(0, len(x), 64):
                total += self.loss(model, (x[i : i + 64], y[i : i + 64])).item() * len(
                    x[i : i + 64]
                )
            out[split] = total / len(x)
        model.train()
        return out


class _ForkScores:
    """What :func:`~anytime.forks.wsd_fork_evals` asks of a task, from a :class:`Setup`."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return self.setup.loss(model, batch)

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        return {"loss": self.setup.evaluate(model)[split]}


def train(
    setup: Setup,
    method: str,
    lr: float,
    steps: int,
    horizon: int,
    points: list[int],
    variant: Variant | None,
) -> dict:
    """One run; scores at ``points`` (x for AMUSE, plus the finished model; the live iterate and
    the WSD fork for ``muon_wsd``)."""
    args = setup.args
    model = setup.model()
    groups = partition_parameters(model).param_groups(weight_decay=args.weight_decay)
    warmup = max(2, round(args.warmup_fraction * horizon))
    handle = build_optimizer(
        method,
        model,
        groups,
        lr=lr,
        weight_decay=args.weight_decay,
        warmup_steps=warmup,
        total_steps=steps,
    )
    stream = Lookahead(setup.batches())
    evals, start, diverged = [], time.perf_counter(), False
    train_s = 0.0
    for step in range(1, steps + 1):
        tick = time.perf_counter()
        loss = setup.loss(model, next(stream))
        if not torch.isfinite(loss):
            diverged = True
            break
        handle.zero_grad()
        loss.backward()
        handle.step()
        train_s += time.perf_counter() - tick
        if step in points:
            with handle.evaluation_weights():
                scores = setup.evaluate(model)
            entry = {"step": step, "loss": scores}
            if variant is not None:
                k = variant.steps(step)
                (optimizer,) = handle.optimizers
                finished = finish(
                    optimizer,
                    model,
                    stream.peek(k),
                    setup.loss,
                    steps=k,
                    start=variant.start,
                    shape=variant.shape,
                    lr_factor=variant.lr_factor,
                )
                entry["finished"] = {"steps": k, "loss": setup.evaluate(finished)}
                del finished
            if method == "muon_wsd":
                fork = wsd_fork_evals(_ForkScores(setup), model, handle, stream, step,
                                      args.fork_fraction)  # fmt: skip
                losses = {k: fork[k].get("loss") for k in ("val", "test")}
                entry["forked"] = {"steps": fork["steps"], "loss": losses}
            evals.append(entry)
            print(f"  {method} lr {lr:g} step {step}: {entry}", flush=True)
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "method": method,
        "lr": lr,
        "steps": steps,
        "warmup_steps": warmup,
        "evals": evals,
        "diverged": diverged,
        "wall_s": round(time.perf_counter() - start, 1),
        "train_ms_per_step": round(1e3 * train_s / max(1, step), 2),
    }


def gaps(runs: list[dict], budgets: list[int]) -> list[dict]:
    """Per budget, in nats (positive = AMUSE lower loss), where both runs exist: x - cosine(t),
    finished - cosine(t + f t), x - the constant-lr Muon run at t, finished - its WSD fork."""
    amuse = next((r for r in runs if r["method"] == "amuse"), None)
    wsd = next((r for r in runs if r["method"] == "muon_wsd"), None)
    live = {e["step"]: e for e in wsd["evals"]} if wsd else {}
    cosine = {
        r["steps"]: r["evals"][-1]["loss"]["test"]
        for r in runs
        if r["method"] == "muon_cosine" and r["evals"]
    }
    out = []
    for e in amuse["evals"] if amuse else []:
        t, fin = e["step"], e.get("finished")
        row = {"t": t, "x_test": e["loss"]["test"]}
        if t in cosine:
            row["x_minus_cosine_t"] = cosine[t] - e["loss"]["test"]
        if fin and t + fin["steps"] in cosine:
            row["finished_minus_cosine_equal"] = cosine[t + fin["steps"]] - fin["loss"]["test"]
        if t in live:
            row["x_minus_constant_lr"] = live[t]["loss"]["test"] - e["loss"]["test"]
            fork = live[t].get("forked")
            if fin and fork and fork["loss"]["test"] is not None:
                row["finished_minus_wsd_fork"] = fork["loss"]["test"] - fin["loss"]["test"]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_float32_matmul_precision("high")
    setup = Setup(args)
    variant = Variant.parse(args.finisher)
    budgets = sorted(args.budgets)
    meta = machine_info(args.device)
    meta.update(
        benchmark="gpu_horizon",
        model=args.model,
        batch=args.batch,
        budgets=budgets,
        finisher=variant.id,
        amuse_lr=args.amuse_lr,
        cosine_lr=args.cosine_lr,
        seed=args.seed,
        time_limit_s=args.time_limit,
        tiny=args.tiny,
        command=" ".join(["python benchmarks/gpu_horizon.py", *(argv or sys.argv[1:])]),
    )
    runs: list[dict] = []
    skipped: list[int] = []
    begin = time.perf_counter()

    def save() -> None:
        meta["wall_s"] = round(time.perf_counter() - begin, 1)
        payload = {
            "meta": meta,
            "runs": runs,
            "skipped_cosine_steps": skipped,
            "gaps": gaps(runs, budgets),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=1))

    runs.append(train(setup, "amuse", args.amuse_lr, budgets[-1], budgets[-1], budgets, variant))
    save()
    args.fork_fraction = variant.fraction
    runs.append(train(setup, "muon_wsd", args.cosine_lr, budgets[-1], budgets[-1], budgets, None))
    save()
    plan = [s for t in reversed(budgets) for s in (t + variant.steps(t), t)]
    ms = runs[0]["train_ms_per_step"] * 1.6  # torch Muon + AdamW was ~1.5x AMUSE's step on GPU
    for steps in plan:
        left = args.time_limit - (time.perf_counter() - begin)
        if steps * ms / 1e3 * 1.1 > left:
            skipped.append(steps)
            continue
        runs.append(train(setup, "muon_cosine", args.cosine_lr, steps, steps, [steps], None))
        ms = max(ms, runs[-1]["train_ms_per_step"])
        save()
    save()
    print(json.dumps(gaps(runs, budgets), indent=1))
    print(f"wrote {args.output}; skipped cosine runs: {skipped}; wall {meta['wall_s']} s")


if __name__ == "__main__":
    main()
