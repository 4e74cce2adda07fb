"""Block Lanczos top-k against maps with known singular values and against the exact spectrum."""

import math

import pytest
import torch
from torch import nn

from geomlib import jacobian_singular_values
from geomlib.core.lanczos import LanczosNoConvergence, lanczos_svd


def _flat_top(count, *, top=12):
    """A decoder-like spectrum: ``top`` values within 20 % of each other, then a tail to 1e-3."""
    head = torch.linspace(2.0, 1.6, top, dtype=torch.float64)
    tail = torch.logspace(math.log10(1.5), -3, count - top, dtype=torch.float64)
    return torch.cat([head, tail])


@pytest.mark.parametrize("block_size", [1, 3, 8])
def test_top_values_and_vectors_of_a_map_with_known_spectrum(linear_map, block_size):
    sigma = _flat_top(60)
    matrix = linear_map(sigma, 60, 150, seed=1)
    f = lambda z: z @ matrix.T  # noqa: E731
    result = lanczos_svd(f, torch.zeros(1, 60, dtype=torch.float64), 10, block_size=block_size, tol=1e-10)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.S[0], sigma[:10], rtol=1e-9, atol=0)
    # J v = s u holds by construction; J^T u - s v is the reported residual, far larger than the
    # values' errors (those fall with its square)
    u, s, v = result.U[0], result.S[0], result.V[0]
    torch.testing.assert_close(matrix @ v, u * s, rtol=0, atol=1e-8)
    residuals = (matrix.T @ u - v * s).norm(dim=0)
    torch.testing.assert_close(residuals, result.residuals[0], rtol=1e-4, atol=1e-12)
    assert float(result.residuals.max()) < 1e-4
    torch.testing.assert_close(v.T @ v, torch.eye(10, dtype=torch.float64), rtol=0, atol=1e-10)
    assert result.jvps == result.vjps and result.products == 2 * result.jvps


def test_residual_bounds_hold_and_restarts_still_converge(linear_map):
    sigma = _flat_top(80)
    matrix = linear_map(sigma, 80, 200, seed=2)
    f = lambda z: z @ matrix.T  # noqa: E731
    tight = lanczos_svd(f, torch.zeros(1, 80, dtype=torch.float64), 8, block_size=2, max_dim=12, tol=1e-9)
    assert bool(tight.converged.all())
    torch.testing.assert_close(tight.S[0], sigma[:8], rtol=1e-8, atol=0)
    loose = lanczos_svd(f, torch.zeros(1, 80, dtype=torch.float64), 8, block_size=2, tol=1e-2)
    # each value lies within its residual, and within its error bound, of a true singular value
    gap = (loose.S[0, :, None] - sigma[None, :]).abs().amin(dim=1)
    assert bool((gap <= loose.residuals[0] + 1e-12).all())
    assert bool((gap <= loose.error_bounds[0] + 1e-12).all())
    assert bool((loose.error_bounds <= loose.residuals).all())
    assert loose.products < tight.products


def test_per_sample_spectra_of_a_nonlinear_map(diagonal_quadratic):
    # J_b = U diag(z_b): the singular values of sample b are the sorted |z_b|
    z = torch.randn(3, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = diagonal_quadratic(40, 90, seed=3)
    result = lanczos_svd(f, z, 6, block_size=4, tol=1e-10)
    truth = z.abs().sort(dim=1, descending=True).values[:, :6]
    torch.testing.assert_close(result.S, truth, rtol=1e-9, atol=0)


def test_matches_the_exact_spectrum_of_an_mlp_and_is_a_method_of_jacobian_singular_values():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 48)).double()
    z = torch.randn(2, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = jacobian_singular_values(mlp, z, method="exact")
    values = jacobian_singular_values(mlp, z, method="lanczos", k=5, tol=1e-11)
    torch.testing.assert_close(values, exact[:, :5], rtol=1e-9, atol=0)


def test_the_whole_spectrum_and_a_rank_deficient_map(linear_map):
    # k = min(E, D): the Krylov space becomes the whole input space and the values are exact
    sigma = _flat_top(20, top=4)
    matrix = linear_map(sigma, 20, 30, seed=5)
    f = lambda z: z @ matrix.T  # noqa: E731
    whole = lanczos_svd(f, torch.zeros(1, 20, dtype=torch.float64), 20, block_size=3)
    torch.testing.assert_close(whole.S[0], sigma, rtol=1e-8, atol=1e-12)
    # rank 5 of 20: the Krylov space runs out of directions after 5 (random vectors continue it)
    low = linear_map(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), 20, 30, seed=6)
    g = lambda z: z @ low.T  # noqa: E731
    result = lanczos_svd(g, torch.zeros(1, 20, dtype=torch.float64), 7, block_size=4)
    torch.testing.assert_close(result.S[0, :5], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    assert float(result.S[0, 5:].abs().max()) < 1e-10


def test_float32_products_reach_float32_accuracy(linear_map):
    sigma = _flat_top(64)
    matrix = linear_map(sigma, 64, 128, seed=7, dtype=torch.float32)
    f = lambda z: z @ matrix.T  # noqa: E731
    result = lanczos_svd(f, torch.zeros(1, 64), 10)
    assert result.S.dtype == torch.float32
    relative = (result.S[0].double() - sigma[:10]).abs() / sigma[:10]
    assert float(relative.max()) < 1e-5


def test_warns_when_it_cannot_converge(linear_map):
    matrix = linear_map(_flat_top(60), 60, 100, seed=8)
    f = lambda z: z @ matrix.T  # noqa: E731
    with pytest.warns(LanczosNoConvergence, match="did not reach tol"):
        result = lanczos_svd(
            f,
            torch.zeros(1, 60, dtype=torch.float64),
            10,
            block_size=1,
            max_dim=11,
            max_restarts=1,
            tol=1e-14,
        )
    assert not bool(result.converged.all())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(k=0), ValueError, "k must be a positive integer"),
        (dict(k=11), ValueError, r"min\(E, D\) = 10"),
        (dict(k=3, block_size=0), ValueError, "block_size"),
        (dict(k=3, tol=0.0), ValueError, "tol"),
        (dict(k=4, block_size=3, max_dim=5), ValueError, "max_dim=5 must be at least"),
        (dict(k=2.0), TypeError, "use 2"),
    ],
)
def test_bad_arguments_are_named(options, error, message):
    f = lambda z: torch.cat([z, z], dim=1)  # noqa: E731
    with pytest.raises(error, match=message):
        lanczos_svd(f, torch.zeros(1, 10), **options)
