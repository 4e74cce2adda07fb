"""Stochastic Lanczos quadrature of ψ and ν against closed forms, exact spectra and repeated runs."""

import math

import pytest
import torch

from geomlib import describe, local_rank, local_scaling
from geomlib.core.slq import QuadratureNotConverged, spectral_sums


def _log_normal(count, *, seed=0):
    """log s ~ N(-1.57, 1.62) within +-2.3 sd: the mini decoder's fitted spectrum and range."""
    draws = torch.randn(4 * count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws = draws[draws.abs() <= 2.3][:count]
    return torch.exp(-1.57 + 1.62 * draws).sort(descending=True).values


def _map(linear_map, sigma, out_factor=2, *, seed=0, dtype=torch.float64):
    matrix = linear_map(sigma, len(sigma), out_factor * len(sigma), seed=seed, dtype=dtype)
    return lambda z: z @ matrix.T


def test_equal_singular_values_are_exact_with_zero_error(linear_map):
    # J^T J = c^2 I: every Rademacher probe sees exactly E log c, and the Krylov space ends at once
    f = _map(linear_map, torch.full((32,), 0.5, dtype=torch.float64))
    sums = spectral_sums(f, torch.zeros(1, 32, dtype=torch.float64), deflate=0)
    assert sums.local_scaling.item() == pytest.approx(32 * math.log(0.5), rel=1e-12)
    assert sums.local_rank.item() == pytest.approx(32, rel=1e-10)
    assert sums.local_scaling_stderr.item() < 1e-10
    assert sums.steps == 1


def test_estimates_fall_within_their_standard_errors_of_the_truth(linear_map):
    sigma = _log_normal(384)
    f = _map(linear_map, sigma, seed=1, dtype=torch.float32)
    sums = spectral_sums(f, torch.zeros(1, 384), accuracy=1e-2, seed=3)
    psi, nu = local_scaling(sigma[None]).item(), local_rank(sigma[None]).item()
    assert abs(sums.local_scaling.item() - psi) <= 4 * sums.local_scaling_stderr.item()
    assert abs(sums.local_rank.item() - nu) <= 4 * sums.local_rank_stderr.item()
    # and the accuracy asked for is what the standard errors reached
    assert sums.local_scaling_stderr.item() <= 1e-2 * sigma.log().abs().sum().item()
    assert sums.local_rank_stderr.item() <= 1e-2 * sums.local_rank.item()
    # the deflated values are the exact top of the spectrum
    torch.testing.assert_close(sums.top_singular_values[0].double(), sigma[:48], rtol=1e-4, atol=0)


def test_standard_errors_match_the_spread_of_repeated_runs(linear_map):
    sigma = _log_normal(128, seed=2)
    f = _map(linear_map, sigma, seed=2)
    z = torch.zeros(1, 128, dtype=torch.float64)
    runs = [spectral_sums(f, z, accuracy=1.0, min_probes=8, seed=seed, deflate=8) for seed in range(24)]
    assert {r.probes for r in runs} == {8}  # one round each: the spread is that of 8 probes
    for name in ("local_scaling", "local_rank"):
        values = torch.tensor([getattr(r, name).item() for r in runs])
        stderrs = torch.tensor([getattr(r, f"{name}_stderr").item() for r in runs])
        ratio = values.std().item() / stderrs.mean().item()
        assert 0.6 < ratio < 1.6, (name, ratio)


def test_a_rank_deficient_map_needs_and_takes_a_cutoff(linear_map):
    # 24 zero singular values: a quadrature node converges to 0 but only as fast as the rest,
    # so ψ over the non-zero values needs a cutoff between 0 and the smallest of them
    sigma = torch.cat(
        [torch.linspace(3.0, 0.1, 40, dtype=torch.float64), torch.zeros(24, dtype=torch.float64)]
    )
    f = _map(linear_map, sigma, seed=4)
    sums = spectral_sums(f, torch.zeros(1, 64, dtype=torch.float64), accuracy=2e-3, tol=0.01, seed=0)
    psi = local_scaling(sigma[None], tol=0.01).item()  # the 40 non-zero values
    assert abs(sums.local_scaling.item() - psi) <= 4 * sums.local_scaling_stderr.item() + 1e-6
    assert abs(sums.local_rank.item() - local_rank(sigma[None]).item()) <= 4 * sums.local_rank_stderr.item()


def test_per_sample_estimates_of_a_nonlinear_map(diagonal_quadratic):
    z = 0.2 + torch.rand(2, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    f = diagonal_quadratic(48, 96, seed=5)
    sums = spectral_sums(f, z, accuracy=1e-2)
    truth = local_scaling(z.abs())
    assert bool(((sums.local_scaling - truth).abs() <= 4 * sums.local_scaling_stderr).all())


def test_describe_carries_the_standard_errors_only_for_slq(linear_map):
    f = _map(linear_map, _log_normal(64, seed=6), seed=6)
    z = torch.zeros(1, 64, dtype=torch.float64)
    estimated = describe(f, z, method="slq", accuracy=2e-2)
    exact = describe(f, z)
    assert estimated.local_scaling_stderr is not None and estimated.local_rank_stderr is not None
    assert exact.local_scaling_stderr is None and exact.local_rank_stderr is None
    assert (
        abs(estimated.local_scaling - exact.local_scaling).item() <= 4 * estimated.local_scaling_stderr.item()
    )
    assert set(estimated.as_dict()) >= {"local_scaling_stderr", "local_rank_stderr"}
    with pytest.raises(ValueError, match="accuracy is for method='lanczos' or 'slq'"):
        describe(f, z, method="projected", k=4, accuracy=1e-2)
    with pytest.raises(ValueError, match="method must be one of"):
        describe(f, z, method="hutchinson")


def test_warns_when_the_quadrature_is_cut_short(linear_map):
    f = _map(linear_map, _log_normal(64, seed=7), seed=7)
    with pytest.warns(QuadratureNotConverged, match="max_steps"):
        spectral_sums(f, torch.zeros(1, 64, dtype=torch.float64), max_steps=2, max_probes=8)


def test_a_loose_accuracy_still_takes_the_fewest_probes_asked_for(linear_map):
    sigma = _log_normal(64, seed=4)
    f = _map(linear_map, sigma, seed=4)
    z = torch.zeros(1, 64, dtype=torch.float64)
    assert spectral_sums(f, z, accuracy=1.0).probes == 16
    assert spectral_sums(f, z, accuracy=1.0, min_probes=24).probes == 24


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(accuracy=0.0), ValueError, "accuracy"),
        (dict(deflate=-1), ValueError, "deflate must be an integer >= 0"),
        (dict(deflate=16), ValueError, "leaves nothing to probe"),
        (dict(probes_per_round=0), ValueError, "probes_per_round"),
        (dict(min_probes=0), ValueError, "min_probes"),
        (dict(max_steps=1.5), TypeError, "max_steps"),
    ],
)
def test_bad_arguments_are_named(options, error, message):
    f = lambda z: torch.cat([z, z], dim=1)  # noqa: E731
    with pytest.raises(error, match=message):
        spectral_sums(f, torch.zeros(1, 16), **options)
