"""The byte-level GPT example: model, partition, stdlib corpus, CLI config, a short real run."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from amuse_lightning import AmuseCallback
from amuse_lightning.cli import run_cli
from amuse_lightning.examples import text_data
from amuse_lightning.examples.char_gpt import CharGPTModule, build_char_gpt, lm_loss
from amuse_lightning.examples.text_data import (
    EpochSteps,
    TextDataModule,
    eval_windows,
    load_text_corpus,
    sample_batch,
    split_of,
    stdlib_files,
    unigram_entropy,
)
from amuse_lightning.partition import partition_parameters

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "char_gpt.yaml"
CORPUS_BYTES = 6_000_000  # the default corpus (about 2 s to read, then cached)


def tiny(**kwargs) -> torch.nn.Module:
    settings = dict(vocab_size=256, width=32, depth=2, heads=2, context=16)
    return build_char_gpt(**{**settings, **kwargs})


# ----------------------------------------------------------------------------- the model


def test_logits_shape_and_context_limit():
    model = tiny()
    ids = torch.randint(0, 256, (3, 16))
    assert model(ids).shape == (3, 16, 256)
    assert model(ids[:, :5]).shape == (3, 5, 256)
    with pytest.raises(ValueError, match="exceeds the context 16"):
        model(torch.randint(0, 256, (1, 17)))
    with pytest.raises(ValueError, match="divisible by heads"):
        tiny(width=30, heads=4)
    with pytest.raises(ValueError, match="norm must be"):
        tiny(norm="batchnorm")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_changing_a_future_token_leaves_earlier_logits_alone(norm):
    torch.manual_seed(0)
    model = tiny(norm=norm).eval()
    ids = torch.randint(0, 256, (2, 16))
    changed = ids.clone()
    changed[:, 9] = (ids[:, 9] + 1) % 256
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], rtol=0, atol=1e-6)
    assert (after[:, 9:] - before[:, 9:]).abs().amax() > 1e-3  # the change is seen from t=9 on


def test_untrained_loss_is_near_uniform_and_tied_head_shares_the_embedding():
    torch.manual_seed(0)
    model = tiny()
    assert model.lm_head.weight is model.token_embedding.weight
    assert tiny(tie_embeddings=False).lm_head.weight is not tiny().token_embedding.weight
    ids = torch.randint(0, 256, (4, 16))
    with torch.no_grad():
        loss = lm_loss(model(ids[:, :-1]), ids[:, 1:])
    assert abs(float(loss) - math.log(256)) < 0.05  # small init: close to the uniform loss


def test_generate_continues_a_prompt_greedily_and_reproducibly():
    torch.manual_seed(0)
    module = CharGPTModule(width=32, depth=1, heads=2, context=16).eval()
    first = module.generate(b"def f(x):", 20, temperature=0)
    assert isinstance(first, bytes) and len(first) == 20  # also past the 16-byte context
    assert module.generate(b"def f(x):", 20, temperature=0) == first
    sampled = [module.generate(b"", 8, generator=torch.Generator().manual_seed(1)) for _ in "ab"]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 8


# ----------------------------------------------------------------------------- the partition

HIDDEN = {"attn.qkv.weight", "attn.proj.weight", "mlp.up.weight", "mlp.down.weight"}


def _muon_names(partition) -> set[str]:
    return {a.name for a in partition.muon}


@pytest.mark.parametrize("tied", [True, False])
def test_partition_sends_embeddings_and_head_to_fallback(tied):
    model = tiny(tie_embeddings=tied)
    partition = partition_parameters(model)
    expected_muon = {f"blocks.{i}.{leaf}" for i in range(2) for leaf in HIDDEN}
    assert _muon_names(partition) == expected_muon
    fallback = {a.name: a.reason for a in partition.fallback}
    assert "embedding" in fallback["token_embedding.weight"]
    assert "position" in fallback["position_embedding.weight"]
    if tied:
        assert "lm_head.weight" not in fallback
        assert "tied with lm_head.weight" in fallback["token_embedding.weight"]
        assert [name for name, _ in partition.skipped] == ["lm_head.weight"]
    else:
        assert "classifier head (lm_head)" in fallback["lm_head.weight"]
    # every trainable tensor exactly once in the optimizer's groups
    grouped = [p for g in partition.param_groups() for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_module_partition_through_the_mixin_optimises_the_tied_matrix_once():
    module = CharGPTModule(width=32, depth=2, heads=2, context=16)
    partition = module.amuse_partition()
    assert _muon_names(partition) == {
        f"model.blocks.{i}.{leaf}" for i in range(2) for leaf in HIDDEN
    }
    groups = module.amuse_param_groups(partition)
    embedding = module.model.token_embedding.weight
    hits = [g["use_muon"] for g in groups for p in g["params"] if p is embedding]
    assert hits == [False]


# ----------------------------------------------------------------------------- the corpus


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_file_list_excludes_tests_and_packages_and_respects_the_cap(tmp_path):
    for i in range(40):
        _write(tmp_path, f"pkg{i % 3}/mod{i}.py", f"x = {i}\n" * 10)
    _write(tmp_path, "test/test_a.py", "skip\n")
    _write(tmp_path, "pkg0/tests/test_b.py", "skip\n")
    _write(tmp_path, "site-packages/foo/bar.py", "skip\n")
    _write(tmp_path, "notes.txt", "skip\n")
    files = stdlib_files(tmp_path, max_bytes=10**9)
    assert len(files) == 40 and all(f.startswith("pkg") for f in files)
    assert stdlib_files(tmp_path, max_bytes=10**9) == files  # same order every time
    size = len("x = 10\n" * 10)
    capped = stdlib_files(tmp_path, max_bytes=5 * size)
    assert sum((tmp_path / f).stat().st_size for f in capped) <= 5 * size
    assert 4 <= len(capped) <= 5


def test_splits_are_whole_files_chosen_by_path(tmp_path):
    for i in range(60):
        _write(tmp_path, f"m{i}.py", f"# file {i}\n")
    corpus = load_text_corpus(max_bytes=10**9, val_fraction=0.2, test_fraction=0.2, root=tmp_path)
    texts = {}
    for name, ids in corpus._asdict().items():
        chunks = bytes(ids.tolist()).split(b"\0")
        assert chunks[-1] == b""
        texts[name] = set(chunks[:-1])
    for relative in stdlib_files(tmp_path, max_bytes=10**9):
        content = (tmp_path / relative).read_bytes()
        owner = split_of(relative, 0.2, 0.2)
        assert [n for n, t in texts.items() if content in t] == [owner]
    assert all(texts.values())


def test_stdlib_corpus_is_deterministic_bytes():
    first = load_text_corpus(max_bytes=CORPUS_BYTES)
    text_data._load.cache_clear()
    second = load_text_corpus(max_bytes=CORPUS_BYTES)
    for a, b in zip(first, second, strict=True):
        assert a is not b and torch.equal(a, b)
        assert a.dtype == torch.long and int(a.min()) >= 0 and int(a.max()) < 256
    total = sum(len(ids) for ids in first)
    assert 0.9 * CORPUS_BYTES < total <= CORPUS_BYTES + 1000  # + one separator per file
    assert len(first.val) > 100_000 and len(first.test) > 100_000
    assert 2.5 < unigram_entropy(first.val, first.train) < 4.0  # text: ~4.6 bits per byte


def test_batches_are_a_function_of_seed_and_step():
    ids = torch.arange(1000) % 256
    x, y = sample_batch(ids, 4, 8, seed=3, step=7)
    x2, y2 = sample_batch(ids, 4, 8, seed=3, step=7)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next byte
    assert not torch.equal(x, sample_batch(ids, 4, 8, seed=3, step=8)[0])
    assert not torch.equal(x, sample_batch(ids, 4, 8, seed=4, step=7)[0])


def test_eval_windows_cover_every_position_once():
    ids = torch.arange(101)
    inputs, targets = eval_windows(ids, 10)
    assert inputs.shape == targets.shape == (10, 10)
    assert torch.equal(targets.flatten(), torch.arange(1, 101))
    assert torch.equal(inputs.flatten(), torch.arange(0, 100))
    few_inputs, _ = eval_windows(ids, 10, max_windows=3)
    assert few_inputs[:, 0].tolist() == [0, 40, 90]


def test_datamodule_epoch_e_batch_k_is_step_e_times_n_plus_k():
    data = TextDataModule(context=16, batch_size=4, batches_per_epoch=5, max_bytes=CORPUS_BYTES)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochSteps)
    loader.sampler.set_epoch(2)
    batches = list(loader)
    assert len(batches) == 5
    expected = sample_batch(data.corpus.train, 4, 16, seed=0, step=2 * 5 + 3)
    assert torch.equal(batches[3][0], expected[0]) and torch.equal(batches[3][1], expected[1])
    assert "Python " + ".".join(map(str, sys.version_info[:2])) in data.summary()


# ----------------------------------------------------------------------------- CLI and training


def test_config_prints_and_fast_dev_run_reports_val_and_test_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["amuse-lightning"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(CONFIG), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "amuse_lightning.examples.char_gpt.CharGPTModule" in printed
    assert "class_path: amuse_lightning.AMUSE" in printed
    small = [
        "--model.init_args.width=32", "--model.init_args.depth=1", "--model.init_args.heads=2",
        "--model.init_args.context=16", "--data.init_args.context=16",
        f"--data.init_args.max_bytes={CORPUS_BYTES}", "--data.init_args.batch_size=4",
        "--data.init_args.eval_windows=8",
    ]  # fmt: skip
    cli = run_cli(["fit", "--config", str(CONFIG), *small, "--trainer.fast_dev_run=true",
                   "--trainer.accelerator=cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert cli.trainer.global_step == 1
    assert re.search(r"^val_loss=\d+\.\d{4} val_bpb=\d+\.\d{4}$", out, flags=re.MULTILINE)
    assert re.search(r"^test_loss=\d+\.\d{4} test_bpb=\d+\.\d{4}$", out, flags=re.MULTILINE)


class BatchRecorder(pl.Callback):
    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.inputs.append(batch[0].clone())


def _tiny_fit(root: Path, ckpt_path: Path | None = None) -> tuple[CharGPTModule, BatchRecorder]:
    """2 epochs of 3 batches; checkpoints at every epoch end and after every second step."""
    pl.seed_everything(0)
    data = TextDataModule(context=16, batch_size=4, batches_per_epoch=3, eval_windows=4)
    module = CharGPTModule(width=32, depth=1, heads=2, context=16, print_summary=False)
    recorder = BatchRecorder()
    every_epoch = pl.callbacks.ModelCheckpoint(root / "ck", save_top_k=-1, filename="{epoch}")
    every_2_steps = pl.callbacks.ModelCheckpoint(
        root / "ck", save_top_k=-1, every_n_train_steps=2, filename="{step}"
    )
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, default_root_dir=root, logger=False,
        callbacks=[AmuseCallback(), recorder, every_epoch, every_2_steps],
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, recorder


@pytest.mark.parametrize(("checkpoint", "done"), [("epoch=0", 3), ("step=4", 4)])
def test_resumed_run_sees_the_same_batches_and_ends_equal(tmp_path, checkpoint, done):
    """From an epoch-end and from a mid-epoch checkpoint (step 4 = batch 1 of epoch 1)."""
    reference, seen = _tiny_fit(tmp_path / "a")
    assert len(seen.inputs) == 6 and not torch.equal(seen.inputs[0], seen.inputs[3])
    ckpt = tmp_path / "a" / "ck" / f"{checkpoint}.ckpt"
    resumed, seen_again = _tiny_fit(tmp_path / "b", ckpt_path=ckpt)
    assert len(seen_again.inputs) == 6 - done
    for a, b in zip(seen.inputs[done:], seen_again.inputs, strict=True):
        assert torch.equal(a, b)
    for (name, a), b in zip(reference.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name  # x after fit, bit for bit


#: Measured (Python 3.11.7 stdlib, torch 2.14 CPU): after 200 AMUSE steps of 32 x 64 bytes
#: this tiny model's x reaches val_loss ~2.35 nats/byte; the unigram entropy of the validation
#: text is ~3.2 nats/byte and the uniform model 5.55. The bound leaves a wide margin.
REAL_RUN_BOUND = 2.7


def test_short_real_run_beats_the_unigram_model(tmp_path):
    pl.seed_everything(0)
    data = TextDataModule(
        context=64, batch_size=32, batches_per_epoch=200, eval_windows=64, max_bytes=CORPUS_BYTES
    )
    module = CharGPTModule(width=64, depth=2, heads=2, context=64, print_summary=False)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, callbacks=[AmuseCallback()],
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, data)
    val_loss = float(trainer.callback_metrics["val_loss"])
    unigram = unigram_entropy(data.corpus.val, data.corpus.train)
    print(f"val_loss of x {val_loss:.4f}, unigram {unigram:.4f}")
    assert val_loss < REAL_RUN_BOUND < unigram - 0.4, (val_loss, unigram)
    assert float(trainer.callback_metrics["val_bpb"]) == pytest.approx(val_loss / math.log(2))
