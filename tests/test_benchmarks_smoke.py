"""Smoke tests of the anytime studies (``benchmarks/run_anytime.py <task> --quick`` end to end:
JSON schema, selection on validation only, plot, README tables) and the pieces whose mistakes
would bias them silently (evaluation at x must not disturb training and must see BatchNorm
statistics of its own, the Muon baseline must move the conv kernels, the cosine schedule, the
choice rules)."""

from __future__ import annotations

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
sys.path.insert(0, str(BENCH))

from anytime import averages, finishing, methods, probes, protocol  # noqa: E402
from anytime.finisher_study import FinisherStudy  # noqa: E402
from anytime.vision import VisionTask  # noqa: E402

from tests.helpers.anytime_tasks import tiny_vision  # noqa: E402


def _has_char_gpt() -> bool:
    return (ROOT / "amuse_lightning" / "examples" / "char_gpt.py").is_file()


@pytest.fixture(scope="module", params=["vision", "vit", "lm"])
def quick_run(request, tmp_path_factory) -> tuple[str, Path]:
    task = request.param
    if task in ("vision", "vit") and not (DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST idx files not installed (Debian dataset-fashion-mnist)")
    if task == "lm" and not _has_char_gpt():
        pytest.skip("the char_gpt example is not in this tree")
    out = tmp_path_factory.mktemp(task) / f"anytime_{task}.json"
    subprocess.run(
        [sys.executable, str(BENCH / "run_anytime.py"), task, "--quick", "--output", str(out)],
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    return task, out


@pytest.mark.xdist_group("multiprocess")  # starts a study subprocess
def test_quick_run_follows_the_protocol(quick_run: tuple[str, Path]) -> None:
    task, path = quick_run
    data = json.loads(path.read_text())
    assert set(data) == {"meta", "runs", "records"}
    meta = data["meta"]
    for key in ("date", "platform", "cpu_count", "torch", "timm", "schedulefree", "wall_s"):
        assert key in meta, key
    assert meta["status"] == "complete" and meta["mode"] == "quick" and meta["task"] == task
    cfg = meta["config"]
    budgets, seeds = cfg["budgets"], cfg["seeds"]
    assert len(seeds) >= 2
    methods_seen = {r["method"] for r in data["records"]}
    assert methods_seen == {"adamw_cosine", "muon_cosine", "sf_adamw", "amuse", "amuse_best"}
    for method in methods_seen:  # every (seed, budget) cell is filled, from the chosen setting
        rows = [r for r in data["records"] if r["method"] == method]
        assert {(r["seed"], r["budget_steps"]) for r in rows} == {
            (s, b) for s in seeds for b in budgets
        }
        for r in rows:
            chosen = meta["selected"][method][str(r["budget_steps"])]
            assert r["run_id"].startswith(chosen + ":seed=")
            assert r["test"]["loss"] > 0
    runs = {r["spec"]["phase"] for r in data["runs"]}
    assert runs == {"sweep", "screen", "final"}
    grid = cfg["lr_grid"]
    for method in ("adamw_cosine", "muon_cosine", "sf_adamw", "amuse"):
        tried = {r["spec"]["lr"] for r in data["runs"] if r["spec"]["phase"] == "sweep"
                 and r["spec"]["method"] == method}  # fmt: skip
        assert tried == set(grid[method])
    # anytime runs are evaluated at every budget, budget runs only at their end
    for r in data["runs"]:
        steps = [e["step"] for e in r["evals"]]
        if r["spec"]["method"] in methods.BUDGET_METHODS:
            assert steps == [r["spec"]["steps"]]
        else:
            assert steps == [b for b in budgets if b <= r["spec"]["steps"]]
    assert path.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.xdist_group("multiprocess")  # starts a study subprocess
def test_make_tables_renders_the_quick_run(quick_run: tuple[str, Path]) -> None:
    _, path = quick_run
    text = subprocess.run(
        [sys.executable, str(BENCH / "make_tables.py"), "--results", str(path.parent)],
        check=True, capture_output=True, text=True, timeout=480,
    ).stdout  # fmt: skip
    assert "Anytime minus budget-tuned Muon + cosine" in text
    for method in ("adamw_cosine", "muon_cosine", "sf_adamw", "amuse", "amuse_best"):
        assert f"| {method} |" in text
    assert "step_time.json not found" in text  # absent file: a note, not a crash


def _handle(task: VisionTask, method: str, model: torch.nn.Module) -> methods.OptimizerHandle:
    groups = task.param_groups(model, 0.05)
    return methods.build_optimizer(
        method, model, groups, lr=1e-2, weight_decay=0.05, warmup_steps=2, total_steps=8
    )


def _train(task: VisionTask, model, handle, steps: int, seed: int = 1) -> None:
    torch.manual_seed(seed)
    for batch in itertools.islice(task.train_batches(seed), steps):
        loss = task.loss(model, batch)
        handle.zero_grad()
        loss.backward()
        handle.step()


@pytest.mark.parametrize("method", ["amuse", "sf_adamw"])
def test_evaluation_at_x_leaves_training_untouched(method: str) -> None:
    """y parameters, y-time BN statistics and the data stream come back bit for bit."""
    task = tiny_vision()
    torch.manual_seed(0)
    model = task.build_model(0)
    handle = _handle(task, method, model)
    _train(task, model, handle, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seen, evaluate = {}, task.evaluate
    bn = (
        model.bn1
        if hasattr(model, "bn1")
        else next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    )

    def spy(model: torch.nn.Module, split: str) -> dict:
        seen[split] = bn.running_mean.clone()
        return evaluate(model, split)

    task.evaluate = spy
    at_x = protocol.evaluate_both(task, model, handle, seed=0)
    del task.evaluate
    # BatchNorm statistics re-estimated at x for the evaluation, the training ones back after
    assert not torch.equal(seen["val"], bn.running_mean)
    assert torch.equal(seen["val"], seen["test"])
    assert torch.equal(rng, torch.get_rng_state())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    at_y = task.evaluate(model, "test")
    assert at_x["test"]["loss"] != pytest.approx(at_y["loss"], rel=1e-6)
    _train(task, model, handle, 1)  # training goes on


def test_muon_baseline_moves_conv_kernels_through_flat_views() -> None:
    task = tiny_vision()
    torch.manual_seed(0)
    model = task.build_model(0)
    handle = _handle(task, "muon_cosine", model)
    kernel = model.layer2[0].conv1.weight
    start = kernel.detach().clone()
    _train(task, model, handle, 3)
    assert not torch.equal(start, kernel)
    muon = handle.optimizers[0]
    assert any(kernel.data_ptr() == p.data_ptr() for g in muon.param_groups for p in g["params"])


def test_torch_groups_apply_layer_decay_scale() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    groups = [{"params": [p], "use_muon": True, "lr_scale": 0.5, "weight_decay": 0.1}]
    assert methods.torch_groups(groups, 1e-2) == [{"params": [p], "lr": 5e-3, "weight_decay": 0.1}]


def test_warmup_cosine_rises_then_decays_to_zero() -> None:
    factor = methods.warmup_cosine(4, 20)
    values = [factor(s) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(values[3:]))
    assert factor(20) == pytest.approx(0.0, abs=1e-12) and values[-1] < 0.01


def _result(spec: protocol.RunSpec, val: dict[int, float], test: dict[int, float]) -> dict:
    evals = [{"step": s, "val": {"score": val[s]}, "test": {"score": test[s]}} for s in val]
    return {"spec": spec.to_dict(), "evals": evals, "diverged": False}


def test_choices_use_validation_only() -> None:
    """Budget methods: best validation score at each budget; anytime: best mean validation
    score over the budgets; the test split never decides."""
    a = protocol.RunSpec("sweep", "muon_cosine", 1e-2, 0, 10)
    b = protocol.RunSpec("sweep", "muon_cosine", 3e-2, 0, 10)
    results = {a.run_id: _result(a, {10: 0.9}, {10: 0.1}), b.run_id: _result(b, {10: 0.8}, {10: 1})}
    assert protocol.choose_budget_lrs("muon_cosine", results, [a, b], (10,)).specs[10] == a
    x = protocol.RunSpec("sweep", "amuse", 1e-2, 0, 20)
    y = protocol.RunSpec("sweep", "amuse", 3e-2, 0, 20)
    results = {
        x.run_id: _result(x, {10: 0.5, 20: 0.95}, {10: 1.0, 20: 1.0}),  # best at the end only
        y.run_id: _result(y, {10: 0.8, 20: 0.9}, {10: 0.0, 20: 0.0}),  # best on average
    }
    choice = protocol.choose_anytime("amuse", results, [x, y], (10, 20))
    assert choice.specs == {10: y, 20: y}


def test_train_run_stops_at_a_non_finite_loss_and_never_wins() -> None:
    task = tiny_vision()
    task.study = protocol.StudyConfig(budgets=(2, 4), lr_grid={}, weight_decay=0.0)
    losses = iter([1.0, 1.0, 1.0, float("nan")])
    task.loss = lambda model, batch: model(batch[0]).sum() * 0 + next(losses)
    result = protocol.train_run(protocol.RunSpec("sweep", "amuse", 1e-2, 0, 4), task)
    assert result["diverged"] and [e["step"] for e in result["evals"]] == [2]
    assert protocol.mean_score(result, (2, 4)) == float("-inf")


@pytest.mark.xdist_group("multiprocess")  # starts a study subprocess
def test_make_tables_handles_optional_results(tmp_path: Path) -> None:
    """step_time.json in its known layout becomes a table; a layout it does not know, a note."""
    row = {"median_ms": 2.0, "min_ms": 1.5, "state_bytes": 2**21, "step_peak_bytes": 2**22,
           "ratio_to_torch_muon": 1.25, "cpu_ratio_to_torch_muon": 1.2, "weight_decay": 0.0,
           "anchor": {"median_ms": 1.6}, "load_average_1m": [1.0, 1.5]}  # fmt: skip
    step_time = {"meta": {"date": "2026-01-01", "cpu_count": 2, "wall_seconds": 60.0},
                 "models": {"vit_s16": {"amuse": row}}}  # fmt: skip
    (tmp_path / "step_time.json").write_text(json.dumps(step_time))
    (tmp_path / "distributed_step.json").write_text(json.dumps({"something": "else"}))
    text = subprocess.run(
        [sys.executable, str(BENCH / "make_tables.py"), "--results", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=480,
    ).stdout  # fmt: skip
    assert "| amuse | 0 | 2.0 | 1.6 | 1.250 | 1.200 | 2.0 | 4.00 | 1.0–1.5 |" in text
    assert "anytime_vision.json not found" in text
    assert "distributed_step.json: unexpected layout" in text


# ----------------------------------------------------------------------------- round 2


@pytest.fixture(scope="module", params=["vision", "vit", "lm", "horizon"])
def finisher_run(request, tmp_path_factory) -> tuple[str, Path]:
    task = request.param
    if task in ("vision", "vit") and not (DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST idx files not installed (Debian dataset-fashion-mnist)")
    if task in ("lm", "horizon") and not _has_char_gpt():
        pytest.skip("the char_gpt example is not in this tree")
    name = "anytime_horizon" if task == "horizon" else f"anytime_{task}_finisher"
    out = tmp_path_factory.mktemp(f"{task}_finisher") / f"{name}.json"
    command = [sys.executable, str(BENCH / "run_anytime.py"), task, "--quick", "--output", str(out)]
    subprocess.run([*command, "--study", "finisher"], check=True, cwd=ROOT, timeout=300)
    return task, out


@pytest.mark.xdist_group("multiprocess")  # starts a study subprocess
def test_finisher_run_follows_the_protocol(finisher_run: tuple[str, Path]) -> None:
    _, path = finisher_run
    data = json.loads(path.read_text())
    meta, records = data["meta"], data["records"]
    assert meta["status"] == "complete" and meta["study"] == "finisher"
    selection = meta["selection"]
    variant = finishing.Variant.parse(selection["variant"])
    cfg = meta["config"]
    budgets, seeds = cfg["budgets"], cfg["seeds"]
    methods_seen = {r["method"] for r in records}
    expected = {"amuse_x", "amuse_finished", "muon_cosine", "muon_cosine_equal"}
    emas = {f"ema_{s}_{w:g}" for s in "yz" for w in cfg["finishing"]["ema_widths"]}
    assert methods_seen == expected | emas
    cap = cfg["finishing"]["final_max_budget"] or max(budgets)
    for method in methods_seen:
        cells = {(r["seed"], r["budget_steps"]) for r in records if r["method"] == method}
        full = {(s, b) for s in seeds for b in budgets}  # other seeds stop at final_max_budget
        full = {(s, b) for s, b in full if s == cfg["sweep_seed"] or b <= cap}
        assert cells == full, method
    for r in records:  # equal compute: the cosine and the finished model share total steps
        if r["method"] in ("amuse_finished", "muon_cosine_equal"):
            assert r["total_steps"] == r["budget_steps"] + variant.steps(r["budget_steps"])
        else:
            assert r["total_steps"] == r["budget_steps"]
    # the sweep-seed AMUSE run scored every variant of the grid at every budget
    grid = set(selection["variants"])
    sweep = next(r for r in data["runs"] if protocol.RunSpec.from_dict(r["spec"]).run_id
                 == selection["amuse_run"])  # fmt: skip
    assert all(set(e["finished"]) == grid for e in sweep["evals"])
    assert path.with_suffix(".png").stat().st_size > 10_000
    text = subprocess.run(
        [sys.executable, str(BENCH / "make_tables.py"), "--results", str(path.parent)],
        check=True, capture_output=True, text=True, timeout=480,
    ).stdout  # fmt: skip
    assert "finished − cosine(t + f t)" in text and "Finisher grid (validation)" in text
    assert "goal met at" in text


def test_finisher_choice_uses_validation_at_equal_total_steps() -> None:
    """The variant is chosen by validation against the cosine tuned for t + round(f t): a
    variant that looks best against the cosine tuned for t, or on test, does not win."""
    study = FinisherStudy.__new__(FinisherStudy)
    study.study = protocol.StudyConfig(budgets=(10,), lr_grid={"muon_cosine": (1e-2,)},
                                       weight_decay=0.0)  # fmt: skip
    long, short = (
        finishing.Variant("y", "linear", 0.2, 1.0),
        finishing.Variant("x", "linear", 0.1, 1.0),
    )
    study.finishing = probes.FinisherConfig(amuse_lrs=(1e-2,), fractions=(0.1, 0.2),
                                            starts=("x", "y"), shapes=("linear",),
                                            lr_factors=(1.0,))  # fmt: skip
    cos = {s: protocol.RunSpec("sweep", "muon_cosine", 1e-2, 0, s) for s in (10, 11, 12)}
    cos_val = {10: 0.5, 11: 0.6, 12: 0.8}
    study.results = {c.run_id: _result(c, {s: cos_val[s]}, {s: 0.0}) for s, c in cos.items()}
    amuse = protocol.RunSpec("sweep", "amuse", 1e-2, 0, 10)
    evals = [{"step": 10, "val": {"score": 0.4}, "test": {"score": 0.4}, "finished": {
        long.id: {"steps": 2, "val": {"score": 0.75}, "test": {"score": 0.0}},  # -0.05 vs 12
        short.id: {"steps": 1, "val": {"score": 0.65}, "test": {"score": 1.0}},  # +0.05 vs 11
    }}]  # fmt: skip
    study.results[amuse.run_id] = {"spec": amuse.to_dict(), "evals": evals, "diverged": False}
    study.save = lambda *a, **k: None
    assert study._choose_variant(amuse) == short
    assert study.selection["cosine"] == {"10": 1e-2, "11": 1e-2}


def test_probes_leave_the_run_unchanged() -> None:
    """An AMUSE run that also scores finishers and EMAs sees the same batches and evaluates
    the same x, bit for bit, as one that does not."""
    task = tiny_vision()
    task.study = protocol.StudyConfig(budgets=(2, 4), lr_grid={}, weight_decay=0.05)
    task.finishing = probes.FinisherConfig(amuse_lrs=(1e-2,), shapes=("1-sqrt",),
                                           fractions=(0.5,), lr_factors=(1.0,),
                                           ema_widths=(0.1,))  # fmt: skip
    plain = protocol.RunSpec("sweep", "amuse", 1e-2, 0, 4)
    probed = protocol.RunSpec("sweep", "amuse", 1e-2, 0, 4,
                              (("averages", "ema"), ("finishers", "grid")))  # fmt: skip
    a, b = protocol.train_run(plain, task), protocol.train_run(probed, task)
    strip = [{"step": e["step"], "val": e["val"], "test": e["test"]} for e in b["evals"]]
    assert [{k: e[k] for k in ("step", "val", "test")} for e in a["evals"]] == strip
    assert set(b["evals"][-1]["finished"]) == {"x/1-sqrt/f=0.5/lr_x1", "y/1-sqrt/f=0.5/lr_x1"}
    assert set(b["evals"][-1]["averages"]) == {"ema_y_0.1", "ema_z_0.1"}


def test_lookahead_shows_batches_without_taking_them() -> None:
    stream = finishing.Lookahead(iter(range(10)))
    assert next(stream) == 0
    assert stream.peek(3) == [1, 2, 3]
    assert [next(stream) for _ in range(5)] == [1, 2, 3, 4, 5]


def test_power_ema_is_the_power_weighted_average() -> None:
    """Karras et al.'s widths, and the tracked EMA weighs theta_s by the integral of u^gamma
    over (s - 1, s], normalised: (s^(gamma+1) - (s-1)^(gamma+1)) / t^(gamma+1)."""
    assert averages.gamma_for(0.05) == pytest.approx(16.97, abs=0.01)
    assert averages.gamma_for(0.1) == pytest.approx(6.94, abs=0.01)
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=0.0)
    emas = averages.PowerEMAs(torch.nn.ParameterList([param]), optimizer, (0.2,))
    thetas = [torch.randn(3) for _ in range(7)]
    for theta in thetas:
        with torch.no_grad():
            param.copy_(theta)
        emas.update()
    gamma = averages.gamma_for(0.2)
    weights = [(s + 1) ** (gamma + 1) - s ** (gamma + 1) for s in range(7)]
    expected = sum(w * t for w, t in zip(weights, thetas, strict=True)) / sum(weights)
    torch.testing.assert_close(emas.emas["ema_y_0.2"][0], expected)


@pytest.mark.xdist_group("multiprocess")  # starts the benchmark in a subprocess
def test_gpu_horizon_dry_run_compares_at_equal_total_steps(tmp_path: Path) -> None:
    """``gpu_horizon.py --tiny --device cpu`` (the dry run before a GPU session): one AMUSE run,
    a cosine run for every budget t and every total t + round(f t), a gap row per budget."""
    out = tmp_path / "gpu_horizon.json"
    command = [sys.executable, str(BENCH / "gpu_horizon.py"), "--tiny", "--device", "cpu"]
    subprocess.run([*command, "--output", str(out)], check=True, cwd=ROOT, timeout=480)
    data = json.loads(out.read_text())
    budgets, variant = data["meta"]["budgets"], finishing.Variant.parse(data["meta"]["finisher"])
    amuse = [r for r in data["runs"] if r["method"] == "amuse"]
    assert len(amuse) == 1 and amuse[0]["steps"] == max(budgets)
    (wsd,) = [r for r in data["runs"] if r["method"] == "muon_wsd"]  # the practical peer
    assert [e["forked"]["steps"] for e in wsd["evals"]] == [variant.steps(t) for t in budgets]
    cosine = {r["steps"] for r in data["runs"] if r["method"] == "muon_cosine"}
    assert cosine == set(budgets) | {t + variant.steps(t) for t in budgets}
    assert data["skipped_cosine_steps"] == []
    assert [g["t"] for g in data["gaps"]] == budgets
    for gap in data["gaps"]:
        keys = ("x_minus_cosine_t", "finished_minus_cosine_equal", "x_minus_constant_lr",
                "finished_minus_wsd_fork")  # fmt: skip
        assert all(isinstance(gap[k], float) for k in keys)
