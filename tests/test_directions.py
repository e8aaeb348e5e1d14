"""Each direction against a small dense SVD-based reference (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from amuse_lightning import AMUSE
from amuse_lightning.optim.directions import (
    DIRECTIONS,
    FALLBACKS,
    adam_update,
    buffer_names,
    compute_direction,
    direction_of,
    map_matrices,
    muon_scale,
    muon_update,
)
from amuse_lightning.optim.kernels import Workspace

GROUP = dict(
    momentum=0.9, nesterov=False, ns_steps=5, ns_dtype="float64", aux_update_type="adamw",
    eps=1e-12, beta2=0.99, use_muon=True, direction="muon", spectral_power=0.0,
    spectral_input="momentum", update_type="adamw", ns_coefficients="quintic",
)  # fmt: skip


def compute(grads: list, states: list[dict], group: dict, step: int) -> list[torch.Tensor]:
    """``compute_direction`` with the buffers kept in one dict per tensor, created as zeros."""
    names = buffer_names(group)
    for state, g in zip(states, grads, strict=True):
        for name in names:
            state.setdefault(name, torch.zeros_like(g))
    return compute_direction(grads, [[s[n] for s in states] for n in names], group, step)


def well_conditioned(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A random matrix with singular values spread over [1, 3]."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    s = torch.linspace(1.0, 3.0, k, dtype=torch.float64)
    return U @ torch.diag(s) @ V.T


def svd_power(M: torch.Tensor, p: float) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    return U @ torch.diag(s**p) @ Vh


def spectrum_in_reference_basis(O: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``U^T O V`` for M = U S V^T: diagonal when O shares M's singular vectors."""
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return U.T @ O @ Vh.T


@pytest.mark.parametrize(("rows", "cols"), [(6, 10), (10, 6), (8, 8)])
def test_muon_is_orthogonalised_momentum_with_the_declared_scale(rows: int, cols: int) -> None:
    g = well_conditioned(rows, cols, 0)
    state: dict = {}
    (update,) = compute([g], [state], {**GROUP}, 1)
    # first step with EMA momentum: m = (1 - mu) g, same singular vectors as g
    core = spectrum_in_reference_basis(update / muon_scale(rows, cols, "adamw"), g)
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 1e-8
    assert torch.all((torch.diagonal(core) > 0.6) & (torch.diagonal(core) < 1.25))
    assert muon_scale(rows, cols, "adamw") == pytest.approx(0.2 * math.sqrt(max(rows, cols)))
    assert muon_scale(rows, cols, "sgd") == pytest.approx(math.sqrt(max(1.0, rows / cols)))
    torch.testing.assert_close(state["momentum_buffer"], 0.1 * g)


def test_conv_kernels_are_flattened_to_out_by_fan_in() -> None:
    kernel = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    seen = []

    def record(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        return batch * 2

    (out,) = map_matrices([kernel], record)
    assert seen == [(1, 4, 18)]
    assert torch.equal(out, kernel * 2)


def test_same_shape_matrices_share_one_batched_call() -> None:
    tensors = [torch.randn(5, 7) for _ in range(3)] + [torch.randn(7, 5)]
    shapes = []
    out = map_matrices(tensors, lambda b: shapes.append(tuple(b.shape)) or 2 * b, None, True)
    assert sorted(shapes) == [(1, 7, 5), (3, 5, 7)]
    assert all(torch.equal(o, 2 * t) for o, t in zip(out, tensors, strict=True))


def test_cpu_default_runs_each_matrix_on_its_own() -> None:
    tensors = [torch.randn(5, 7) for _ in range(3)]
    shapes = []
    out = map_matrices(tensors, lambda b: shapes.append(tuple(b.shape)) or 2 * b)
    assert shapes == [(1, 5, 7)] * 3
    assert all(torch.equal(o, 2 * t) for o, t in zip(out, tensors, strict=True))


def test_adamuon_signs_then_normalises_to_rms_point_two() -> None:
    g = well_conditioned(6, 9, 1)
    group = {**GROUP, "direction": "adamuon"}
    state: dict = {}
    (u1,) = compute([g], [state], group, 1)
    rms = u1.pow(2).mean().sqrt()
    assert rms.item() == pytest.approx(0.2, rel=1e-10)
    # the sign removes the gradient scale: a 1000x gradient gives the same first update
    (u_big,) = compute([1000 * g], [{}], group, 1)
    torch.testing.assert_close(u_big, u1, rtol=1e-10, atol=1e-12)
    # reference: O = polar(sign(m)) via the same NS, V = (1 - mu) O^2, U = rescaled O / sqrt(V)
    from amuse_lightning.optim.polar import newton_schulz

    O = newton_schulz(torch.sign(0.1 * g), 5, torch.float64)
    V = 0.1 * O * O
    O_hat = O / (V.sqrt() + 1e-12)
    expected = 0.2 * math.sqrt(O.numel()) / O_hat.norm() * O_hat
    torch.testing.assert_close(u1, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state["exp_avg_sq"], V, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("power", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("spectral_input", ["momentum", "rms"])
def test_spectral_power_matches_svd(power: float, spectral_input: str) -> None:
    g = well_conditioned(7, 11, 2)
    group = {**GROUP, "direction": "spectral", "spectral_power": power}
    group["spectral_input"] = spectral_input
    (update,) = compute([g], [{}], group, 1)
    if spectral_input == "momentum":
        O = 0.1 * g  # EMA momentum after one step
    else:
        O = g / (g.abs() + 1e-12)  # bias-corrected m_hat / sqrt(v_hat) at step 1 = sign(g)
    expected = svd_power(O, power)
    rel = (update - expected).norm() / expected.norm()
    assert rel < 2e-3, f"relative error {rel:.2e}"


def test_spectral_power_zero_is_unscaled_muon() -> None:
    g = well_conditioned(6, 6, 3)
    (spectral,) = compute([g], [{}], {**GROUP, "direction": "spectral", "spectral_power": 0.0}, 1)
    (muon,) = compute([g], [{}], {**GROUP}, 1)
    torch.testing.assert_close(spectral * muon_scale(6, 6, "adamw"), muon)


def test_adam_fallback_is_bias_corrected_rms_normalisation() -> None:
    g = torch.randn(10, dtype=torch.float64)
    group = {**GROUP, "use_muon": False}
    state: dict = {}
    (u,) = compute([g], [state], group, 1)
    torch.testing.assert_close(u, g / (g.abs() + 1e-12))
    (u2,) = compute([g], [state], group, 2)
    v = 0.99 * 0.01 * g * g + 0.01 * g * g
    torch.testing.assert_close(u2, g / ((v / (1 - 0.99**2)).sqrt() + 1e-12))
    (sgd,) = compute([g], [{}], {**group, "update_type": "sgd"}, 1)
    assert sgd is g


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (4, 2, 3, 3), (12, 2, 1, 1)])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("ns", ["float64", "bfloat16"])
def test_single_tensor_muon_equals_the_list_form(shape: tuple, nesterov: bool, ns: str) -> None:
    dtype = torch.float64 if ns == "float64" else torch.float32
    g = torch.randn(shape, dtype=dtype)
    group = {**GROUP, "nesterov": nesterov, "ns_dtype": ns}
    m0 = torch.randn(shape, dtype=dtype)
    m_list, m_single = m0.clone(), m0.clone()
    (expected,) = compute_direction([g], [[m_list]], group, 1)
    workspace = Workspace()
    for _ in range(2):  # the second call reuses the workspace: same numbers
        m_single.copy_(m0)
        ortho, scale = muon_update(g, m_single, group, workspace)
        assert ortho.shape == g.shape and ortho.dtype == g.dtype
        torch.testing.assert_close(ortho * scale, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(m_single, m_list)


def test_single_tensor_adam_equals_the_list_form_and_reuses_its_workspace() -> None:
    g = torch.randn(7, 3)
    v_list, v_single = torch.rand(7, 3), None
    v_single = v_list.clone()
    group = {**GROUP, "use_muon": False}
    (expected,) = compute_direction([g], [[v_list]], group, 3)
    workspace = Workspace()
    u = adam_update(g, v_single, group, 3, workspace)
    assert torch.equal(u, expected) and torch.equal(v_single, v_list)
    before = workspace.nbytes()
    adam_update(g, v_single, group, 4, workspace)
    assert workspace.nbytes() == before == g.numel() * g.element_size()


TABLE = [(True, name) for name in DIRECTIONS] + [(False, name) for name in FALLBACKS]


@pytest.mark.parametrize(("use_muon", "name"), TABLE, ids=[name for _, name in TABLE])
def test_the_direction_table_names_the_state_and_its_forms_agree(use_muon: bool, name: str) -> None:
    """One entry per direction: the optimizer creates exactly its buffers, and its workspace form
    (the per-parameter and batched paths) computes the list form's update."""
    key = "direction" if use_muon else "update_type"
    group = {**GROUP, "use_muon": use_muon, key: name, "spectral_input": "rms"}
    spec = direction_of(group)
    assert spec is (DIRECTIONS if use_muon else FALLBACKS)[name]
    assert buffer_names(group) == spec.buffers(group)
    params = [torch.nn.Parameter(torch.randn(6, 10, dtype=torch.float64)) for _ in range(3)]
    opt = AMUSE([{"params": params, **group}], warmup_steps=2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert all(set(opt.state[p]) == {"z", "beta", *spec.buffers(group)} for p in params)
    if spec.in_workspace is None:
        return
    grads = [torch.randn(6, 10, dtype=torch.float64) for _ in range(3)]
    states = [
        {n: torch.rand(6, 10, dtype=torch.float64) for n in spec.buffers(group)} for _ in grads
    ]
    lists = [[s[n].clone() for s in states] for n in spec.buffers(group)]
    expected = spec.over_list(grads, lists, group, 3, map_matrices)
    own = [[s[n] for s in states] for n in spec.buffers(group)]
    updates, scale = spec.in_workspace(grads, own, group, 3, Workspace())
    for got, want in zip(updates, expected, strict=True):
        torch.testing.assert_close(got * scale, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(own, lists, strict=True):  # the same state afterwards
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
