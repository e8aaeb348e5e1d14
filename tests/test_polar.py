"""Tests for amuse_lightning.optim.polar, Newton-Schulz: the quintic on each singular value, its
bands (``tests/helpers/matrices.py``), the in-place and batched forms, the coefficient presets
(Polar Express) and the matrix view of parameters. References come from torch.linalg.svd in fp64.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amuse_lightning.optim.polar import (
    NS_COEFFICIENTS,
    as_matrix,
    newton_schulz,
    ns_schedule,
    spectral_power,
)
from tests.helpers.matrices import (
    FIVE_STEP_BAND,
    INVARIANT_BAND,
    X_MIN_FOR_BAND,
    random_matrix,
    rel_err,
    singular_values,
)

SPEC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic, docs/algorithm.md#muon


def quintic(x: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = SPEC_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


SHAPES = [(24, 24), (16, 40), (40, 16), (3, 12, 20), (2, 3, 20, 12)]


# ----------------------------------------------------------------------------- newton_schulz


def test_ns_coefficients_are_the_spec_quintic():
    assert NS_COEFFICIENTS == SPEC_COEFFICIENTS


@pytest.mark.parametrize("shape", SHAPES)
def test_ns_fp64_applies_the_quintic_to_each_singular_value(shape):
    G = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    U, s, Vh = torch.linalg.svd(G, full_matrices=False)
    x = s / (torch.linalg.matrix_norm(G).unsqueeze(-1) + 1e-7)
    expected = (U * quintic(x, 5).unsqueeze(-2)) @ Vh
    out = newton_schulz(G, dtype=torch.float64)
    assert out.shape == G.shape
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("m, n", [(48, 192), (192, 48), (48, 48)])
def test_ns_five_steps_puts_singular_values_in_band(m, n):
    # Rectangular Gaussians are well-conditioned; square ones are not, so control kappa there.
    gen = torch.Generator().manual_seed(2)
    if m == n:
        G = random_matrix(3, m, n, kappa=50.0, seed=2)
    else:
        G = torch.randn(3, m, n, dtype=torch.float64, generator=gen)
    x = singular_values(G) / torch.linalg.matrix_norm(G).unsqueeze(-1)
    assert x.min() >= X_MIN_FOR_BAND  # precondition of the band
    s_out = singular_values(newton_schulz(G, dtype=torch.float64))
    assert FIVE_STEP_BAND[0] <= s_out.min() and s_out.max() <= FIVE_STEP_BAND[1]


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 32),
    n=st.integers(1, 32),
    batch=st.integers(1, 3),
    kappa=st.floats(1.0, 100.0),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_ns_singular_values_in_band_property(m, n, batch, kappa, seed, dtype):
    # x_min >= 1 / (kappa * sqrt(min(m, n))) >= 1 / (100 * sqrt(32)) = 1.77e-3 >= X_MIN_FOR_BAND
    G = random_matrix(batch, m, n, kappa=kappa, dtype=dtype, seed=seed)
    s_out = singular_values(newton_schulz(G, dtype=dtype))
    assert FIVE_STEP_BAND[0] - 1e-4 <= s_out.min()
    assert s_out.max() <= FIVE_STEP_BAND[1] + 1e-4


@pytest.mark.parametrize("shape", [(20, 50), (50, 20), (3, 30, 30)])
def test_ns_many_steps_keeps_the_polar_factor_but_not_unit_singular_values(shape):
    # The quintic's fixed point near 0.87 is repelling: iterates stay in the invariant band rather
    # than converging to 1, so "close to U V^T" means: same singular vectors, values in the band.
    G = random_matrix(*shape, kappa=20.0, seed=3)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    out = newton_schulz(G, steps=40, dtype=torch.float64)
    s_out = singular_values(out)
    assert INVARIANT_BAND[0] <= s_out.min() and s_out.max() <= INVARIANT_BAND[1]
    Uo, _, Vho = torch.linalg.svd(out, full_matrices=False)
    torch.testing.assert_close(Uo @ Vho, polar, atol=1e-8, rtol=0)
    spectral_gap = torch.linalg.matrix_norm(out - polar, ord=2)
    assert spectral_gap.max() <= 1 - INVARIANT_BAND[0]


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_ns_batched_equals_per_matrix(dtype, atol):
    G = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    batched = newton_schulz(G, dtype=dtype)
    looped = torch.stack(
        [torch.stack([newton_schulz(G[i, j], dtype=dtype) for j in range(3)]) for i in range(2)]
    )
    torch.testing.assert_close(batched, looped, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "in_dtype, ns_dtype",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("shape", [(30, 10), (10, 30)])
def test_ns_does_not_modify_input(in_dtype, ns_dtype, shape):
    G = torch.randn(*shape, dtype=in_dtype)
    before = G.clone()
    newton_schulz(G, dtype=ns_dtype)
    assert torch.equal(G, before)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])
def test_ns_returns_input_dtype(in_dtype, ns_dtype):
    G = torch.randn(3, 8, 12).to(in_dtype)
    assert newton_schulz(G, dtype=ns_dtype).dtype == in_dtype


def test_ns_bf16_path_tracks_fp64():
    G = torch.randn(4, 64, 160, dtype=torch.float32)
    ref = newton_schulz(G.double(), dtype=torch.float64)
    out = newton_schulz(G)  # bf16 default
    assert rel_err(out, ref) < 3e-2
    s_out = singular_values(out)
    assert s_out.min() >= 0.5 and s_out.max() <= 1.3


def test_ns_zero_matrix_stays_zero():
    out = newton_schulz(torch.zeros(2, 5, 7), dtype=torch.float32)
    assert torch.equal(out, torch.zeros(2, 5, 7))


def test_ns_empty_stack_keeps_its_shape():
    assert newton_schulz(torch.zeros(0, 4, 5)).shape == (0, 4, 5)
    assert spectral_power(torch.zeros(2, 0, 3, 6), 0.5).shape == (2, 0, 3, 6)


def test_ns_rejects_vectors():
    with pytest.raises(ValueError, match="at least 2 dims"):
        newton_schulz(torch.randn(5))


# --------------------------------------------------------------------------------- as_matrix


@pytest.mark.parametrize(
    "shape, expected",
    [((8, 3, 3, 3), (8, 27)), ((5, 7), (5, 7)), ((4, 2, 3), (4, 6)), ((2, 1, 1, 1), (2, 1))],
)
def test_as_matrix_shapes_and_view(shape, expected):
    t = torch.randn(*shape)
    M = as_matrix(t)
    assert M.shape == expected
    assert M.data_ptr() == t.data_ptr()
    M.mul_(0.0)  # a view: writes land in the parameter
    assert torch.count_nonzero(t) == 0


def test_as_matrix_returns_matrices_unchanged():
    t = torch.randn(3, 4)
    assert as_matrix(t) is t


@pytest.mark.parametrize("shape", [(5,), ()])
def test_as_matrix_rejects_vectors_and_scalars(shape):
    with pytest.raises(ValueError, match="fallback"):
        as_matrix(torch.randn(shape))


def test_ns_out_dtype_skips_the_cast_back():
    G = torch.randn(2, 6, 9)
    kept = newton_schulz(G, dtype=torch.bfloat16, out_dtype=torch.bfloat16)
    assert kept.dtype == torch.bfloat16
    assert torch.equal(kept.float(), newton_schulz(G, dtype=torch.bfloat16))


# ----------------------------------------------------------------------------- coefficient presets


def test_ns_schedule_presets() -> None:
    quintic_steps, quintic_factor = ns_schedule("quintic", 4)
    assert quintic_steps == (NS_COEFFICIENTS,) * 4 and quintic_factor == 1.0
    steps, factor = ns_schedule("polar_express", 10)
    assert factor == 1.01 and len(steps) == 10
    a, b, c = steps[0]  # the first optimal quintic, evaluated at x / 1.01
    assert (a * 1.01, b * 1.01**3, c * 1.01**5) == pytest.approx(
        (8.28721201814563, -23.595886519098837, 17.300387312530933), rel=1e-12
    )
    assert steps[7:] == ((1.875, -1.25, 0.375),) * 3  # the converged polynomial, unscaled
    assert ns_schedule("polar_express", 3)[0] == steps[:3]
    with pytest.raises(ValueError, match="ns_coefficients must be one of"):
        ns_schedule("cubic", 5)


def polar_errors(G: torch.Tensor, steps: int, dtype: torch.dtype, name: str) -> tuple:
    """``max_i |s_i - 1|`` of the result and its relative distance to the SVD polar factor."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    polar = U @ Vh
    X = newton_schulz(G, steps, dtype, coefficients=name).double()
    return (singular_values(X) - 1).abs().max().item(), rel_err(X, polar)


def gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("steps", [5, 8])
@pytest.mark.parametrize("kappa", [None, 1e2, 1e3], ids=["gaussian", "kappa1e2", "kappa1e3"])
def test_polar_express_singular_values_are_closer_to_one_than_the_quintic(kappa, steps, dtype):
    G = gaussian(48, 96, 1) if kappa is None else random_matrix(48, 96, kappa=kappa, seed=1)
    quintic_max, quintic_rel = polar_errors(G, steps, dtype, "quintic")
    express_max, express_rel = polar_errors(G, steps, dtype, "polar_express")
    assert express_max < quintic_max
    assert express_rel < quintic_rel


def test_polar_express_converges_where_the_quintic_plateaus() -> None:
    G = gaussian(40, 40, 3)
    assert polar_errors(G, 10, torch.float64, "polar_express")[0] < 1e-6
    assert polar_errors(G, 10, torch.float64, "quintic")[0] > 0.2
