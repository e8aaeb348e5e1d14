"""Newton-Schulz work split under FSDP2 (``fully_shard``, DTensor row shards), 2 CPU processes.

* torch ``fully_shard`` by hand (``mp.spawn``, gloo): y and x equal a single-process run with
  whole-matrix Newton-Schulz, the state is sharded like the parameter, each rank computes its
  share, the partition ignores sharding, other layouts are refused;
* the same under Lightning's ``ModelParallelStrategy`` (``tests/fsdp2_lightning_run.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from amuse_lightning import AMUSE, partition_parameters
from amuse_lightning.optim.distributed import assign_matrices
from tests.distributed_exit import finish_worker
from tests.helpers.nets import (
    STEPS,
    WORLD,
    make_optimizer,
    make_uneven_model,
    matrix_shapes,
    run_steps,
)
from tests.helpers.sharded import single_process_reference
from tests.helpers.spawn import spawn_ranks

FSDP_CONFIGS = {"muon": dict(direction="muon"), "adamuon": dict(direction="adamuon")}


def _fsdp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        results = {}
        for name in FSDP_CONFIGS:
            model = make_uneven_model()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            opt = make_optimizer(model, **FSDP_CONFIGS[name])
            history = run_steps(model, opt, rank, world)
            z = opt.state[opt.param_groups[0]["params"][1]]["z"]
            (split,) = opt.rank_splits()  # the one mesh's split
            opt.eval()
            results[name] = {
                "y": [[p.full_tensor() for p in step] for step in history],
                "x": [p.full_tensor() for g in opt.param_groups for p in g["params"]],
                "z_local_rows": z.to_local().shape[0],
                "z_is_dtensor": type(z).__name__ == "DTensor",
                "local_matrices": split.local_matrices,
            }
        results["column_sharded_error"] = _column_sharded_error(mesh)
        model = make_uneven_model()
        results["partition_before"] = partition_parameters(model).by_name()
        fully_shard(model, mesh=mesh)
        results["partition_after"] = partition_parameters(model).by_name()
        torch.save(results, Path(out_dir) / f"fsdp_rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    finish_worker()


def _column_sharded_error(mesh) -> str:
    """A tensor-parallel style layout (columns sharded) must be refused with a message."""
    from torch.distributed.tensor import Shard, distribute_tensor

    weight = nn.Parameter(distribute_tensor(torch.randn(4, 4), mesh, [Shard(1)]))
    try:
        AMUSE([{"params": [weight], "use_muon": True}])
    except NotImplementedError as error:
        return str(error)
    return ""


@pytest.fixture(scope="module")
def fsdp_results() -> dict:
    return spawn_ranks(_fsdp_worker, WORLD, "fsdp_rank{rank}.pt")


@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("name", list(FSDP_CONFIGS))
def test_fsdp2_equals_one_process_with_whole_matrix_newton_schulz(fsdp_results, name) -> None:
    model = make_uneven_model()
    opt = make_optimizer(model, **FSDP_CONFIGS[name])
    single = run_steps(model, opt, rank=0, world=1)
    opt.eval()
    single_x = [p.detach() for g in opt.param_groups for p in g["params"]]
    for rank in range(WORLD):
        got = fsdp_results[rank][name]
        for step in range(STEPS):
            for a, b in zip(got["y"][step], single[step], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
        for a, b in zip(got["x"], single_x, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    # state is sharded like the parameter: the 15-row matrix has 8 rows on rank 0, 7 on rank 1
    assert [fsdp_results[r][name]["z_local_rows"] for r in range(WORLD)] == [8, 7]
    assert all(fsdp_results[r][name]["z_is_dtensor"] for r in range(WORLD))
    shapes = matrix_shapes(make_uneven_model())
    owners = assign_matrices(shapes, WORLD)
    for rank in range(WORLD):
        assert fsdp_results[rank][name]["local_matrices"] == owners.count(rank) * STEPS


@pytest.mark.xdist_group("multiprocess")
def test_sharding_does_not_change_the_partition(fsdp_results) -> None:
    for rank in range(WORLD):
        before = fsdp_results[rank]["partition_before"]
        assert before == fsdp_results[rank]["partition_after"]
        assert any(v["use_muon"] for v in before.values())
        assert any(not v["use_muon"] for v in before.values())


@pytest.mark.xdist_group("multiprocess")
def test_layouts_other_than_fsdp2_rows_fail_at_construction(fsdp_results) -> None:
    for rank in range(WORLD):
        message = fsdp_results[rank]["column_sharded_error"]
        assert "Shard(dim=1)" in message and "DDP" in message and "fully_shard" in message


@pytest.mark.xdist_group("multiprocess")
def test_lightning_model_parallel_strategy_with_fully_shard_equals_one_process(tmp_path) -> None:
    """ModelParallelStrategy with fully_shard in configure_model, on CPU; no AMUSE-specific code."""
    script = Path(__file__).with_name("fsdp2_lightning_run.py")
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    _, ys, _ = single_process_reference()
    for a, b, c in zip(ranks[0], ranks[1], ys[-1], strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=2e-6)
