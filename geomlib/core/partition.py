"""Exact input-space partition of a 2-D piecewise-linear network.

A network ``G: R^2 -> R^D`` built from Linear, ReLU and LeakyReLU layers is affine on each
cell of a partition of the input box into convex polygons. The partition is built layer
by layer. Every region carries its convex polygon (counter-clockwise vertices) and the
affine map ``x -> M x + c`` from the input to the current features:

* a Linear layer composes the maps (``M <- W M``, ``c <- W c + b``);
* at an activation each feature is affine in ``x`` inside a region, so its zero set is a
  line. The polygon is split sequentially by those lines (half-plane clipping of a convex
  polygon into two convex pieces, Sutherland-Hodgman style), the sign of every feature is
  read at each piece's centroid, and the activation is applied to the rows of the map
  (ReLU zeroes the inactive rows, LeakyReLU scales them by its slope).

After the last layer ``(M, c)`` is the region's ``(A, b)``. Vertices within a relative
tolerance of a line count as on it, and a cut that would leave a piece thinner than
``~1e-12`` of the box area is not made, so pieces never overlap and areas always add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from geomlib.core.descriptors import local_scaling

__all__ = ["Partition", "exact_partition"]

_RTOL_LINE = 1e-10  # relative tolerance for "vertex lies on the line"
_RTOL_AREA = 1e-12  # pieces below this fraction of the box area are never created
_NOOPS = (nn.Identity, nn.Flatten)
_ACTS = (nn.ReLU, nn.LeakyReLU)


# ----------------------------------------------------------------------------- network


@dataclass(frozen=True)
class _Op:
    """One supported operation: an affine layer (``W``, ``b``) or an activation (``slope``)."""

    kind: str  # "linear" or "act"
    name: str
    W: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (out, in); empty for "act"
    b: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (out,)
    slope: float = 0.0  # 0 for ReLU, negative_slope for LeakyReLU


def _unsupported(module: nn.Module, name: str) -> ValueError:
    return ValueError(
        f"exact_partition supports Linear/ReLU/LeakyReLU only; got {type(module).__name__} at '{name}'"
    )


def _leaf_modules(module: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """Flatten (nested) Sequentials and traceable chains into ``(qualified name, module)``."""
    if isinstance(module, nn.Sequential):
        leaves: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            leaves += _leaf_modules(child, f"{name}.{child_name}")
        return leaves
    if isinstance(module, (nn.Linear, *_ACTS, *_NOOPS)):
        return [(name, module)]
    if next(module.children(), None) is None:
        raise _unsupported(module, name)
    return _traced_chain(module, name)


def _traced_chain(module: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """Leaves of a custom module whose forward is a plain chain of submodule calls."""
    not_chain = ValueError(
        f"exact_partition cannot trace {type(module).__name__} at '{name}' as a chain of "
        "Linear/ReLU/LeakyReLU submodules; wrap the layers in nn.Sequential"
    )
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:
        raise not_chain from exc
    leaves: list[tuple[str, nn.Module]] = []
    prev = None
    for node in graph.nodes:
        if node.op == "placeholder" and prev is None:
            prev = node
        elif node.op == "call_module" and node.args == (prev,) and not node.kwargs:
            sub = module.get_submodule(node.target)
            leaves += _leaf_modules(sub, f"{name}.{node.target}")
            prev = node
        elif node.op == "output" and node.args == (prev,) and prev is not None:
            return leaves
        else:
            raise not_chain
    raise not_chain


def _parse_network(net: nn.Module) -> list[_Op]:
    """Turn ``net`` into a list of float64 affine / activation operations.

    Raises
    ------
    ValueError
        For any unsupported module, a first Linear with ``in_features != 2`` or
        mismatched layer widths; the message names the offending module.
    """
    ops: list[_Op] = []
    dim, seen_linear = 2, False
    for name, mod in _leaf_modules(net, "net"):
        if isinstance(mod, nn.Linear):
            if mod.in_features != dim:
                what = (
                    "first Linear must have in_features == 2"
                    if not seen_linear
                    else (f"Linear expects in_features == {dim}")
                )
                raise ValueError(f"exact_partition: {what}; got in_features={mod.in_features} at '{name}'")
            W = mod.weight.detach().cpu().to(torch.float64).numpy().copy()
            b = (
                mod.bias.detach().cpu().to(torch.float64).numpy().copy()
                if mod.bias is not None
                else np.zeros(mod.out_features)
            )
            ops.append(_Op("linear", name, W=W, b=b))
            dim, seen_linear = mod.out_features, True
        elif isinstance(mod, nn.LeakyReLU):
            ops.append(_Op("act", name, slope=float(mod.negative_slope)))
        elif isinstance(mod, nn.ReLU):
            ops.append(_Op("act", name, slope=0.0))
    return ops


def _forward_signs(ops: list[_Op], points: np.ndarray) -> np.ndarray:
    """Activation pattern of ``points`` (P, 2) -> (P, N) bool, pre-activation > 0."""
    h = points.astype(np.float64)
    signs = []
    for op in ops:
        if op.kind == "linear":
            h = h @ op.W.T + op.b
        else:
            active = h > 0
            signs.append(active)
            h = np.where(active, h, op.slope * h)
    return np.concatenate(signs, axis=1) if signs else np.zeros((len(h), 0), bool)


# ----------------------------------------------------------------------------- geometry


def _next(a: np.ndarray) -> np.ndarray:
    """Cyclic successor along the first axis (a cheap ``np.roll(a, -1, axis=0)``)."""
    return np.concatenate((a[1:], a[:1]))


def _polygon_area(poly: np.ndarray) -> float:
    """Signed shoelace area of a polygon (n, 2); positive when counter-clockwise."""
    nxt = _next(poly)
    return 0.5 * float(np.dot(poly[:, 0], nxt[:, 1]) - np.dot(nxt[:, 0], poly[:, 1]))


def _centroids(polygons: list[np.ndarray]) -> np.ndarray:
    """Area centroids (R, 2) of non-degenerate polygons, all at once."""
    V, _ = _pad_polygons(polygons)  # padding repeats a vertex: zero-length edges add nothing
    Q = V - V[:, :1]  # relative to the first vertex, for accuracy
    Qn = np.concatenate((Q[:, 1:], Q[:, :1]), axis=1)
    cross = Q[..., 0] * Qn[..., 1] - Qn[..., 0] * Q[..., 1]  # (R, n)
    area3 = 3.0 * cross.sum(axis=1, keepdims=True)
    moment = np.stack([((Q[..., k] + Qn[..., k]) * cross).sum(axis=1) for k in (0, 1)], axis=1)
    ok = np.abs(area3) > 1e-300
    cent = np.where(ok, moment / np.where(ok, area3, 1.0), Q.mean(axis=1))
    return V[:, 0] + cent


@dataclass(frozen=True)
class _Geometry:
    """Scale-dependent tolerances derived from the box."""

    scale: float  # largest |coordinate| in the box, at least its diameter
    min_area: float
    eps_point: float


def _clip(poly: np.ndarray, s: np.ndarray, tol: float, geom: _Geometry):
    """Split a convex polygon by the line ``s = 0`` (values ``s`` (n,) at its vertices).

    Vertices with ``|s| <= tol`` lie on the line and go to both pieces; each edge whose ends
    are strictly on opposite sides contributes its crossing point to both pieces.

    Returns
    -------
    (pos, neg) : tuple of (m, 2) CCW arrays, or None when one side would be a sliver
        (area below ``geom.min_area`` or fewer than 3 distinct vertices).
    """
    cls = np.where(s > tol, 1, np.where(s < -tol, -1, 0))
    s_next, cls_next = _next(s), _next(cls)
    crossing = cls * cls_next < 0
    t = np.divide(s, s - s_next, out=np.zeros_like(s), where=crossing)
    q = poly + t[:, None] * (_next(poly) - poly)  # crossing point of each edge
    candidates = np.stack([poly, q], axis=1).reshape(-1, 2)  # v0, q0, v1, q1, ...
    pieces = []
    for side in (cls >= 0, cls <= 0):
        piece = candidates[np.stack([side, crossing], axis=1).ravel()]
        piece = _dedupe(piece, geom.eps_point)
        if len(piece) < 3 or _polygon_area(piece) < geom.min_area:
            return None
        pieces.append(piece)
    return pieces[0], pieces[1]


def _dedupe(poly: np.ndarray, eps: float) -> np.ndarray:
    """Drop vertices closer than ``eps`` (max-norm) to their cyclic successor."""
    if len(poly) < 2:
        return poly
    keep = np.abs(poly - _next(poly)).max(axis=1) > eps
    return poly[keep] if keep.any() else poly[:1]


def _split_region(
    poly: np.ndarray, F: np.ndarray, g: np.ndarray, tol: np.ndarray, idx: np.ndarray, geom: _Geometry
) -> list[np.ndarray]:
    """Cut a convex polygon by the lines ``F[k] @ x + g[k] = 0`` for k in ``idx``.

    Parameters
    ----------
    poly : (n, 2) CCW vertices.
    F, g, tol : (K, 2), (K,), (K,) pre-activations of the layer as affine functions of x,
        and their "on the line" tolerances.
    idx : (k,) int, the lines that may cut ``poly``.

    Returns
    -------
    list of (m_i, 2) CCW convex polygons tiling ``poly``.
    """
    out: list[np.ndarray] = []
    stack = [(poly, idx)]
    while stack:
        p, idx = stack.pop()
        s = p @ F[idx].T + g[idx]  # (n, k)
        cuts = ((s > tol[idx]).any(axis=0) & (s < -tol[idx]).any(axis=0)).nonzero()[0]
        if cuts.size == 0:
            out.append(p)
            continue
        rest = idx[cuts[1:]]  # lines that miss p also miss its pieces
        pieces = _clip(p, s[:, cuts[0]], tol[idx[cuts[0]]], geom)
        if pieces is None:
            stack.append((p, rest))
        else:
            stack.extend((piece, rest) for piece in pieces)
    return out


def _cutting_mask(
    polys: list[np.ndarray], M: np.ndarray, c: np.ndarray, tol: np.ndarray, budget: int = 1 << 22
) -> np.ndarray:
    """(R, d) bool: whether feature k's zero line strictly separates vertices of region r."""
    R, d, _ = M.shape
    mask = np.zeros((R, d), dtype=bool)
    n_max = max(len(p) for p in polys)
    step = max(1, budget // max(1, n_max * d))
    for lo in range(0, R, step):
        V, _ = _pad_polygons(polys[lo : lo + step])  # padding repeats a real vertex
        S = np.einsum("rnk,rdk->rnd", V, M[lo : lo + step]) + c[lo : lo + step, None, :]
        t = tol[lo : lo + step, None, :]
        mask[lo : lo + step] = (t < S).any(axis=1) & (-t > S).any(axis=1)
    return mask


# ----------------------------------------------------------------------------- regions


@dataclass
class _Regions:
    """Working state: polygons, affine map input -> current features, patterns so far."""

    polys: list[np.ndarray]
    M: np.ndarray  # (R, d, 2)
    c: np.ndarray  # (R, d)
    patterns: np.ndarray  # (R, n) bool


def _apply_linear(state: _Regions, op: _Op) -> _Regions:
    """Compose every region's map with ``x -> W x + b``."""
    R, d, _ = state.M.shape
    stacked = state.M.transpose(1, 0, 2).reshape(d, 2 * R)  # one GEMM for all regions
    M = (op.W @ stacked).reshape(-1, R, 2).transpose(1, 0, 2)
    c = state.c @ op.W.T + op.b
    return _Regions(state.polys, np.ascontiguousarray(M), c, state.patterns)


def _apply_activation(state: _Regions, op: _Op, geom: _Geometry) -> _Regions:
    """Split every region by the current features' zero lines and apply the activation."""
    tol = _RTOL_LINE * (np.linalg.norm(state.M, axis=2) * geom.scale + np.abs(state.c))
    cutting = _cutting_mask(state.polys, state.M, state.c, tol)
    polys: list[np.ndarray] = []
    parents: list[int] = []
    for r in range(len(state.polys)):
        idx = cutting[r].nonzero()[0]
        pieces = (
            _split_region(state.polys[r], state.M[r], state.c[r], tol[r], idx, geom)
            if idx.size
            else [state.polys[r]]
        )
        polys += pieces
        parents += [r] * len(pieces)
    par = np.asarray(parents, dtype=np.intp)
    M, c = state.M[par], state.c[par]
    active = np.einsum("rdk,rk->rd", M, _centroids(polys)) + c > 0  # decided at the centroid
    gain = np.where(active, 1.0, op.slope)
    patterns = np.concatenate([state.patterns[par], active], axis=1)
    return _Regions(polys, M * gain[:, :, None], c * gain, patterns)


#: Areas are products of coordinates: beyond this their squares overflow float64.
MAX_BOUND = 1e100


def _check_bounds(bounds) -> tuple[float, float, float, float]:
    if isinstance(bounds, str) or len(bounds) != 4:
        raise ValueError(f"bounds must be (xmin, xmax, ymin, ymax), got {bounds!r}")
    xmin, xmax, ymin, ymax = (float(v) for v in bounds)
    if not (np.isfinite([xmin, xmax, ymin, ymax]).all() and xmin < xmax and ymin < ymax):
        raise ValueError(f"bounds must be finite with xmin < xmax and ymin < ymax; got {bounds}")
    if max(abs(xmin), abs(xmax), abs(ymin), abs(ymax)) > MAX_BOUND:
        raise ValueError(
            f"bounds {bounds} reach beyond ±{MAX_BOUND:g}, where areas overflow float64: rescale the input"
        )
    return xmin, xmax, ymin, ymax


def _psi(A: np.ndarray) -> np.ndarray:
    """Local scaling (R,) of affine maps A (R, D, 2) from their singular values."""
    if A.shape[0] == 0 or min(A.shape[1:]) == 0:
        return np.zeros(A.shape[0])
    sigma = np.linalg.svd(A, compute_uv=False)  # (R, min(D, 2)), descending
    return local_scaling(torch.from_numpy(sigma)).detach().cpu().numpy().astype(np.float64)


# ----------------------------------------------------------------------------- public API


@dataclass
class Partition:
    """Linear regions of a piecewise-linear map ``G: R^2 -> R^D`` on a box.

    Attributes
    ----------
    polygons : list of (n_i, 2) arrays, CCW vertices of each convex region.
    A : (R, D, 2) array, ``G(x) = A[r] @ x + b[r]`` inside region r.
    b : (R, D) array.
    patterns : (R, N) bool array, activation pattern (pre-activation > 0) over all N
        hidden neurons in layer order.
    psi : (R,) array, sum of the log of the nonzero singular values of ``A[r]``.
    bounds : (xmin, xmax, ymin, ymax).
    """

    polygons: list[np.ndarray]
    A: np.ndarray
    b: np.ndarray
    patterns: np.ndarray
    psi: np.ndarray
    bounds: tuple[float, float, float, float]
    _ops: list[_Op] | None = field(default=None, repr=False, compare=False)
    _lookup: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.polygons)

    @property
    def areas(self) -> np.ndarray:
        """Region areas, shape (R,)."""
        if not self.polygons:
            return np.zeros(0)
        V, _ = _pad_polygons(self.polygons)  # padded edges have zero length: shoelace is exact
        Vn = np.concatenate((V[:, 1:], V[:, :1]), axis=1)
        return 0.5 * (V[..., 0] * Vn[..., 1] - Vn[..., 0] * V[..., 1]).sum(axis=1)

    def locate(self, points: npt.ArrayLike | torch.Tensor) -> np.ndarray:
        """Index of the region containing each point.

        The region is found from the point's activation pattern (an exact forward pass);
        points whose pattern is missing or shared fall back to a point-in-polygon test.

        Parameters
        ----------
        points : (P, 2) array-like or tensor

        Returns
        -------
        (P,) int64 array; -1 for points outside the box.
        """
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().to(torch.float64).numpy()
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must have shape (P, 2), got {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN or inf values")
        xmin, xmax, ymin, ymax = self.bounds
        inside = (pts[:, 0] >= xmin) & (pts[:, 0] <= xmax) & (pts[:, 1] >= ymin) & (pts[:, 1] <= ymax)
        out = np.full(len(pts), -1, dtype=np.int64)
        idx = np.flatnonzero(inside)
        found = (
            self._locate_by_pattern(pts[idx]) if self._ops is not None else -np.ones(len(idx), dtype=np.int64)
        )
        todo = found < 0
        if todo.any():
            found[todo] = self._locate_by_polygon(pts[idx[todo]])
        out[idx] = found
        return out

    def _locate_by_pattern(self, pts: np.ndarray) -> np.ndarray:
        """Region index from the activation pattern; -1 where missing or ambiguous."""
        if self._lookup is None:
            lookup: dict[bytes, int] = {}
            for r, key in enumerate(_pattern_keys(self.patterns)):
                lookup[key] = -1 if key in lookup else r  # -1 marks a duplicated pattern
            self._lookup = lookup
        assert self._ops is not None  # locate() only calls this when the network is known
        keys = _pattern_keys(_forward_signs(self._ops, pts))
        return np.array([self._lookup.get(k, -1) for k in keys], dtype=np.int64)

    def _locate_by_polygon(self, pts: np.ndarray, budget: int = 1 << 22) -> np.ndarray:
        """Region whose polygon contains each point most deeply (max of min edge distance)."""
        V, valid = _pad_polygons(self.polygons)  # (R, n, 2), (R, n)
        E = np.concatenate((V[:, 1:], V[:, :1]), axis=1) - V
        L = np.linalg.norm(E, axis=2)
        out = np.empty(len(pts), dtype=np.int64)
        chunk = max(1, budget // valid.size)
        for lo in range(0, len(pts), chunk):
            P = pts[lo : lo + chunk]  # (p, 2)
            rel = P[:, None, None, :] - V[None]  # (p, R, n, 2)
            dist = (E[None, ..., 0] * rel[..., 1] - E[None, ..., 1] * rel[..., 0]) / np.where(valid, L, 1.0)
            depth = np.where(valid[None], dist, np.inf).min(axis=2)  # (p, R)
            out[lo : lo + chunk] = depth.argmax(axis=1)
        return out


def _pattern_keys(patterns: np.ndarray) -> list[bytes]:
    """Hashable keys of boolean patterns (P, N) as packed bytes."""
    packed = np.packbits(np.asarray(patterns, dtype=bool), axis=1)
    return [row.tobytes() for row in packed]


def _pad_polygons(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack polygons into (R, n_max, 2), padding by repeating the first vertex, plus the
    (R, n_max) mask of real vertices.

    Edge i runs from ``V[:, i]`` to ``V[:, i + 1]`` (cyclically): for a polygon with n real
    vertices edges ``0 .. n-1`` are its real edges (edge n-1 closes it) and the padded edges
    are zero-length.
    """
    lengths = np.fromiter((len(p) for p in polygons), dtype=np.intp, count=len(polygons))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    j = np.arange(lengths.max())
    valid = j[None, :] < lengths[:, None]
    V = np.concatenate(polygons)[starts[:, None] + np.where(valid, j[None, :], 0)]
    return V, valid


def exact_partition(
    net: nn.Module, bounds: tuple[float, float, float, float] = (-1.0, 1.0, -1.0, 1.0)
) -> Partition:
    """Exact partition of the box into the linear regions of ``net``.

    Parameters
    ----------
    net : nn.Module
        ``nn.Sequential`` (possibly nested) of ``nn.Linear``, ``nn.ReLU``, ``nn.LeakyReLU``
        (``nn.Identity`` / ``nn.Flatten`` are ignored); the first Linear maps R^2.
    bounds : (xmin, xmax, ymin, ymax)

    Returns
    -------
    Partition with R regions: polygons, A (R, D, 2), b (R, D), patterns (R, N), psi (R,).

    Raises
    ------
    ValueError
        If ``net`` contains an unsupported module or its input dimension is not 2.
    """
    ops = _parse_network(net)
    xmin, xmax, ymin, ymax = _check_bounds(bounds)
    box = np.array([[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax]])
    scale = max(np.abs(box).max(), float(np.hypot(xmax - xmin, ymax - ymin)))
    area = (xmax - xmin) * (ymax - ymin)
    geom = _Geometry(scale=scale, min_area=_RTOL_AREA * area, eps_point=1e-13 * scale)
    state = _Regions([box], np.eye(2)[None], np.zeros((1, 2)), np.zeros((1, 0), dtype=bool))
    for op in ops:
        state = _apply_linear(state, op) if op.kind == "linear" else _apply_activation(state, op, geom)
    return Partition(
        polygons=state.polys,
        A=state.M,
        b=state.c,
        patterns=state.patterns,
        psi=_psi(state.M),
        bounds=(xmin, xmax, ymin, ymax),
        _ops=ops,
    )
