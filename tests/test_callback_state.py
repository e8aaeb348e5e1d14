"""AmuseCallback internals a user can observe: the phase, the resume payload's format check, the
save hook stand-in under copy/pickle, the one private Lightning read, the FSDP2 layout rule."""

from __future__ import annotations

import copy
import functools
import gc
import pickle
import subprocess
import sys
import types
from unittest import mock

import lightning.pytorch as pl
import pytest
import schedulefree
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from amuse_lightning import AMUSE, AmuseCallback, default_amuse_factory
from amuse_lightning.lightning.checkpoint import (
    FORMAT_VERSION,
    ResumePayload,
    build_payload,
    read_payload,
)
from amuse_lightning.lightning.compat import private_attribute
from amuse_lightning.lightning.factories import builds_schedule_free, is_schedule_free
from amuse_lightning.lightning.sharded import holds_whole_tensors
from amuse_lightning.lightning.state import TRANSITIONS, Holds, SwapState
from amuse_lightning.lightning.swap import WeightSwap
from tests.callback_testkit import (
    Recorder,
    assert_same,
    bn_statistics_at,
    differs,
    expected_x,
    first_inputs,
    make_data,
    params_only,
    trainer,
)


# ---------------------------------------------------------------------------------- the phase
class PhaseProbe(Callback):
    """Records the AmuseCallback's phase in the hooks that run after its own."""

    def __init__(self, amuse: AmuseCallback) -> None:
        self.amuse = amuse
        self.seen: dict[str, set[Holds]] = {}

    def _note(self, hook: str) -> None:
        self.seen.setdefault(hook, set()).add(self.amuse.holds)

    def on_train_batch_start(self, *args) -> None:
        self._note("train")

    def on_validation_batch_start(self, *args) -> None:
        self._note("val")

    def on_test_batch_start(self, *args) -> None:
        self._note("test")


def test_phase_follows_training_evaluation_and_the_end_of_fit(tmp_path):
    amuse = AmuseCallback()
    probe = PhaseProbe(amuse)
    model = Recorder()
    epoch_end = ModelCheckpoint(tmp_path / "ck", save_top_k=-1)
    run = trainer(tmp_path, [amuse, probe, epoch_end], max_epochs=1, enable_checkpointing=True)
    assert amuse.holds is Holds.UNMANAGED
    run.fit(model)
    assert probe.seen == {"train": {Holds.Y}, "val": {Holds.X_FOR_EVALUATION}}
    assert amuse.holds is Holds.X_FINAL
    run.test(model)  # x stays: nothing to swap
    assert probe.seen["test"] == {Holds.X_FINAL} and amuse.holds is Holds.X_FINAL
    run.test(model, ckpt_path=epoch_end.best_model_path)
    assert amuse.holds is Holds.X_FROM_CHECKPOINT
    run.validate(model)  # a new stage lets the checkpoint's x go and takes the optimizer back
    assert amuse.holds is Holds.X_FINAL


def test_undeclared_phase_change_is_refused():
    state = SwapState()
    for start, allowed in TRANSITIONS.items():
        for target in Holds:
            state.holds = start
            if target is start or target in allowed:
                state.move(target)
                assert state.holds is target
            else:
                with pytest.raises(RuntimeError, match="no transition"):
                    state.move(target)
                assert state.holds is start


# ------------------------------------------------------------------------ checkpoint payload
def test_payload_round_trip_copies_the_tensors():
    y = {"w": torch.arange(4.0)}
    payload = build_payload(y, None)
    assert payload["format"] == FORMAT_VERSION
    y["w"].add_(1.0)  # the payload holds copies
    read = read_payload({"amuse": payload})
    assert read.y is not None and torch.equal(read.y["w"], torch.arange(4.0))
    assert read.train_buffers is None and read.from_amuse
    assert read_payload({"state_dict": {}}) == ResumePayload(from_amuse=False)


def test_payload_for_another_model_is_refused_naming_the_parameters():
    from amuse_lightning import AMUSE

    module = torch.nn.Linear(3, 2)
    optimizer = AMUSE(module.parameters(), warmup_steps=2)
    y = {"weight": torch.zeros(2, 3), "extra.weight": torch.zeros(1)}  # no bias, one unknown
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(RuntimeError, match=r"no y for \['bias'\].*\['extra.weight'\]"):
        ResumePayload(y=y).apply(module, optimizer)
    assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"format": FORMAT_VERSION + 1, "y": None}, "newer amuse-lightning"),
        ({"format": "one", "y": None}, "unknown format"),
        ({"format": 0, "y": None}, "unknown format"),
        ({"y": None}, "no 'format'"),
        ({"format": FORMAT_VERSION, "y": [1.0]}, r"\['y'\] must be a dict"),
    ],
)
def test_payload_of_another_format_is_refused(payload, message):
    with pytest.raises(ValueError, match=message):
        read_payload({"amuse": payload})


def test_resume_from_a_newer_format_fails_before_training(tmp_path):
    model = Recorder()
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=1)
    run.fit(model)
    path = tmp_path / "future.ckpt"
    run.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["amuse"]["format"] = FORMAT_VERSION + 1
    torch.save(checkpoint, path)
    resumed = Recorder()
    with pytest.raises(ValueError, match="newer amuse-lightning"):
        trainer(tmp_path, [AmuseCallback()], max_epochs=2).fit(resumed, ckpt_path=path)
    assert not resumed.of_kind("train")


# ---------------------------------------------------------------- the save hook stand-in
class CopyProbe(Callback):
    """At the end of the first epoch: pickle and deep-copy the module the stand-in sits on."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Recorder) -> None:
        if hasattr(self, "copy"):
            return
        self.stand_in = stand_in = pl_module.__dict__["on_save_checkpoint"]
        self.with_stand_in = len(pickle.dumps(pl_module))
        del pl_module.__dict__["on_save_checkpoint"]
        self.without_stand_in = len(pickle.dumps(pl_module))
        pl_module.__dict__["on_save_checkpoint"] = stand_in
        self.copy = copy.deepcopy(pl_module)
        self.unpickled = pickle.loads(pickle.dumps(pl_module))
        self.weights = pl_module.snapshot()


def test_module_copies_and_pickles_during_fit_without_the_callback(tmp_path):
    pl.seed_everything(0)
    model = Recorder(record=False)
    amuse, probe = AmuseCallback(), CopyProbe()
    run = trainer(tmp_path, [amuse, probe], max_epochs=2, num_sanity_val_steps=0)
    run.fit(model)
    # the stand-in adds a few bytes, not the callback, its copy of y and the optimizer state
    assert probe.with_stand_in - probe.without_stand_in < 200, (
        probe.with_stand_in,
        probe.without_stand_in,
    )
    for twin in (probe.copy, probe.unpickled):
        assert_same(twin.snapshot(), probe.weights)
        checkpoint = {"state_dict": {}}
        twin.on_save_checkpoint(checkpoint)  # detached: the module's own (empty) hook only
        assert checkpoint == {"state_dict": {}}
    # neither the copies nor the stand-in on the live module reach the callback or the optimizer
    for root, stop in ((probe.copy, None), (probe.unpickled, None), (probe.stand_in, model)):
        found = [type(o).__name__ for o in reachable(root, stop) if isinstance(o, heavy)]
        assert not found, found


heavy = (AmuseCallback, torch.optim.Optimizer, WeightSwap)


def reachable(root: object, stop: object | None) -> list[object]:
    """Every object reachable from ``root`` through references, not entering ``stop``, classes
    or modules."""
    seen, todo, found = {id(root)}, [root], []
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if ref is stop or id(ref) in seen or isinstance(ref, (type, types.ModuleType)):
                continue
            seen.add(id(ref))
            todo.append(ref)
            found.append(ref)
    return found


def test_checkpoint_written_through_the_stand_in_still_holds_x(tmp_path):
    """The weakly held writer still works while the callback lives (save_weights_only)."""
    pl.seed_everything(0)
    model = Recorder()
    weights_only = ModelCheckpoint(
        tmp_path / "w", save_top_k=-1, every_n_train_steps=3, save_weights_only=True
    )
    run = trainer(
        tmp_path,
        [AmuseCallback(), weights_only],
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
    )
    run.fit(model)
    path = next((tmp_path / "w").glob("*step=3*.ckpt"))
    saved = torch.load(path, weights_only=False)
    assert "amuse" not in saved
    assert_same(dict(saved["state_dict"]), expected_x(model.y_at_step(3)))
    assert params_only(model.y_at_step(3)).keys() == saved["state_dict"].keys()


# ------------------------------------------------------------------ the one private read
def test_private_attribute_reads_dotted_paths_and_names_what_is_missing():
    owner = type("Loop", (), {})()
    owner._source = type("Source", (), {"instance": 7})()
    assert private_attribute(owner, "_source.instance", "do this") == 7
    with pytest.raises(RuntimeError, match=r"Loop\._gone\.instance.*lightning 2\..*do this"):
        private_attribute(owner, "_gone.instance", "do this")


def test_recalibration_says_what_to_do_if_lightning_renames_the_data_source(tmp_path, monkeypatch):
    class RenameDataSource(Callback):
        def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: Recorder) -> None:
            monkeypatch.delattr(trainer.fit_loop, "_data_source")

    model = Recorder(batchnorm=True)
    run = trainer(
        tmp_path, [RenameDataSource(), AmuseCallback(bn_recalibration_batches=2)], max_epochs=1
    )
    with pytest.raises(RuntimeError, match=r"_data_source.*bn_recalibration_batches=0"):
        run.fit(model)


# --------------------------------------------------------------------------- FSDP2 layout
def test_whole_tensor_layout_is_read_from_the_checkpoint():
    from torch.distributed.tensor import DTensor

    shard = mock.Mock(spec=DTensor)  # passes isinstance, which is all the rule looks at
    assert holds_whole_tensors({})  # a non-zero rank of a whole-tensor checkpoint
    assert holds_whole_tensors({"w": torch.zeros(2)})  # rank 0 of a whole-tensor checkpoint
    assert not holds_whole_tensors({"w": shard, "b": torch.zeros(1)})


# ------------------------------------------------------------------------- one-way imports
@pytest.mark.xdist_group("multiprocess")  # runs a fresh interpreter
def test_imports_only_go_down():
    """The save hook never loads the callback; the CLI never loads the examples."""
    code = (
        "import sys\n"
        "import amuse_lightning.lightning.save_hook\n"
        "assert 'amuse_lightning.lightning.callback' not in sys.modules\n"
        "import amuse_lightning.cli.lightning_cli\n"
        "assert not [m for m in sys.modules if m.startswith('amuse_lightning.examples')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=480)


def test_one_schedule_free_rule_for_callback_mixin_and_cli():
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    assert is_schedule_free(AMUSE([{"params": params, "use_muon": True}]))
    assert is_schedule_free(schedulefree.AdamWScheduleFree(params)) and is_schedule_free(AMUSE)
    assert not is_schedule_free(torch.optim.SGD(params, lr=0.1))
    assert not is_schedule_free(torch.optim.SGD)
    assert builds_schedule_free(None) and builds_schedule_free(default_amuse_factory(lr=0.1))
    assert builds_schedule_free(functools.partial(schedulefree.SGDScheduleFree, lr=0.1))
    assert not builds_schedule_free(functools.partial(torch.optim.AdamW, lr=0.1))


# ---------------------------------------------------- which batches recalibration draws
def bn_oracle(weights: dict[str, torch.Tensor], loader, n_batches: int, scale: float = 1.0):
    """BatchNorm statistics of ``weights`` from the first ``n_batches`` of ``loader``."""
    return bn_statistics_at(weights, first_inputs(loader, n_batches, scale))


def sanity_check_bn(model: Recorder) -> dict[str, torch.Tensor]:
    (step, entry), *_ = model.of_kind("val")
    assert step == 0
    return entry["__bn__"]


def test_recalibration_draws_from_the_loader_given_to_fit(tmp_path):
    """fit(train_dataloaders=...) wins over the module's own train_dataloader, as in training."""
    model = Recorder(batchnorm=True)
    start = model.snapshot()
    given = DataLoader(make_data(48, seed=5), batch_size=8)
    run = trainer(tmp_path, [AmuseCallback(bn_recalibration_batches=2)], max_steps=1)
    run.fit(model, train_dataloaders=given)
    assert_same(sanity_check_bn(model), bn_oracle(start, given, 2))
    assert differs(sanity_check_bn(model), bn_oracle(start, model.train_dataloader(), 2))


class DoublingData(pl.LightningDataModule):
    """A datamodule whose on_before_batch_transfer doubles the inputs."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_data(48, seed=0), batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(make_data(16, seed=1), batch_size=8)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        inputs, targets = batch
        return inputs * 2.0, targets


def test_recalibration_batches_pass_the_datamodules_transfer_hook(tmp_path):
    model = Recorder(batchnorm=True)
    start = model.snapshot()
    data = DoublingData()
    run = trainer(tmp_path, [AmuseCallback(bn_recalibration_batches=2)], max_steps=1)
    run.fit(model, datamodule=data)
    assert_same(sanity_check_bn(model), bn_oracle(start, data.train_dataloader(), 2, scale=2.0))
    assert differs(sanity_check_bn(model), bn_oracle(start, data.train_dataloader(), 2))
