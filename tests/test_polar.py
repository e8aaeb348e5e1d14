"""Tests for amuse_lightning.optim.polar: Newton-Schulz, coupled Newton roots, spectral powers.

References come from torch.linalg.svd / eigh in fp64. Newton-Schulz acts on each singular value
through the scalar quintic f(x) = a x + b x^3 + c x^5 (singular vectors unchanged), so the bands
asserted below are the ranges of the iterated scalar map, measured on a fine grid of
x = s / ||G||_F in (0, 1]:

* 5 steps, x >= 1.31e-3: f^5(x) in [0.600, 1.2024]  -> FIVE_STEP_BAND, X_MIN_FOR_BAND
* any number of steps once inside: [0.6818, 1.1344] is invariant -> INVARIANT_BAND
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amuse_lightning.optim.polar import (
    NS_COEFFICIENTS,
    SUPPORTED_POWERS,
    as_matrix,
    coupled_newton_sqrt,
    inverse_fourth_root,
    newton_schulz,
    ns_schedule,
    spectral_power,
)

FIVE_STEP_BAND = (0.60, 1.21)
X_MIN_FOR_BAND = 1.31e-3
INVARIANT_BAND = (0.68, 1.14)


SPEC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic, docs/algorithm.md#muon


def quintic(x: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = SPEC_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def random_matrix(
    *shape: int, kappa: float = 1.0, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """Matrices U diag(s) V^T with s log-uniform in [1/kappa, 1] (kappa = 1: orthogonal-like)."""
    gen = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=gen, dtype=torch.float64))
    log_s = torch.rand(*batch, k, generator=gen, dtype=torch.float64) * math.log(kappa)
    s = torch.exp(-log_s)
    return ((U * s.unsqueeze(-2)) @ V.mT).to(dtype)


def random_spd(*shape: int, kappa: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    *batch, d = shape
    Q = random_matrix(*batch, d, d, seed=seed)  # kappa = 1: orthogonal
    gen = torch.Generator().manual_seed(seed + 1)
    eig = torch.exp(-torch.rand(*batch, d, generator=gen, dtype=torch.float64) * math.log(kappa))
    return ((Q * eig.unsqueeze(-2)) @ Q.mT).to(dtype)


def eigh_power(A: torch.Tensor, p: float) -> torch.Tensor:
    L, Q = torch.linalg.eigh(A.double())
    return (Q * L.pow(p).unsqueeze(-2)) @ Q.mT


def svd_power(O: torch.Tensor, p: float) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(O.double(), full_matrices=False)
    return (U * s.pow(p).unsqueeze(-2)) @ Vh


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def singular_values(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(X.double())


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


# ----------------------------------------------------------------------- coupled Newton roots


def regularised(A: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    d = A.shape[-1]
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1)
    return A + ((eps + 1e-4 * trace / d)[..., None, None]) * torch.eye(d, dtype=A.dtype)


@pytest.mark.parametrize("shape", [(8,), (3, 32), (2, 2, 16)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_coupled_sqrt_matches_eigh_of_regularised_matrix(shape, dtype, tol):
    A = random_spd(*shape, shape[-1], kappa=100.0, dtype=dtype)
    sqrt_A, inv_sqrt_A = coupled_newton_sqrt(A)
    assert sqrt_A.dtype == dtype and inv_sqrt_A.dtype == dtype
    A_r = regularised(A.double())
    assert rel_err(sqrt_A, eigh_power(A_r, 0.5)) < tol
    assert rel_err(inv_sqrt_A, eigh_power(A_r, -0.5)) < tol


def test_coupled_sqrt_close_to_true_roots_up_to_regularisation_bias():
    # kappa = 10: the 1e-4 tr(A)/d shift moves each eigenvalue by < 1e-3 relative.
    A = random_spd(4, 24, kappa=10.0, dtype=torch.float32)
    sqrt_A, inv_sqrt_A = coupled_newton_sqrt(A)
    assert rel_err(sqrt_A, eigh_power(A, 0.5)) < 1e-3
    assert rel_err(inv_sqrt_A, eigh_power(A, -0.5)) < 1e-3
    eye = torch.eye(24).expand(4, 24, 24)
    torch.testing.assert_close(sqrt_A @ inv_sqrt_A, eye, atol=1e-4, rtol=0)


def test_coupled_sqrt_scale_free_and_input_untouched():
    A = random_spd(2, 16, kappa=50.0, dtype=torch.float32)
    before = A.clone()
    small, _ = coupled_newton_sqrt(A * 1e-6, eps=0.0)
    big, _ = coupled_newton_sqrt(A * 1e6, eps=0.0)
    assert torch.equal(A, before)
    assert rel_err(small * 1e3, eigh_power(regularised(A.double(), 0.0), 0.5)) < 1e-4
    assert rel_err(big * 1e-3, eigh_power(regularised(A.double(), 0.0), 0.5)) < 1e-4


def test_coupled_sqrt_without_symmetrising_still_converges():
    A = random_spd(3, 16, kappa=30.0, dtype=torch.float64)
    sqrt_A, _ = coupled_newton_sqrt(A, symmetrize_every=0)
    assert rel_err(sqrt_A, eigh_power(regularised(A), 0.5)) < 1e-9


@pytest.mark.parametrize(
    "bad, match",
    [(torch.randn(3, 4), "square"), (torch.randn(4), "at least 2 dims")],
)
def test_coupled_sqrt_rejects_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        coupled_newton_sqrt(bad)


@pytest.mark.parametrize("kappa, tol", [(10.0, 1e-3), (100.0, 5e-3)])
def test_inverse_fourth_root_matches_eigh(kappa, tol):
    A = random_spd(3, 32, kappa=kappa, dtype=torch.float32)
    out = inverse_fourth_root(A)
    assert out.dtype == torch.float32
    assert rel_err(out, eigh_power(A, -0.25)) < tol


def test_inverse_fourth_root_fp64_is_the_root_of_the_double_regularisation():
    A = random_spd(2, 12, kappa=100.0, dtype=torch.float64)
    S = eigh_power(regularised(A), 0.5)
    expected = eigh_power(regularised(S), -0.5)
    assert rel_err(inverse_fourth_root(A), expected) < 1e-9


# ---------------------------------------------------------------------------- spectral_power


@pytest.mark.parametrize("power", [0.5, 0.25])
@pytest.mark.parametrize("shape", [(40, 16), (16, 40), (24, 24), (3, 20, 36), (2, 2, 36, 20)])
def test_spectral_power_matches_svd(power, shape):
    O = random_matrix(*shape, kappa=10.0, dtype=torch.float32, seed=5) * 3.0
    out = spectral_power(O, power)
    assert out.shape == O.shape and out.dtype == O.dtype
    assert rel_err(out, svd_power(O, power)) < 1e-3


def regularised_half_power(s: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Singular values of Psi_{1/2} as implemented: exact scalar model of both regularisations.

    With x = s / ||s|| and lambda = x^2 (eigenvalues of the normalised Gram matrix, mean 1/k):
    S = (lambda + eps + 1e-4 mean(lambda))^{1/2}, R = (S + eps + 1e-4 mean(S))^{-1/2},
    output x R ||s||^{1/2}. Against s^{1/2} this is damped by about 1e-4 mean(x^2) / (4 x^2).
    """
    norm = s.norm(dim=-1, keepdim=True)
    lam = (s / norm) ** 2
    S = (lam + eps + 1e-4 * lam.mean(-1, keepdim=True)).sqrt()
    R = (S + eps + 1e-4 * S.mean(-1, keepdim=True)).rsqrt()
    return (s / norm) * R * norm.sqrt()


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    power=st.sampled_from([0.5, 0.25]),
    scale=st.floats(1e-4, 1e4),
    kappa=st.floats(1.0, 30.0),
    seed=st.integers(0, 2**16),
)
def test_spectral_power_property(m, n, power, scale, kappa, seed):
    # Singular vectors are kept and every singular value follows the regularised scalar model to
    # fp32 accuracy (measured worst case 1e-6 relative over 300 random draws).
    O = random_matrix(2, m, n, kappa=kappa, dtype=torch.float32, seed=seed) * scale
    s = singular_values(O)
    expected = regularised_half_power(s)
    if power == 0.25:
        expected = regularised_half_power(expected)
    out = spectral_power(O, power)
    torch.testing.assert_close(singular_values(out), expected, rtol=2e-5, atol=0)
    U, _, Vh = torch.linalg.svd(O.double(), full_matrices=False)
    torch.testing.assert_close(
        out.double(), (U * expected.unsqueeze(-2)) @ Vh, rtol=0, atol=1e-4 * scale**power
    )


def test_spectral_power_regularisation_bias_is_small_for_moderate_conditioning():
    # kappa(O) = 10 worst case: one singular value 10x below the others. The 1e-4 tr/d shift then
    # damps that direction by < 3e-3 (measured 2.9e-3 at k = 24) and the others by < 2e-4
    # (measured 1.1e-4 for p = 1/4).
    s = torch.ones(24, dtype=torch.float64)
    s[-1] = 0.1
    Q = random_matrix(30, 24, seed=9)  # orthonormal columns
    O = (Q * s).float()
    for power in (0.5, 0.25):
        s_out = singular_values(spectral_power(O, power))
        rel = (s_out - s.pow(power)).abs() / s.pow(power)
        assert rel[-1] < 3e-3
        assert rel[:-1].max() < 2e-4


def test_spectral_power_is_p_homogeneous_at_tiny_scales():
    # Gradients can be ~1e-6; the absolute eps inside the coupled iteration must not swamp them.
    O = random_matrix(2, 30, 12, kappa=10.0, dtype=torch.float32, seed=6)
    for power in (0.5, 0.25):
        tiny = spectral_power(O * 1e-6, power)
        assert rel_err(tiny, svd_power(O * 1e-6, power)) < 1e-3


def test_spectral_power_zero_is_newton_schulz():
    O = random_matrix(3, 20, 30, kappa=10.0, dtype=torch.float32, seed=7)
    out = spectral_power(O, 0, ns_dtype=torch.float32)
    torch.testing.assert_close(out, newton_schulz(O, dtype=torch.float32), atol=0, rtol=0)
    s_out = singular_values(out)
    assert FIVE_STEP_BAND[0] <= s_out.min() and s_out.max() <= FIVE_STEP_BAND[1]


def test_spectral_power_one_is_an_independent_copy():
    O = torch.randn(2, 6, 9)
    before = O.clone()
    out = spectral_power(O, 1.0)
    assert torch.equal(out, O) and out.data_ptr() != O.data_ptr()
    out.add_(1.0)
    assert torch.equal(O, before)


@pytest.mark.parametrize("power", [0.5, 0.25])
def test_spectral_power_low_precision_and_zero_inputs(power):
    O = random_matrix(2, 32, 16, kappa=5.0, dtype=torch.float32, seed=8)
    before = O.clone()
    out = spectral_power(O.to(torch.bfloat16), power)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, svd_power(O, power)) < 2e-2
    assert torch.equal(O, before)
    zero = spectral_power(torch.zeros(2, 8, 5), power)
    assert torch.equal(zero, torch.zeros(2, 8, 5))


@pytest.mark.parametrize("power", [0.75, 2, -0.5, 1 / 3])
def test_spectral_power_rejects_unsupported_powers(power):
    with pytest.raises(ValueError, match=r"\{0, 0\.25, 0\.5, 1\}"):
        spectral_power(torch.randn(4, 4), power)


def test_supported_powers_constant():
    assert SUPPORTED_POWERS == (0.0, 0.25, 0.5, 1.0)
    for power in SUPPORTED_POWERS:
        assert spectral_power(torch.randn(6, 4), power).shape == (6, 4)


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
