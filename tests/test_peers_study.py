"""Round 3's study code (benchmarks/anytime/peers_study.py, forks.py): a WSD fork leaves the
constant-lr run exactly as it was, and a quick study fills every row the README table needs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from anytime.lm import LMTask  # noqa: E402
from anytime.protocol import RunSpec, train_run  # noqa: E402

from tests.helpers.anytime_tasks import tiny_vision  # noqa: E402


def quick_study(task: str, study: str, tmp_path: Path) -> dict:
    """``run_anytime.py <task> --study <study> --quick`` in a subprocess (one worker): its JSON."""
    out = tmp_path / f"{task}_{study}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_anytime.py"), task, "--study", study,
           "--quick", "--output", str(out), "--workers", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def lm_task() -> LMTask:
    task = LMTask(quick=True)
    task.setup()
    return task


def test_a_wsd_fork_leaves_the_constant_lr_run_as_it_was(lm_task: LMTask) -> None:
    plain = train_run(RunSpec("sweep", "muon_wsd", 1e-2, 0, 12), lm_task)
    forked = train_run(RunSpec("sweep", "muon_wsd", 1e-2, 0, 12, (("forks", "0.5"),)), lm_task)
    assert [e["val"] for e in forked["evals"]] == [e["val"] for e in plain["evals"]]
    assert [e["test"] for e in forked["evals"]] == [e["test"] for e in plain["evals"]]
    for e in forked["evals"]:  # a fork of round(0.5 t) steps at every budget, scored apart
        assert e["forked"]["steps"] == round(0.5 * e["step"])
        assert e["forked"]["val"]["score"] != e["val"]["score"]


def test_a_fork_leaves_batchnorm_and_the_run_as_they_were() -> None:
    """The vision task (BatchNorm buffers move in the fork's training; augmentation comes from
    torch's global generator, drawn in the run's order by the lookahead): the evaluation after
    the fork at t = 4 equals the run's without forks."""
    task = tiny_vision()
    plain = train_run(RunSpec("sweep", "muon_wsd", 1e-2, 0, 8), task)
    forked = train_run(RunSpec("sweep", "muon_wsd", 1e-2, 0, 8, (("forks", "0.5"),)), task)
    assert [e["val"] for e in forked["evals"]] == [e["val"] for e in plain["evals"]]
    assert [e["test"] for e in forked["evals"]] == [e["test"] for e in plain["evals"]]
    assert all("forked" in e for e in forked["evals"])


def test_a_fork_decays_the_rate_linearly_to_zero(lm_task: LMTask, monkeypatch) -> None:
    """The lrs the fork's optimizers step with: ``lr_t (1 - i / k)``, i = 0 .. k-1."""

    import torch

    seen: list[float] = []
    original = torch.optim.Muon.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Muon, "step", spy)
    monkeypatch.setattr(lm_task, "study", dataclasses.replace(lm_task.study, budgets=(8,)))
    train_run(RunSpec("sweep", "muon_wsd", 1e-2, 0, 8, (("forks", "0.5"),)), lm_task)
    run, fork = seen[:8], seen[8:]
    assert fork == pytest.approx([run[-1] * (1 - i / 4) for i in range(4)])


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_a_quick_peers_study_fills_every_row(tmp_path: Path) -> None:
    payload = quick_study("horizon", "peers", tmp_path)
    methods = {r["method"] for r in payload["records"]}
    assert methods >= {
        "amuse_x", "amuse_finished", "amuse_finished_default", "muon_constant", "muon_wsd",
        "sf_adamw", "muon_cosine", "muon_cosine_equal", "knob:r=1",
    }  # fmt: skip
    seeds = {r["seed"] for r in payload["records"] if r["method"] == "muon_wsd"}
    assert seeds == set(payload["meta"]["config"]["seeds"])
    for row in payload["records"]:
        if row["method"] in ("muon_wsd", "amuse_finished", "muon_cosine_equal"):
            assert row["total_steps"] == row["budget_steps"] + round(0.2 * row["budget_steps"])
        if row["method"] in ("muon_constant", "amuse_x", "sf_adamw", "muon_cosine"):
            assert row["total_steps"] == row["budget_steps"]
    assert payload["meta"]["selection"]["variant"] in payload["meta"]["config"]["peers"]["variants"]
    best = payload["meta"]["selection"].get("best_knob")
    if best is not None:  # step 5: a knob with a validation gain runs again with the finisher
        assert best["mean_val_gain"] > 0 and best["name"] == "r=1"
        assert {"best_x", "best_finished"} <= methods


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_a_quick_annealed_study_anneals_every_amuse_run_and_finishes_its_knobs(
    tmp_path: Path,
) -> None:
    """Round 3b: every AMUSE run carries the annealing (its lr and finisher are chosen on
    annealed runs), a knob overrides only ``beta_final``, and each knob run is finished by the
    chosen variant, so its finished rows exist."""
    payload = quick_study("lm", "annealed", tmp_path)
    longest = max(payload["meta"]["config"]["budgets"])
    finals = set()
    for run in payload["runs"]:
        if run["spec"]["method"] != "amuse":
            continue
        settings = dict(run["spec"]["settings"])
        assert settings["beta_anneal_steps"] == longest and settings["rho"] == 0.0
        assert settings["beta_final"] == (0.9 if run["spec"]["phase"] == "screen" else 0.965)
        finals.add(settings["beta_final"])
    assert finals == {0.9, 0.965}
    methods = {r["method"] for r in payload["records"]}
    assert {"amuse_x", "amuse_finished", "muon_wsd", "knob:beta_final=0.9",
            "knob:beta_final=0.9:finished"} <= methods  # fmt: skip
    chosen = payload["meta"]["selection"]["variant"]
    # a knob run already finished by the chosen variant is not run a second time to confirm it
    assert all(r["spec"]["phase"] != "confirm" for r in payload["runs"])
    screened = [r for r in payload["runs"] if r["spec"]["phase"] == "screen"]
    assert screened and all(dict(r["spec"]["settings"])["finishers"] == chosen for r in screened)


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_a_quick_auto_study_runs_amuse_as_the_library_defaults_and_scores_finish(
    tmp_path: Path,
) -> None:
    """Round 3c: every AMUSE run but the knob's passes ``beta_final="auto"`` (the library
    resolves it), the knob is the earlier 0.965, and ``finish()``'s defaults are scored."""
    payload = quick_study("lm", "auto", tmp_path)
    for run in payload["runs"]:
        if run["spec"]["method"] == "amuse":
            knob = run["spec"]["phase"] == "screen"
            assert dict(run["spec"]["settings"])["beta_final"] == (0.965 if knob else "auto")
    methods = {r["method"] for r in payload["records"]}
    assert {"amuse_x", "amuse_finished", "amuse_finished_default", "sf_adamw", "muon_wsd",
            "knob:beta_final=0.965", "knob:beta_final=0.965:finished"} <= methods  # fmt: skip
    import run_anytime

    with pytest.raises(SystemExit):  # over the horizon's 6,400 steps "auto" is 0.965: round 3b
        run_anytime.main(["horizon", "--study", "auto", "--quick"])


def test_a_finisher_variant_with_the_auto_factor_runs_the_librarys_rule(lm_task: LMTask) -> None:
    """``lr_xauto`` is ``finish(lr_factor="auto")``: at step 4 its factor is 0.3 (0.3 min(1,
    800 / 4)), so it finishes exactly as the constant 0.3 does and not as 0.1 does."""
    from anytime.finishing import Variant

    auto = Variant.parse("x/linear/f=0.5/lr_xauto")
    assert auto.lr_factor == "auto" and auto.id == "x/linear/f=0.5/lr_xauto"
    spec = RunSpec("sweep", "amuse", 1e-2, 0, 4, (
        ("finishers", "x/linear/f=0.5/lr_xauto|x/linear/f=0.5/lr_x0.3|x/linear/f=0.5/lr_x0.1"),
    ))  # fmt: skip
    task = lm_task
    original = task.study
    task.study = dataclasses.replace(original, budgets=(4,))
    try:
        finished = train_run(spec, task)["evals"][-1]["finished"]
    finally:
        task.study = original
    scores = {v: finished[v]["val"]["score"] for v in finished}
    assert scores["x/linear/f=0.5/lr_xauto"] == scores["x/linear/f=0.5/lr_x0.3"]
    assert scores["x/linear/f=0.5/lr_xauto"] != scores["x/linear/f=0.5/lr_x0.1"]


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_the_horizon_screen_runs_every_seed_at_fixed_lrs_without_sweeps(tmp_path: Path) -> None:
    """Round 3b on the horizon is a screen: the base setting, each knob and the WSD fork on
    every seed at fixed lrs, every run finished by both variants (auto, finish()'s default, and
    the earlier 0.1), and no Schedule-Free or cosine runs."""
    payload = quick_study("horizon", "annealed", tmp_path)
    seeds = set(payload["meta"]["config"]["seeds"])
    runs = [r["spec"] for r in payload["runs"]]
    assert {s["method"] for s in runs} == {"amuse", "muon_wsd"}
    for method, phases in (
        ("amuse", {"sweep", "final", "screen"}),
        ("muon_wsd", {"sweep", "final"}),
    ):
        assert {s["phase"] for s in runs if s["method"] == method} == phases
        assert {s["seed"] for s in runs if s["method"] == method} == seeds
        assert len({s["lr"] for s in runs if s["method"] == method}) == 1
    # finish()'s default ("auto") fills the finished_default rows, the earlier 0.1 the others
    assert payload["meta"]["config"]["peers"]["default_variant"] == "x/linear/f=0.2/lr_xauto"
    assert payload["meta"]["selection"]["variant"] == "x/linear/f=0.2/lr_x0.1"
    methods = {r["method"] for r in payload["records"]}
    assert {"amuse_finished", "amuse_finished_default", "knob:beta_final=0.9:finished",
            "knob:beta_final=0.9:finished_default", "muon_wsd"} <= methods  # fmt: skip
    assert set(payload["meta"]["selection"]["variants"]) == {
        "x/linear/f=0.2/lr_xauto", "x/linear/f=0.2/lr_x0.1"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--study", "annealed", "--budgets", "300"], "--budgets must be among the task's"),
        (["--study", "peers", "--budgets", "200"], "go with --study annealed and an --output"),
        (
            ["--study", "annealed", "--beta-finals", "0.9"],
            "go with --study annealed and an --output",
        ),
    ],
)
def test_a_held_out_length_is_a_prefix_of_the_budgets_and_writes_its_own_file(
    extra: list[str], words: str, tmp_path: Path, capsys
) -> None:
    """``--budgets`` / ``--beta-finals`` (round 3b's held-out run length) take budgets the task
    has and a file of their own, so they never overwrite the main study's JSON."""
    import run_anytime

    output = [] if "--beta-finals" in extra else ["--output", str(tmp_path / "held_out.json")]
    with pytest.raises(SystemExit) as stop:
        run_anytime.main(["horizon", "--quick", *extra, *output])
    assert stop.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "held_out.json").exists()


def test_a_resumed_study_keeps_its_first_date_and_lists_each_resume(tmp_path: Path) -> None:
    """``--resume`` must not pass the last invocation off as the study's start: the date, load
    and commit stay the first invocation's and each resume is listed under ``resumed``."""
    from anytime.study import Study
    from md_tables import provenance

    output = tmp_path / "study.json"
    first = {"date": "2026-12-07T20:00:00", "load_average_1m": 0.3, "git_commit": "aaa",
             "config": {"budgets": [1, 2]}, "wall_s": 60.0}  # fmt: skip
    output.write_text(json.dumps({"meta": first, "runs": [], "records": []}))
    task = dataclasses.make_dataclass("T", [("study", object)])(study=None)
    for date, commit in (("2026-12-08T01:00:00", "bbb"), ("2026-12-08T02:00:00", "ccc")):
        meta = {"date": date, "load_average_1m": 1.7, "git_commit": commit,
                "config": {"budgets": [1, 2]}}  # fmt: skip
        study = Study(task, None, output, meta, resume=True)
        output.write_text(json.dumps({"meta": study.meta, "runs": [], "records": []}))
    assert (meta["date"], meta["git_commit"], meta["load_average_1m"]) == (
        "2026-12-07T20:00:00", "aaa", 0.3)  # fmt: skip
    assert [r["date"] for r in meta["resumed"]] == ["2026-12-08T01:00:00", "2026-12-08T02:00:00"]
    assert [r["git_commit"] for r in meta["resumed"]] == ["bbb", "ccc"]
    assert "resumed 2026-12-08T01:00:00, 2026-12-08T02:00:00" in provenance(meta)


def test_the_horizon_screen_takes_other_finishers_and_no_knobs(tmp_path: Path) -> None:
    """``--finishers`` replaces the screen's finishers (the last fills the chosen rows, the
    ``finish()`` defaults keep theirs) and ``--beta-finals`` with no value runs no knob."""
    import run_anytime

    out = tmp_path / "ystart.json"
    run_anytime.main(["horizon", "--study", "annealed", "--quick", "--workers", "1",
                      "--beta-finals", "--finishers", "x/linear/f=0.2/lr_xauto",
                      "y/linear/f=0.2/lr_xauto", "--output", str(out)])  # fmt: skip
    payload = json.loads(out.read_text())
    assert payload["meta"]["selection"]["variant"] == "y/linear/f=0.2/lr_xauto"
    methods = {r["method"] for r in payload["records"]}
    assert {"amuse_finished", "amuse_finished_default"} <= methods
    assert not any(m.startswith("knob:") for m in methods)
    with pytest.raises(SystemExit):  # the short tasks choose their finisher on validation
        run_anytime.main(["lm", "--study", "annealed", "--quick", "--finishers",
                          "y/linear/f=0.2/lr_xauto", "--output", str(out)])  # fmt: skip
