"""Smoke tests of the anytime study: ``benchmarks/anytime.py --quick`` end to end (JSON schema,
plot, README tables) and the pieces whose mistakes would bias it silently (evaluation at x must
not disturb training, the Muon baseline must move the conv kernels, the cosine schedule)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DATA = Path("/usr/share/datasets/fashion-mnist")
RECORD_FIELDS = {
    "optimizer",
    "budget_epochs",
    "eval_epoch",
    "test_accuracy",
    "test_loss",
    "seed",
    "lr",
}


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def anytime():
    return _load("anytime")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST idx files not installed (Debian dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("anytime") / "anytime_fashion_mnist.json"
    subprocess.run(
        [sys.executable, str(BENCH / "anytime.py"), "--quick", "--output", str(out)],
        check=True,
        cwd=ROOT,
        timeout=240,
    )
    return out


@pytest.mark.xdist_group("multiprocess")
def test_quick_run_writes_the_documented_schema(quick_run: Path, anytime) -> None:
    data = json.loads(quick_run.read_text())
    assert set(data) == {"meta", "sweep", "records"}
    meta = data["meta"]
    for key in (
        "date",
        "platform",
        "cpu_count",
        "torch",
        "lightning",
        "timm",
        "schedulefree",
        "wall_s",
        "config",
        "selected",
    ):
        assert key in meta, key
    assert meta["status"] == "complete" and meta["mode"] == "quick"
    records = data["records"]
    for r in records:
        assert set(r) >= RECORD_FIELDS
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_loss"] > 0
        assert 1 <= r["eval_epoch"] <= r["budget_epochs"]
    cfg = meta["config"]
    budgets, seeds = cfg["budgets"], cfg["seeds"]
    assert len(seeds) >= 2 and {r["seed"] for r in records} == set(seeds)
    for method in anytime.BUDGET_METHODS:  # one run per budget, evaluated at its end
        got = {
            (r["seed"], r["budget_epochs"], r["eval_epoch"])
            for r in records
            if r["optimizer"] == method
        }
        assert got == {(s, b, b) for s in seeds for b in budgets}
    for method in anytime.ANYTIME_METHODS:  # one run, evaluated after every epoch
        got = {(r["seed"], r["eval_epoch"]) for r in records if r["optimizer"] == method}
        assert got == {(s, e) for s in seeds for e in range(1, max(budgets) + 1)}
        assert all(r["bn_recalibrated"] for r in records if r["optimizer"] == method)
    # every swept method has one chosen lr, and its final runs use it
    for method, pick in meta["selected"].items():
        assert {r["lr"] for r in records if r["optimizer"] == method} == {pick["lr"]}
    lr_sweep = [s for s in data["sweep"] if s["phase"] == "lr"]
    for method in anytime.SWEPT_METHODS:
        tried = {s["lr"] for s in lr_sweep if s["optimizer"] == method}
        assert tried == set(cfg["lr_grid"][method])
        assert len({s["lr"] for s in lr_sweep if s["optimizer"] == method and s["chosen"]}) == 1
    pairs = {(s["beta1"], s["rho"]) for s in data["sweep"] if s["phase"] == "beta_rho"}
    assert pairs == {tuple(p) for p in cfg["beta_rho_grid"]}
    assert quick_run.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.xdist_group("multiprocess")
def test_make_tables_renders_the_quick_run(quick_run: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "make_tables.py"), "--results", str(quick_run.parent)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = result.stdout
    assert "Anytime test accuracy" in text and "AMUSE (β1, ρ) sweep" in text
    for method in ("adamw_cosine", "muon_cosine", "sf_adamw", "amuse_reference_compat", "sfmuon"):
        assert f"| {method} |" in text
    assert "step_time.json not found" in text  # absent file: a note, not a crash


def _tiny(anytime):
    cfg = anytime.StudyConfig(
        train_size=64,
        val_size=32,
        test_size=32,
        width=4,
        batch_size=16,
        eval_batch_size=32,
        warmup_steps=2,
        bn_batches=2,
    )
    g = torch.Generator().manual_seed(0)
    data = anytime.Data(
        torch.rand(64, 1, 28, 28, generator=g),
        torch.randint(0, 10, (64,), generator=g),
        torch.randn(32, 1, 28, 28, generator=g),
        torch.randint(0, 10, (32,), generator=g),
        torch.randn(32, 1, 28, 28, generator=g),
        torch.randint(0, 10, (32,), generator=g),
    )
    return cfg, data


def _train_steps(anytime, model, handle, data, cfg, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _, (images, labels) in zip(
        range(steps), anytime.train_batches(data, cfg, gen), strict=False
    ):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        handle.zero_grad()
        loss.backward()
        handle.step()


@pytest.mark.parametrize("method", ["amuse", "sf_adamw", "sfmuon"])
def test_evaluation_at_x_leaves_training_state_untouched(anytime, method: str) -> None:
    """y parameters and y-time BN statistics come back bit for bit; x was what got evaluated."""
    cfg, data = _tiny(anytime)
    torch.manual_seed(0)
    model = anytime.CifarResNet(10, 1, cfg.width, cfg.num_blocks)
    spec = anytime.RunSpec("final", method, 1e-2, 0, 1, 0.8, 0.3)
    handle = anytime.build_optimizer(spec, model, cfg, total_steps=8)
    _train_steps(anytime, model, handle, data, cfg, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_acc_loss = anytime.evaluate(model, handle, data, "test", cfg, torch.Generator())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    y_acc_loss = anytime.accuracy_and_loss(model, data.test_x, data.test_y, 32)
    assert x_acc_loss[1] != pytest.approx(y_acc_loss[1], rel=1e-6)
    _train_steps(anytime, model, handle, data, cfg, 1)  # training goes on in train mode


def test_bn_recalibration_is_a_cumulative_average_and_restores(anytime) -> None:
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(bn)
    bn.running_mean.fill_(5.0)
    batches = [(torch.randn(8, 3, 4, 4) + i, None) for i in range(3)]
    saved = anytime.recalibrate_bn(model, batches)
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b, _ in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)
    anytime.restore_bn(model, saved)
    assert torch.equal(bn.running_mean, torch.full((3,), 5.0)) and bn.momentum == 0.1


def test_muon_baseline_moves_conv_kernels_through_flat_views(anytime) -> None:
    cfg, data = _tiny(anytime)
    torch.manual_seed(0)
    model = anytime.CifarResNet(10, 1, cfg.width, cfg.num_blocks)
    handle = anytime.build_optimizer(
        anytime.RunSpec("final", "muon_cosine", 1e-2, 0, 1), model, cfg, total_steps=8
    )
    kernel = model.layer2[0].conv1.weight
    start = kernel.detach().clone()
    _train_steps(anytime, model, handle, data, cfg, 3)
    assert not torch.equal(start, kernel)
    muon = handle.optimizers[0]
    assert any(kernel.data_ptr() == p.data_ptr() for p in muon.param_groups[0]["params"])


def test_warmup_cosine_rises_then_decays_to_zero(anytime) -> None:
    factor = anytime.warmup_cosine(4, 20)
    values = [factor(s) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(values[3:]))
    assert factor(20) == pytest.approx(0.0, abs=1e-12) and values[-1] < 0.01


@pytest.mark.xdist_group("multiprocess")
def test_make_tables_handles_optional_results(tmp_path: Path) -> None:
    """step_time.json in its known layout becomes a table; a layout it does not know, a note."""
    row = {"median_ms": 2.0, "min_ms": 1.5, "state_bytes": 2**21, "step_peak_bytes": 2**22,
           "ratio_to_torch_muon": 1.25}  # fmt: skip
    step_time = {"meta": {"date": "2026-01-01", "cpu_count": 2, "wall_seconds": 60.0},
                 "models": {"vit_s16": {"amuse": row}}, "swap": {"exact_swap_ms": 0.5}}  # fmt: skip
    (tmp_path / "step_time.json").write_text(json.dumps(step_time))
    (tmp_path / "distributed_step.json").write_text(json.dumps({"something": "else"}))
    text = subprocess.run(
        [sys.executable, str(BENCH / "make_tables.py"), "--results", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "| amuse | 2.00 | 1.25 | 2.0 | 4.0 |" in text
    assert "anytime_fashion_mnist.json not found" in text
    assert "distributed_step.json: unexpected layout" in text
