"""Splitting the Newton-Schulz work across data-parallel ranks.

* the assignment: every matrix exactly once, cost-balanced, deterministic;
* 2 processes (gloo, CPU) under torch DDP: identical parameters on both ranks after every step,
  agreement with a single-process run on the same global batch, each rank computing its share;
* the same through Lightning's ``strategy="ddp_spawn"`` with no user code.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import amuse_lightning.optim.matrices as matrices
from amuse_lightning import AMUSE
from amuse_lightning.optim.directions import map_matrices
from amuse_lightning.optim.distributed import (
    RankSplit,
    assign_matrices,
    matrix_cost,
    plan_exchange,
)
from amuse_lightning.optim.polar import newton_schulz
from tests.distributed_exit import finish_worker
from tests.helpers.nets import (
    STEPS,
    WORLD,
    make_model,
    make_optimizer,
    matrix_shapes,
    run_steps,
)
from tests.helpers.spawn import spawn_ranks

CONFIGS = {
    "muon": dict(direction="muon"),
    "muon_plain": dict(direction="muon", averaging=False),
    "adamuon": dict(direction="adamuon"),
    "spectral_half": dict(direction="spectral", spectral_power=0.5),
}

VIT_S_BLOCK = [(1152, 384), (384, 384), (1536, 384), (384, 1536)]

# ----------------------------------------------------------------------------- assignment

shape_lists = st.lists(
    st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=0, max_size=40
).map(tuple)


def rank_loads(shapes, owners, world: int) -> list[int]:
    loads = [0] * world
    for shape, rank in zip(shapes, owners, strict=True):
        loads[rank] += matrix_cost(shape)
    return loads


@settings(max_examples=150, deadline=None)
@given(shapes=shape_lists, world=st.integers(1, 5))
def test_every_matrix_is_assigned_exactly_once_and_loads_are_balanced(shapes, world) -> None:
    owners = assign_matrices(shapes, world)
    assert len(owners) == len(shapes)
    assert all(0 <= r < world for r in owners)
    costs = [matrix_cost(s) for s in shapes]
    if shapes:  # list-scheduling bound: no rank carries more than its fair share plus one matrix
        assert max(rank_loads(shapes, owners, world)) <= sum(costs) / world + max(costs)

    plan = plan_exchange(shapes, world)
    listed = sorted(i for rank_batches in plan.batches for batch in rank_batches for i in batch)
    assert listed == list(range(len(shapes)))  # exactly once
    for rank, rank_batches in enumerate(plan.batches):
        spans = []
        for batch in rank_batches:
            assert len({shapes[i] for i in batch}) == 1  # a batch is one shape
            assert all(owners[i] == rank for i in batch)
            spans += [(plan.offsets[i], plan.offsets[i] + math.prod(shapes[i])) for i in batch]
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlap
        assert all(end <= plan.slot_numel for _, end in spans)
        assert len({shapes[i] for batch in rank_batches for i in batch}) == len(rank_batches)


@settings(max_examples=100, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=7),
    world=st.integers(2, 3),
)
def test_largest_load_is_within_four_thirds_of_the_best_split(shapes, world) -> None:
    shapes = tuple(shapes)
    best = min(
        max(rank_loads(shapes, owners, world))
        for owners in itertools.product(range(world), repeat=len(shapes))
    )
    largest = max(rank_loads(shapes, assign_matrices(shapes, world), world))
    assert largest <= (4 / 3 - 1 / (3 * world)) * best + 1e-9


def test_assignment_is_deterministic_and_independent_of_the_cache() -> None:
    shapes = tuple(s for _ in range(12) for s in VIT_S_BLOCK)
    first = assign_matrices(shapes, 2)
    assign_matrices.cache_clear()
    assert assign_matrices(shapes, 2) == first


def test_vit_stack_splits_evenly_over_two_ranks() -> None:
    shapes = tuple(s for _ in range(12) for s in VIT_S_BLOCK)
    owners = assign_matrices(shapes, 2)
    for shape in VIT_S_BLOCK:
        mine = [owners[i] for i, s in enumerate(shapes) if s == shape]
        assert mine.count(0) == mine.count(1) == 6  # each rank batches 6 of every shape
    loads = [
        sum(matrix_cost(s) for s, r in zip(shapes, owners, strict=True) if r == k) for k in (0, 1)
    ]
    assert loads[0] == loads[1]


def test_cost_counts_conv_kernels_by_fan_in() -> None:
    assert matrix_cost((8, 4, 3, 3)) == 8 * 36 * 8
    assert matrix_cost((100, 10)) == 100 * 10 * 10


def test_rank_split_needs_an_initialised_process_group() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        RankSplit()
    opt = AMUSE([{"params": [nn.Parameter(torch.randn(3, 3))], "use_muon": True}], distributed=True)
    opt.param_groups[0]["params"][0].grad = torch.randn(3, 3)
    with pytest.raises(RuntimeError, match="distributed=True"):
        opt.step()
    with pytest.raises(ValueError, match="distributed must be"):
        AMUSE([nn.Parameter(torch.randn(3, 3))], distributed="yes")


# ----------------------------------------------------------------------- 2 processes, torch DDP


def count_newton_schulz() -> list[int]:
    """Patch the Newton-Schulz used by the directions; the list collects each call's batch size."""
    counted: list[int] = []
    original = matrices.newton_schulz

    def counting(G: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        counted.append(G.shape[0])
        return original(G, *args, **kwargs)

    matrices.newton_schulz = counting
    return counted


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        counted = count_newton_schulz()
        for name, kwargs in CONFIGS.items():
            counted.clear()
            model = make_model()
            ddp = nn.parallel.DistributedDataParallel(model)
            opt = make_optimizer(model, **kwargs)  # distributed=None: auto
            history = run_steps(ddp, opt, rank, world)
            results[name] = {
                "history": history,
                "ns_matrices": sum(counted),
                "local_matrices": opt.rank_splits()[0].local_matrices,
            }
        results["mismatch_error"] = _mismatch_error(rank)
        results["exchange_exact"] = _exchange_is_exact()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    finish_worker()


def _exchange_is_exact() -> bool:
    """Same inputs on every rank: the split equals map_matrices bit for bit, bf16 wire included."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(8, 5), (5, 8), (8, 5), (6, 2, 3, 3), (4, 4), (8, 5)]
    tensors = [torch.randn(shape, generator=gen) for shape in shapes]
    split = RankSplit()
    exact = True
    for ns_dtype, wire in [(torch.bfloat16, torch.bfloat16), (torch.float32, None)]:
        fn = lambda b, d=ns_dtype: newton_schulz(b, 5, d)  # noqa: E731
        for a, b in zip(split(tensors, fn, wire), map_matrices(tensors, fn), strict=True):
            exact = exact and a.shape == b.shape and torch.equal(a, b)
    return exact and split.local_matrices < 2 * len(shapes)


def _mismatch_error(rank: int) -> str:
    """Ranks that pass different matrices must fail with a message, not hang."""
    split = RankSplit()
    shape = (4, 4) if rank == 0 else (4, 5)
    try:
        split([torch.randn(shape)], lambda b: b)
    except RuntimeError as error:
        return str(error)
    return ""


@pytest.fixture(scope="module")
def ddp_results() -> dict:
    return spawn_ranks(_ddp_worker, WORLD)


@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ranks_hold_identical_parameters_after_every_step(ddp_results, name) -> None:
    for step in range(STEPS):
        for a, b in zip(
            ddp_results[0][name]["history"][step],
            ddp_results[1][name]["history"][step],
            strict=True,
        ):
            assert torch.equal(a, b)


@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_agree_with_one_process_on_the_global_batch(ddp_results, name) -> None:
    model = make_model()
    opt = make_optimizer(model, **CONFIGS[name])
    single = run_steps(model, opt, rank=0, world=1)
    for step in range(STEPS):
        for a, b in zip(ddp_results[0][name]["history"][step], single[step], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    start = [p for g in make_optimizer(make_model()).param_groups for p in g["params"]]
    assert not any(torch.allclose(a, b) for a, b in zip(single[-1], start, strict=True))


@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_rank_computes_only_its_share(ddp_results, name) -> None:
    model = make_model()
    shapes = matrix_shapes(model)
    owners = assign_matrices(shapes, WORLD)
    for rank in range(WORLD):
        share = owners.count(rank)
        assert 0 < share < len(shapes)
        assert ddp_results[rank][name]["local_matrices"] == share * STEPS
        uses_ns = name != "spectral_half"
        assert ddp_results[rank][name]["ns_matrices"] == (share * STEPS if uses_ns else 0)


@pytest.mark.xdist_group("multiprocess")
def test_split_exchange_is_exact_and_bf16_results_travel_losslessly(ddp_results) -> None:
    assert all(ddp_results[rank]["exchange_exact"] for rank in range(WORLD))


@pytest.mark.xdist_group("multiprocess")
def test_ranks_with_different_matrices_fail_with_a_message(ddp_results) -> None:
    for rank in range(WORLD):
        assert "every rank must step the same parameters" in ddp_results[rank]["mismatch_error"]


# ------------------------------------------------------------ Lightning strategy="ddp_spawn"

LIGHTNING_STEPS = 4
PER_DEVICE_BATCH = 4


class SplitNet(LightningModule):
    """A plain LightningModule returning AMUSE; nothing in it knows about DDP."""

    def __init__(self, out_dir: str = "") -> None:
        super().__init__()
        self.out_dir = out_dir
        self.net = make_model()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> AMUSE:
        return make_optimizer(self.net)

    def train_dataloader(self) -> DataLoader:
        """Unshuffled, so that rank r's batch i and rank 1-r's batch i make global batch i."""
        gen = torch.Generator().manual_seed(7)
        n = LIGHTNING_STEPS * PER_DEVICE_BATCH * WORLD
        data = TensorDataset(torch.randn(n, 6, generator=gen), torch.randn(n, 4, generator=gen))
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=PER_DEVICE_BATCH * WORLD // world, sampler=sampler)

    def on_train_end(self) -> None:
        if not self.out_dir:
            return
        splits = self.optimizers().optimizer.rank_splits()
        record = {
            "params": [p.detach().clone() for p in self.net.parameters()],
            "local_matrices": splits[0].local_matrices if splits else None,
            "world_size": self.trainer.world_size,
        }
        torch.save(record, Path(self.out_dir) / f"lightning_rank{self.global_rank}.pt")


def lightning_fit(out_dir: str, devices: int, **kwargs) -> SplitNet:
    model = SplitNet(out_dir)
    trainer = Trainer(
        accelerator="cpu", devices=devices, max_steps=LIGHTNING_STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, use_distributed_sampler=False, **kwargs,
    )  # fmt: skip
    trainer.fit(model)
    return model


@pytest.mark.xdist_group("multiprocess")
def test_lightning_ddp_splits_the_work_and_matches_one_process(tmp_path) -> None:
    lightning_fit(str(tmp_path), devices=WORLD, strategy="ddp_spawn")
    ranks = [torch.load(tmp_path / f"lightning_rank{r}.pt") for r in range(WORLD)]
    single = lightning_fit("", devices=1).net.parameters()
    for a, b, c in zip(ranks[0]["params"], ranks[1]["params"], single, strict=True):
        assert torch.equal(a, b)  # identical on every rank
        torch.testing.assert_close(a, c.detach(), rtol=1e-5, atol=2e-6)  # = global batch
    shapes = matrix_shapes(make_model())
    owners = assign_matrices(shapes, WORLD)
    for rank, record in enumerate(ranks):
        assert record["world_size"] == WORLD
        assert record["local_matrices"] == owners.count(rank) * LIGHTNING_STEPS
