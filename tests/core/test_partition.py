"""Tests for geomlib.core.partition.exact_partition against independent brute force.

Every check recomputes the truth without the partition's own machinery: activation patterns
come from forward hooks on the torch modules, containment from a plain cross-product test on
the polygons, outputs from ``net(x)``, region counts from line-arrangement combinatorics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geomlib.core.partition import Partition, exact_partition

BOX = (-1.0, 1.0, -1.0, 1.0)
BOX_AREA = 4.0


# ----------------------------------------------------------------------------- helpers


def make_mlp(width: int, depth: int, act: str = "relu", seed: int = 0, out: int = 3) -> nn.Sequential:
    """Random float64 MLP 2 -> width^depth -> out, initialised from a local generator."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    dims = [2] + [width] * depth
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), nn.ReLU() if act == "relu" else nn.LeakyReLU(0.1)]
    layers.append(nn.Linear(width, out))
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=g, dtype=torch.float64) / math.sqrt(m.in_features)
                )
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    return net


def first_layer_net(W: list[list[float]], b: list[float], act: nn.Module | None = None) -> nn.Sequential:
    """One-hidden-layer float64 net with the given first-layer lines and a random readout."""
    W_t = torch.tensor(W, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(2, len(b)), act or nn.ReLU(), nn.Linear(len(b), 2)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        net[0].weight.copy_(W_t)
        net[0].bias.copy_(torch.tensor(b, dtype=torch.float64))
        net[2].weight.copy_(torch.randn(2, len(b), generator=g, dtype=torch.float64))
    return net


def hook_patterns(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """Activation pattern (P, N) of points x (P, 2) read by forward hooks on the activations."""
    signs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: signs.append(inp[0] > 0))
        for m in net.modules()
        if isinstance(m, (nn.ReLU, nn.LeakyReLU))
    ]
    try:
        with torch.no_grad():
            net(torch.as_tensor(x, dtype=torch.float64))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(signs, dim=1).numpy() if signs else np.zeros((len(x), 0), bool)


def depth_in_polygons(polygons: list[np.ndarray], x: np.ndarray, chunk: int = 512) -> np.ndarray:
    """(P, R) signed depth of each point in each polygon: min over edges of the distance to the
    edge's line, positive inside a counter-clockwise polygon."""
    out = np.empty((len(x), len(polygons)))
    for r, poly in enumerate(polygons):
        v, e = poly, np.roll(poly, -1, axis=0) - poly
        for lo in range(0, len(x), chunk):
            rel = x[lo : lo + chunk, None, :] - v[None]
            cross = e[None, :, 0] * rel[..., 1] - e[None, :, 1] * rel[..., 0]
            out[lo : lo + chunk, r] = (cross / np.linalg.norm(e, axis=1)).min(axis=1)
    return out


def random_points(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))


def shifted_grid(n: int) -> np.ndarray:
    """n x n grid in the box, shifted by an irrational offset so it avoids special lines."""
    t = (np.arange(n) + 0.5 + 0.1 * (math.sqrt(2) - 1)) / n * 2 - 1
    xx, yy = np.meshgrid(t, t * 0.999 + 1e-3 * (math.sqrt(3) - 1.7))
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def pattern_set(patterns: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.packbits(patterns, axis=1)}


def check_partition(net: nn.Module, part: Partition, n_points: int = 3000, seed: int = 0) -> None:
    """Shared invariants: tiling, convex CCW polygons, located region contains the point and
    its affine map reproduces net(x), no point lies strictly inside two regions."""
    areas = part.areas
    assert len(part) == len(part.polygons) == part.A.shape[0] == part.b.shape[0]
    assert part.patterns.shape[0] == part.psi.shape[0] == len(part)
    assert np.all(areas > 0)
    assert math.isclose(areas.sum(), BOX_AREA, rel_tol=1e-9)
    for poly in part.polygons:
        e = np.roll(poly, -1, axis=0) - poly
        turn = e[:, 0] * np.roll(e[:, 1], -1) - e[:, 1] * np.roll(e[:, 0], -1)
        assert len(poly) >= 3 and np.all(turn >= -1e-12)  # convex, counter-clockwise
    x = random_points(n_points, seed)
    r = part.locate(x)
    assert np.all(r >= 0)
    depth = depth_in_polygons(part.polygons, x)
    assert np.all(depth[np.arange(len(x)), r] >= -1e-9)  # the located region contains x
    assert np.all((depth > 1e-10).sum(axis=1) <= 1)  # no overlap
    y = np.einsum("pij,pj->pi", part.A[r], x) + part.b[r]
    with torch.no_grad():
        y_net = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(y, y_net, rtol=1e-5, atol=1e-9)
    # every region, even one no random point hits: map and pattern at its vertex mean
    c = np.array([poly.mean(axis=0) for poly in part.polygons])
    with torch.no_grad():
        y_c = net(torch.as_tensor(c, dtype=next(net.parameters()).dtype)).double().numpy()
    np.testing.assert_allclose(np.einsum("rij,rj->ri", part.A, c) + part.b, y_c, rtol=1e-5, atol=1e-9)
    deep = depth_in_polygons(part.polygons, c)[np.arange(len(c)), np.arange(len(c))] > 1e-9
    np.testing.assert_array_equal(part.patterns[deep], hook_patterns(net, c)[deep])


NETS = [
    (4, 1, "relu", 0),
    (32, 1, "leaky", 1),
    (8, 2, "relu", 2),
    (16, 2, "leaky", 3),
    (12, 3, "relu", 4),
    (16, 3, "leaky", 5),
    (24, 2, "relu", 6),
]


# ----------------------------------------------------------------------------- random nets


@pytest.mark.parametrize("width,depth,act,seed", NETS)
def test_random_mlp_tiling_and_affine_maps(width: int, depth: int, act: str, seed: int) -> None:
    net = make_mlp(width, depth, act, seed)
    part = exact_partition(net, BOX)
    assert part.patterns.shape[1] == width * depth
    assert part.A.shape[1:] == (3, 2)
    check_partition(net, part, seed=seed)


@pytest.mark.parametrize("width,depth,act,seed", NETS[1::2])
def test_grid_patterns_match_regions(width: int, depth: int, act: str, seed: int) -> None:
    net = make_mlp(width, depth, act, seed)
    part = exact_partition(net, BOX)
    x = shifted_grid(110)
    grid_patterns = hook_patterns(net, x)
    depth_ = depth_in_polygons(part.polygons, x)
    strictly_in = depth_ > 1e-10
    assert np.all(strictly_in.sum(axis=1) <= 1)
    assert np.all(depth_.max(axis=1) >= -1e-12)  # every grid point is covered
    one = strictly_in.sum(axis=1) == 1
    assert one.mean() > 0.99
    region = depth_.argmax(axis=1)
    np.testing.assert_array_equal(part.patterns[region[one]], grid_patterns[one])
    assert pattern_set(grid_patterns) <= pattern_set(part.patterns)
    # locate agrees with the independent containment test
    np.testing.assert_array_equal(part.locate(x[one]), region[one])


def test_float32_net_and_psi() -> None:
    net = make_mlp(8, 2, "relu", seed=7).float()
    part = exact_partition(net, BOX)
    assert part.A.dtype == np.float64
    x = random_points(500, 7)
    r = part.locate(x)
    y = np.einsum("pij,pj->pi", part.A[r], x) + part.b[r]
    with torch.no_grad():
        y_net = net(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(y, y_net, rtol=1e-4, atol=1e-5)
    # psi against an autograd Jacobian at each region's centroid
    net64 = make_mlp(8, 2, "relu", seed=7)
    part64 = exact_partition(net64, BOX)
    for k in range(0, len(part64), max(1, len(part64) // 10)):
        c = torch.as_tensor(part64.polygons[k].mean(axis=0))
        s = torch.linalg.svdvals(torch.autograd.functional.jacobian(net64, c))
        s = s[s > s.max() * 3 * 2.3e-16]
        assert math.isclose(part64.psi[k], float(torch.log(s).sum()), rel_tol=1e-9, abs_tol=1e-9)


def test_locate_outside_box_and_other_bounds() -> None:
    net = make_mlp(8, 2, "leaky", seed=8)
    part = exact_partition(net, (0.0, 3.0, -2.0, -0.5))
    assert math.isclose(part.areas.sum(), 4.5, rel_tol=1e-9)
    r = part.locate(np.array([[-0.1, -1.0], [1.0, 0.0], [3.5, -1.0], [1.5, -1.0], [0.0, -2.0]]))
    assert list(r[:3]) == [-1, -1, -1] and r[3] >= 0 and r[4] >= 0


# ----------------------------------------------------------------------------- region counts


def arrangement_count(W: np.ndarray, b: np.ndarray) -> int:
    """1 + (lines crossing the open box) + (pairwise intersections strictly inside the box),
    asserting general position (no near-boundary intersection, no near-parallel pair)."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    vals = corners @ W.T + b  # (4, k)
    crossing = (vals.max(axis=0) > 0) & (vals.min(axis=0) < 0)
    count = 1 + int(crossing.sum())
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            det = W[i, 0] * W[j, 1] - W[i, 1] * W[j, 0]
            assert abs(det) > 1e-6
            p = np.linalg.solve(W[[i, j]], -b[[i, j]])
            assert abs(np.abs(p).max() - 1) > 1e-6
            count += bool(np.abs(p).max() < 1)
    return count


@pytest.mark.parametrize("k,seed", [(3, 0), (8, 1), (16, 2), (24, 3), (32, 4)])
def test_one_layer_region_count(k: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    W, b = rng.normal(size=(k, 2)), 0.6 * rng.normal(size=k)
    net = first_layer_net(W.tolist(), b.tolist())
    part = exact_partition(net, BOX)
    assert len(part) == arrangement_count(W, b)
    assert len(pattern_set(part.patterns)) == len(part)


# ----------------------------------------------------------------------------- degenerate


def concurrent_lines(p: tuple[float, float], angles: list[float]) -> tuple[list, list]:
    W = [[math.cos(a), math.sin(a)] for a in angles]
    return W, [-(w[0] * p[0] + w[1] * p[1]) for w in W]


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.2)])
def test_concurrent_duplicate_corner_and_constant(act: nn.Module) -> None:
    W, b = concurrent_lines((0.3, -0.2), [0.1, 0.7, 1.3, 2.0, 2.6])  # 5 lines, 10 sectors
    W += [W[0], [1.0, 1.0], [0.0, 1e-3], [1.0, 0.0]]  # duplicate, corner (1,1), constant, edge x=1
    b += [b[0], -2.0, 5.0, -1.0]
    net = first_layer_net(W, b, act)
    part = exact_partition(net, BOX)
    assert len(part) == 10
    assert np.array_equal(part.patterns[:, 0], part.patterns[:, 5])  # identical neurons agree
    assert part.patterns[:, 6].sum() == 0 and part.patterns[:, 7].all()
    assert part.patterns[:, 8].sum() == 0
    check_partition(net, part)


def test_lines_through_corners_and_centre() -> None:
    # diagonals through two corners each, plus y=0, all concurrent at the origin
    W, b = [[1.0, -1.0], [1.0, 1.0], [0.0, 1.0], [2.0, -2.0]], [0.0, 0.0, 0.0, 0.0]
    net = first_layer_net(W, b)
    part = exact_partition(net, BOX)
    assert len(part) == 6
    check_partition(net, part)


def test_nearly_parallel_and_sliver_lines() -> None:
    W = [[0.0, 1.0], [1e-9, 1.0], [0.0, 1.0], [0.3, 0.7]]
    b = [-0.1, -0.1, -0.1 - 1e-14, 0.05]
    net = first_layer_net(W, b, nn.LeakyReLU(0.05))
    part = exact_partition(net, BOX)
    check_partition(net, part)
    assert len(part) >= 6  # at least the 6 cells of the two well-separated crossings


def test_concurrent_lines_deep_net() -> None:
    W, b = concurrent_lines((0.0, 0.0), [0.2 * i for i in range(8)])
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W, dtype=torch.float64))
        net[0].bias.copy_(torch.tensor(b, dtype=torch.float64))
        net[2].weight.copy_(torch.ones(8, 8, dtype=torch.float64))  # 8 identical neurons
        net[2].bias.fill_(-0.3)
    part = exact_partition(net, BOX)
    check_partition(net, part)


# ----------------------------------------------------------------------------- module handling


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Residual(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


def test_nested_sequential_and_traced_chain() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(2, 6), nn.ReLU()),
        nn.Identity(),
        nn.Sequential(nn.Sequential(nn.Linear(6, 6), nn.LeakyReLU())),
        nn.Linear(6, 3),
    ).double()
    check_partition(net, exact_partition(net, BOX), n_points=500)
    chain = Chain().double()
    check_partition(chain, exact_partition(chain, BOX), n_points=500)


@pytest.mark.parametrize(
    "net,match",
    [
        (
            nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 1)),
            r"GELU at 'net\.3'",
        ),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), r"Conv2d at 'net\.0'"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), r"in_features=3 at 'net\.0'"),
        (nn.Sequential(nn.Linear(2, 4), nn.SiLU()), "SiLU"),
        (nn.MultiheadAttention(2, 1), "MultiheadAttention"),
        (Residual(), "Residual"),
    ],
)
def test_unsupported_raises(net: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        exact_partition(net, BOX)


def test_locate_and_bounds_refuse_what_they_cannot_mean():
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double()
    part = exact_partition(net, bounds=(-1, 1, -1, 1))
    with pytest.raises(ValueError, match=r"shape \(P, 2\), got \(4, 3\)"):
        part.locate(torch.zeros(4, 3))
    assert part.locate(torch.zeros(2)).shape == (1,)  # one point
    with pytest.raises(ValueError, match="overflow float64"):
        exact_partition(net, bounds=(-1e300, 1e300, -1e300, 1e300))
