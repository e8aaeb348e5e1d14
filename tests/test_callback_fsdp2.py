"""AmuseCallback under FSDP2 (Lightning's ModelParallelStrategy + fully_shard), 2 CPU processes.

For both checkpoint layouts (sharded distributed checkpoint, whole tensors on rank 0):
validation sees x equal to a single-process run's x, training sees y, a checkpoint saved while
the module holds y leaves y bit for bit unchanged, and every checkpoint's weights are x.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.sharded import MID_STEP, STEPS, single_process_reference

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]
WORLD = 2


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The whole weights and the metadata of a checkpoint file or a sharded checkpoint folder."""
    if not path.is_dir():
        checkpoint = torch.load(path, weights_only=False)
        return checkpoint["state_dict"], checkpoint
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, path.with_suffix(".pt"))
    weights = torch.load(path.with_suffix(".pt"), weights_only=False)["state_dict"]
    return weights, torch.load(path / "meta.pt", weights_only=False)


def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=2e-6)


@pytest.fixture(scope="module", params=["sharded", "whole"])
def fsdp2_run(request, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp(request.param)
    script = Path(__file__).with_name("fsdp2_callback_run.py")
    run = subprocess.run(
        [sys.executable, str(script), str(out), request.param],
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_reference_x_and_y_differ() -> None:
    """Guards the tests below: seeing x is distinguishable from seeing y."""
    _, ys, xs = single_process_reference()
    assert max((y - x).abs().max().item() for y, x in zip(ys[-1], xs[-1], strict=True)) > 1e-3


def test_validation_sees_x_of_the_single_process_run(fsdp2_run) -> None:
    _, ys, xs = single_process_reference()
    for seen in fsdp2_run[1]:
        assert [step for step, _ in seen["val"]] == list(range(1, STEPS + 1))
        for step, weights in seen["val"]:
            close(weights, xs[step - 1])
        assert seen["train_modes"] == [{True}] * STEPS
        close(seen["y_at_mid_save"], ys[MID_STEP - 1])
        close(seen["after_fit"], xs[-1])


def test_saving_leaves_the_weights_bit_for_bit(fsdp2_run) -> None:
    for seen in fsdp2_run[1]:
        for before, after in [
            ("y_at_mid_save", "y_after_mid_save"),
            ("after_fit", "after_end_save"),
        ]:
            assert all(torch.equal(a, b) for a, b in zip(seen[before], seen[after], strict=True))


@pytest.mark.parametrize(("name", "step"), [("mid.ckpt", MID_STEP), ("end.ckpt", STEPS)])
def test_checkpoints_hold_x(fsdp2_run, name, step) -> None:
    names, _, xs = single_process_reference()
    weights, metadata = load_checkpoint(fsdp2_run[0] / name)
    close([weights[n] for n in names], xs[step - 1])
    # y's shards cannot travel in rank 0's metadata: a resume recomputes y from x and z
    assert metadata["amuse"]["y"] is None
