"""Tests for geomlib.chapters.cpwl_toy against independent truth.

The surface is checked against hand-evaluated Gaussians, the KDE against closed-form Gaussian
log-densities, the partition's local scaling against ``0.5 log det(J^T J)`` with ``J`` from torch
autograd at a point inside each region, and training against the untrained network's error.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from geomlib.chapters import cpwl_toy as cpwl
from geomlib.core.partition import exact_partition
from geomlib.runtime.plotting import plot_partition


def _grid(n: int = 41) -> torch.Tensor:
    axis = torch.linspace(-1, 1, n)
    return torch.cartesian_prod(axis, axis)


# ----------------------------------------------------------------------------- surface


def test_single_bump_matches_gaussian_at_known_points():
    bumps = cpwl.Bumps(centers=((0.2, -0.1),), heights=(0.7,), widths=(0.3,))
    uv = torch.tensor([[0.2, -0.1], [0.5, -0.1], [0.5, 0.2], [5.0, 5.0]], dtype=torch.float64)
    out = cpwl.bump_surface(uv, bumps)
    # one standard deviation away along an axis: exp(-1/2); along the diagonal: exp(-1)
    expected = [0.7, 0.7 * math.exp(-0.5), 0.7 * math.exp(-1.0), 0.0]
    np.testing.assert_allclose(out[:, 2].numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out[:, :2].numpy(), uv.numpy())


def test_default_surface_equals_sum_of_its_five_gaussians():
    u, v = -0.5, -0.45  # the first bump's centre
    by_hand = sum(
        a * math.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s * s))
        for (cu, cv), a, s in zip(cpwl.BUMPS.centers, cpwl.BUMPS.heights, cpwl.BUMPS.widths, strict=True)
    )
    out = cpwl.bump_surface(torch.tensor([[u, v]], dtype=torch.float64))
    assert len(cpwl.BUMPS.centers) == 5
    assert out[0, 2].item() == pytest.approx(by_hand, rel=1e-12)
    assert out[0, 2].item() == pytest.approx(cpwl.BUMPS.heights[0], abs=0.05)  # neighbours far away


def test_surface_and_bumps_reject_bad_input():
    with pytest.raises(ValueError, match="shape"):
        cpwl.bump_surface(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="widths"):
        cpwl.Bumps(centers=((0.0, 0.0),), heights=(1.0,), widths=(0.0,))


# ----------------------------------------------------------------------------- generator, training


def test_training_reduces_fit_error_well_below_untrained():
    gen = torch.Generator().manual_seed(0)
    net = cpwl.make_generator(16, 2, generator=gen)
    grid = _grid()
    target = cpwl.bump_surface(grid)
    with torch.no_grad():
        before = torch.mean((net(grid) - target) ** 2).item()
    result = cpwl.train_generator(
        net, steps=300, batch_size=256, lr=3e-3, generator=gen, snapshot_steps=(0, 300), progress=False
    )
    with torch.no_grad():
        after = torch.mean((net(grid) - target) ** 2).item()
    assert after < 0.1 * before, (before, after)
    assert result.losses.shape == (300,)
    assert sorted(result.snapshots) == [0, 300]
    for name, value in net.state_dict().items():  # the last snapshot is the trained net
        torch.testing.assert_close(result.snapshots[300][name], value)
    untrained = cpwl.snapshot_generator(net, result.snapshots[0])
    with torch.no_grad():
        assert torch.mean((untrained(grid) - target) ** 2).item() == pytest.approx(before)


def test_generator_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    nets = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        net = cpwl.make_generator(8, 2, generator=gen)
        cpwl.train_generator(net, steps=5, batch_size=16, lr=1e-3, generator=gen, progress=False)
        nets.append(net)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_rejects_bad_budgets():
    gen = torch.Generator().manual_seed(0)
    net = cpwl.make_generator(4, 1, generator=gen)
    with pytest.raises(ValueError, match="snapshot_steps"):
        cpwl.train_generator(net, steps=10, batch_size=4, lr=1e-3, generator=gen, snapshot_steps=(11,))
    with pytest.raises(ValueError):
        cpwl.train_generator(net, steps=0, batch_size=4, lr=1e-3, generator=gen)
    with pytest.raises(ValueError):
        cpwl.make_generator(0, 2, generator=gen)


# ----------------------------------------------------------------------------- KDE


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    diff = x - mean
    sign, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return -0.5 * (maha + logdet + x.shape[1] * math.log(2 * math.pi))


@pytest.fixture(scope="module")
def gaussian_samples():
    """20000 samples of a correlated 3-D Gaussian, its mean and covariance."""
    gen = torch.Generator().manual_seed(1)
    mean = np.array([0.5, -1.0, 2.0])
    L = np.array([[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [-0.2, 0.3, 0.5]])
    z = torch.randn(20_000, 3, generator=gen, dtype=torch.float64).numpy()
    return torch.from_numpy(z @ L.T + mean), mean, L @ L.T


def test_kde_matches_smoothed_gaussian_closed_form(gaussian_samples):
    samples, mean, cov = gaussian_samples
    h = 0.3  # E[KDE] is exactly the Gaussian convolved with the kernel: N(mean, cov + h^2 I)
    points = mean + np.array([[0, 0, 0], [0.5, 0, 0], [0, -0.4, 0.2], [-0.6, 0.3, -0.3]])
    est = cpwl.kde_log_density(samples, torch.from_numpy(points), bandwidth=h).numpy()
    truth = _gaussian_logpdf(points, mean, cov + h * h * np.eye(3))
    np.testing.assert_allclose(est, truth, atol=0.04)


def test_kde_with_small_bandwidth_approaches_true_density(gaussian_samples):
    samples, mean, cov = gaussian_samples
    points = mean + np.array([[0, 0, 0], [0.3, 0.2, 0], [-0.2, 0, 0.1]])
    est = cpwl.kde_log_density(samples, torch.from_numpy(points), bandwidth=0.12).numpy()
    np.testing.assert_allclose(est, _gaussian_logpdf(points, mean, cov), atol=0.15)
    at_samples = cpwl.kde_log_density(samples[:5], bandwidth=0.12)  # default points: the samples
    assert at_samples.shape == (5,)


def test_kde_rejects_bad_input():
    with pytest.raises(ValueError, match="bandwidth"):
        cpwl.kde_log_density(torch.zeros(5, 3), bandwidth=0.0)
    with pytest.raises(ValueError, match="points"):
        cpwl.kde_log_density(torch.zeros(5, 3), torch.zeros(2, 2), bandwidth=0.1)


# ----------------------------------------------------------------------------- partition


def test_region_psi_equals_half_logdet_of_autograd_jacobian():
    gen = torch.Generator().manual_seed(2)
    net = cpwl.make_generator(12, 2, generator=gen).double()
    part = exact_partition(net, cpwl.LATENT_BOUNDS)
    assert len(part) > 20
    checked = 0
    for r, poly in enumerate(part.polygons):
        inside = torch.from_numpy(poly.mean(axis=0))  # vertex mean of a convex polygon: interior
        J = torch.autograd.functional.jacobian(lambda p: net(p[None])[0], inside).numpy()  # (3, 2)
        sign, logdet = np.linalg.slogdet(J.T @ J)
        if sign <= 0 or logdet < -40:  # a rank-deficient (dead) region has no 2-D volume
            continue
        assert part.psi[r] == pytest.approx(0.5 * logdet, abs=1e-8)
        checked += 1
    assert checked > 0.9 * len(part)


def test_interior_mask_and_region_report():
    z = np.array([[0.0, 0.0], [0.95, 0.0], [0.0, -0.95], [0.8, 0.8]])
    np.testing.assert_array_equal(cpwl.interior_mask(z, 0.1), [True, False, False, True])
    gen = torch.Generator().manual_seed(0)
    net = cpwl.make_generator(6, 1, generator=gen).double()
    part = exact_partition(net, cpwl.LATENT_BOUNDS)
    r = int(part.locate([[0.1, 0.2]])[0])
    J = torch.autograd.functional.jacobian(
        lambda p: net(p[None])[0], torch.tensor([0.1, 0.2], dtype=torch.float64)
    ).numpy()
    report = cpwl.region_report(part, r)
    assert f"{np.linalg.svd(J, compute_uv=False)[0]:.3f}" in report
    with pytest.raises(ValueError):
        cpwl.region_report(part, len(part))


def test_plot_helpers_check_shapes():
    gen = torch.Generator().manual_seed(0)
    part = exact_partition(cpwl.make_generator(6, 1, generator=gen), cpwl.LATENT_BOUNDS)
    fig = plt.figure()
    ax3d = fig.add_subplot(1, 2, 1, projection="3d")
    faces = cpwl.plot_manifold(ax3d, part, part.psi)
    assert len(faces.get_array()) == len(part)
    with pytest.raises(ValueError):
        cpwl.plot_manifold(ax3d, part, part.psi[:-1])
    with pytest.raises(ValueError):
        plot_partition(fig.add_subplot(1, 2, 2), part.polygons, part.psi[:-1])
    plt.close(fig)
