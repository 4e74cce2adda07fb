"""geomlib.chapters.latent_slices: the plane through three latents contains them, its hull is
their triangle (plain geometry), and collinear anchors are refused."""

import pytest
import torch
from matplotlib.path import Path as PolygonPath

from geomlib.chapters import latent_slices


def test_plane_contains_the_anchors_and_its_hull_is_their_triangle():
    anchors = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    plane = latent_slices.latent_plane(anchors, resolution=25, padding=0.3)
    torch.testing.assert_close(plane.to_latent(plane.anchor_coords), anchors, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plane.basis @ plane.basis.T, torch.eye(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plane.to_latent(torch.zeros(1, 2))[0], anchors.mean(0))
    assert plane.grid_latents().shape == (625, 4, 8, 8)
    umin, umax, vmin, vmax = plane.extent
    assert (plane.anchor_coords[:, 0] > umin).all() and (plane.anchor_coords[:, 0] < umax).all()
    assert (plane.anchor_coords[:, 1] > vmin).all() and (plane.anchor_coords[:, 1] < vmax).all()
    triangle = PolygonPath(plane.anchor_coords.numpy())
    expected = triangle.contains_points(plane.grid_coords().reshape(-1, 2).numpy()).reshape(25, 25)
    inside = plane.inside_hull().numpy()
    assert 0 < inside.sum() < inside.size
    assert (inside == expected).mean() > 0.98  # points exactly on an edge may differ


def test_plane_rejects_collinear_anchors():
    a = torch.randn(4, 8, 8)
    with pytest.raises(ValueError, match="collinear"):
        latent_slices.latent_plane(torch.stack([a, 2 * a, 3 * a]))
    with pytest.raises(ValueError, match="shape"):
        latent_slices.latent_plane(torch.randn(2, 4, 8, 8))


def test_plane_rejects_repeated_and_nan_anchors():
    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    with pytest.raises(ValueError, match="the same latent"):
        latent_slices.latent_plane(torch.stack([a, a, b]))
    bad = torch.stack([a, b, torch.randn(4, 8, 8)])
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values \(samples \[2\]\)"):
        latent_slices.latent_plane(bad)
    with pytest.raises(ValueError, match="at least 2 grid points"):
        latent_slices.latent_plane(torch.stack([a, b, torch.randn(4, 8, 8)]), resolution=1)
