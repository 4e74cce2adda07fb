"""The CPWL toy of the paper's section 2.1: a ReLU MLP ``G: R^2 -> R^3`` fitted to a bumpy surface.

* :data:`BUMPS` and :func:`bump_surface`: the target manifold, the graph
  ``(u, v) -> (u, v, h(u, v))`` of a sum of five Gaussian bumps over the latent square.
* :func:`make_generator` and :func:`train_generator`: a ReLU MLP (so exactly continuous
  piecewise-linear, ready for :func:`geomlib.core.partition.exact_partition`) and its regression onto
  the surface from uniform latents, with loss history and weight snapshots.
* :func:`kde_log_density`: an isotropic Gaussian kernel density estimate in ``R^3``, used to read
  the density of generated samples on the learned manifold.
* :func:`plot_manifold`, :func:`plot_region` and :func:`region_report`: the chapter's 3-D figure,
  and the picture and text shown by its region explorer.

With ``z`` uniform on the latent square, the density of ``G(z)`` on the manifold is
``p(z) exp(-psi(z))``: where the generator stretches area (large local scaling ``psi``) samples
are spread thin. On the graph of ``h`` the Jacobian is ``[I; grad h]`` and
``psi = 0.5 log(1 + |grad h|^2)``: steep flanks of the bumps should be sparse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from torch import nn
from tqdm.auto import tqdm

from geomlib.core.partition import Partition
from geomlib.runtime.plotting import plot_partition
from geomlib.runtime.profiles import count, torch_threads

__all__ = [
    "BUMPS",
    "CPWL_BUDGETS",
    "LATENT_BOUNDS",
    "Bumps",
    "TrainResult",
    "bump_surface",
    "interior_mask",
    "kde_log_density",
    "make_generator",
    "plot_manifold",
    "plot_region",
    "region_report",
    "sample_latents",
    "snapshot_generator",
    "train_generator",
]

#: The latent domain ``(umin, umax, vmin, vmax)``: latents are uniform on this square.
LATENT_BOUNDS: tuple[float, float, float, float] = (-1.0, 1.0, -1.0, 1.0)


@dataclass(frozen=True)
class CpwlBudget:
    """A profile of chapter 01: the generator (``width`` x ``depth`` ReLU MLP), its training
    (``steps``, ``batch_size``, ``lr``; ``snapshot_steps``: the steps whose weights are kept for the
    animation, 0 = at initialisation), ``n_samples`` latents, the KDE's ``bandwidth`` (output
    units) and ``grid``, the points per side of the target surface's figure."""

    width: int
    depth: int
    steps: int = field(metadata=count(30))
    batch_size: int
    lr: float
    n_samples: int = field(metadata=count(400))
    bandwidth: float
    grid: int = field(metadata=count(11))
    snapshot_steps: tuple[int, ...] = field(metadata=count((0, 10, 30)))


CPWL_BUDGETS: dict[str, CpwlBudget] = {
    "smoke": CpwlBudget(
        width=16,
        depth=2,
        steps=300,
        batch_size=256,
        lr=3e-3,
        n_samples=1500,
        bandwidth=0.12,
        grid=31,
        snapshot_steps=(0, 100, 300),
    ),
    "book": CpwlBudget(
        width=48,
        depth=3,
        steps=6000,
        batch_size=512,
        lr=2e-3,
        n_samples=10_000,
        bandwidth=0.06,
        grid=121,
        snapshot_steps=(0, 25, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000, 4000, 5000, 6000),
    ),
    "paper": CpwlBudget(
        width=128,
        depth=4,
        steps=30_000,
        batch_size=1024,
        lr=1e-3,
        n_samples=50_000,
        bandwidth=0.03,
        grid=201,
        snapshot_steps=(0, 100, 300, 1000, 2000, 5000, 10_000, 15_000, 20_000, 25_000, 30_000),
    ),
}


@dataclass(frozen=True)
class Bumps:
    """Parameters of ``h(u, v) = sum_k a_k exp(-|(u, v) - mu_k|^2 / (2 s_k^2))``.

    Attributes
    ----------
    centers : (K, 2) bump centres ``mu_k``.
    heights : (K,) amplitudes ``a_k``.
    widths : (K,) standard deviations ``s_k`` (> 0).
    """

    centers: tuple[tuple[float, float], ...]
    heights: tuple[float, ...]
    widths: tuple[float, ...]

    def __post_init__(self) -> None:
        k = len(self.centers)
        if len(self.heights) != k or len(self.widths) != k or any(len(c) != 2 for c in self.centers):
            raise ValueError("Bumps needs K centres (u, v), K heights and K widths")
        if any(s <= 0 for s in self.widths):
            raise ValueError(f"bump widths must be > 0, got {self.widths}")


#: The chapter's five bumps: different heights and widths, so that slopes (and hence local
#: scaling) differ from bump to bump; all well inside the latent square.
BUMPS = Bumps(
    centers=((-0.5, -0.45), (0.5, -0.5), (-0.45, 0.5), (0.5, 0.45), (0.0, 0.0)),
    heights=(0.6, 0.9, 0.45, 0.75, 1.0),
    widths=(0.16, 0.22, 0.13, 0.19, 0.25),
)


def bump_surface(uv: torch.Tensor, bumps: Bumps = BUMPS) -> torch.Tensor:
    """The target manifold ``(u, v) -> (u, v, h(u, v))``.

    Parameters
    ----------
    uv : (N, 2) tensor of latent points.
    bumps : the bump parameters (default :data:`BUMPS`).

    Returns
    -------
    (N, 3) tensor, same dtype and device as ``uv``.
    """
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must have shape (N, 2), got {tuple(uv.shape)}")
    centers = torch.tensor(bumps.centers, dtype=uv.dtype, device=uv.device)  # (K, 2)
    heights = torch.tensor(bumps.heights, dtype=uv.dtype, device=uv.device)
    widths = torch.tensor(bumps.widths, dtype=uv.dtype, device=uv.device)
    sq_dist = ((uv[:, None, :] - centers[None]) ** 2).sum(-1)  # (N, K)
    height = (heights * torch.exp(-sq_dist / (2 * widths**2))).sum(-1, keepdim=True)
    return torch.cat([uv, height], dim=1)


def make_generator(width: int, depth: int, *, generator: torch.Generator, out_dim: int = 3) -> nn.Sequential:
    """A ReLU MLP ``R^2 -> R^out_dim`` with ``depth`` hidden layers of ``width`` units.

    Initialised like ``nn.Linear``'s default (uniform in ``+-1/sqrt(fan_in)``) but from
    ``generator``, so the global RNG is never touched.

    Returns
    -------
    ``nn.Sequential`` of Linear/ReLU layers (float32, CPU): exactly what
    :func:`geomlib.core.partition.exact_partition` accepts.
    """
    if width < 1 or depth < 1 or out_dim < 1:
        raise ValueError(f"width, depth and out_dim must be >= 1, got {width}, {depth}, {out_dim}")
    dims = [2] + [width] * depth
    layers: list[nn.Module] = []
    # built on the meta device, so nn.Linear's own initialisation never draws from the global RNG
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(d_in, d_out, device="meta"), nn.ReLU()]
    layers.append(nn.Linear(width, out_dim, device="meta"))
    net = nn.Sequential(*layers).to_empty(device="cpu")
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / np.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return net


def sample_latents(
    n: int,
    *,
    generator: torch.Generator,
    bounds: tuple[float, float, float, float] = LATENT_BOUNDS,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` latents (n, 2) uniform on the box ``bounds = (umin, umax, vmin, vmax)``, drawn
    from ``generator`` (which may live on the CPU or on ``device``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    umin, umax, vmin, vmax = bounds
    if not (umin < umax and vmin < vmax):
        raise ValueError(f"bounds must have umin < umax and vmin < vmax, got {bounds}")
    unit = torch.rand(n, 2, generator=generator, device=generator.device, dtype=dtype).to(device)
    low = torch.tensor([umin, vmin], device=device, dtype=dtype)
    return low + unit * torch.tensor([umax - umin, vmax - vmin], device=device, dtype=dtype)


@dataclass
class TrainResult:
    """What :func:`train_generator` returns.

    Attributes
    ----------
    losses : (steps,) mean squared error of each step's batch.
    snapshots : ``{step: state_dict}`` (CPU copies) at the requested steps; step 0 is the
        initialisation, step ``s`` the weights after ``s`` updates.
    """

    losses: np.ndarray
    snapshots: dict[int, dict[str, torch.Tensor]]


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in net.state_dict().items()}


def train_generator(
    net: nn.Module,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    bumps: Bumps = BUMPS,
    bounds: tuple[float, float, float, float] = LATENT_BOUNDS,
    snapshot_steps: tuple[int, ...] = (),
    progress: bool = True,
    num_threads: int | None = 1,
) -> TrainResult:
    """Fit ``net`` to :func:`bump_surface` by regression on uniform latents (in place).

    Adam with a cosine learning-rate decay (to 5% of ``lr``), which settles the fit so the
    final partition is not the snapshot of a still-jittering optimiser.

    Parameters
    ----------
    net : the generator, on the device training should use.
    steps, batch_size, lr : optimisation budget.
    generator : source of the latent batches (on the CPU or on ``net``'s device).
    snapshot_steps : steps in ``[0, steps]`` at which to keep a copy of the weights.
    num_threads : torch's intra-op CPU threads while training (restored afterwards); ``None``
        keeps the current setting. Layers this small run fastest on one thread, and on a
        shared CPU more threads spin against other processes (measured: 25x slower on 2 cores).

    Returns
    -------
    :class:`TrainResult` with the per-step losses and the snapshots.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    bad = [s for s in snapshot_steps if not 0 <= s <= steps]
    if bad:
        raise ValueError(f"snapshot_steps must lie in [0, {steps}], got {bad}")
    device = next(net.parameters()).device
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=0.05 * lr)
    wanted = set(snapshot_steps)
    snapshots = {0: _cpu_state(net)} if 0 in wanted else {}
    losses = np.empty(steps)
    net.train()
    with torch_threads(num_threads):
        for step in tqdm(range(1, steps + 1), desc="training G", disable=not progress):
            z = sample_latents(batch_size, generator=generator, bounds=bounds, device=device)
            loss = torch.mean((net(z) - bump_surface(z, bumps)) ** 2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses[step - 1] = loss.item()
            if step in wanted:
                snapshots[step] = _cpu_state(net)
    net.eval()
    return TrainResult(losses=losses, snapshots=snapshots)


def snapshot_generator(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A CPU copy of ``net`` with the weights ``state`` (e.g. one of ``TrainResult.snapshots``)."""
    copy_ = copy.deepcopy(net).cpu()
    copy_.load_state_dict(state)
    return copy_.eval()


def kde_log_density(
    samples: torch.Tensor, points: torch.Tensor | None = None, *, bandwidth: float, chunk_size: int = 2048
) -> torch.Tensor:
    """Log of an isotropic Gaussian kernel density estimate, evaluated at ``points``.

    ``log p(x) = logsumexp_i(-|x - x_i|^2 / 2h^2) - log n - (d/2) log(2 pi h^2)``.

    The kernel is isotropic on purpose: on a surface in ``R^3``, a kernel with covariance
    ``H`` integrates to ``1 / sqrt(2 pi n^T H n)`` across the surface (normal ``n``), so an
    anisotropic kernel (``scipy.stats.gaussian_kde`` scales it by the data covariance) would
    make tilted parts of the manifold look sparser or denser than they are.

    Parameters
    ----------
    samples : (n, d) the data.
    points : (m, d) where to evaluate; default ``samples`` (each sample's own kernel then
        adds the same ``K(0) / n`` to every density, which shifts values but keeps their order).
    bandwidth : kernel standard deviation ``h`` (> 0), in the units of the data.
    chunk_size : evaluation points per pass (bounds memory at ``chunk_size * n`` floats).

    Returns
    -------
    (m,) log-densities, in ``samples``' dtype and on its device.
    """
    if samples.ndim != 2 or samples.shape[0] < 1:
        raise ValueError(f"samples must have shape (n, d) with n >= 1, got {tuple(samples.shape)}")
    points = samples if points is None else points
    if points.ndim != 2 or points.shape[1] != samples.shape[1]:
        raise ValueError(f"points must have shape (m, {samples.shape[1]}), got {tuple(points.shape)}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    n, d = samples.shape
    points = points.to(device=samples.device, dtype=samples.dtype)
    norm = np.log(n) + 0.5 * d * np.log(2 * np.pi * bandwidth**2)
    out = [
        torch.logsumexp(-(torch.cdist(chunk, samples) ** 2) / (2 * bandwidth**2), dim=1) - norm
        for chunk in points.split(chunk_size)
    ]
    return torch.cat(out)


def interior_mask(
    z: np.ndarray | torch.Tensor, margin: float, bounds: tuple[float, float, float, float] = LATENT_BOUNDS
) -> np.ndarray:
    """(N,) bool: latents ``z`` (N, 2) at least ``margin`` inside the box (kernel estimates
    lose up to half their mass near the manifold's edge, whatever the local scaling)."""
    z = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    umin, umax, vmin, vmax = bounds
    return (
        (z[:, 0] >= umin + margin)
        & (z[:, 0] <= umax - margin)
        & (z[:, 1] >= vmin + margin)
        & (z[:, 1] <= vmax - margin)
    )


def plot_manifold(
    ax,
    partition: Partition,
    values: np.ndarray,
    *,
    cmap: str = "viridis",
    norm: Normalize | None = None,
    edgecolor: str = "none",
) -> Poly3DCollection:
    """Draw the learned manifold exactly: every region's polygon mapped by its affine map.

    Parameters
    ----------
    ax : a 3-D axes (``projection="3d"``).
    partition : the exact partition of a generator ``R^2 -> R^3``.
    values : (R,) one colour value per region (e.g. ``partition.psi``).
    """
    if partition.A.shape[1] != 3:
        raise ValueError(f"plot_manifold needs a map into R^3, got R^{partition.A.shape[1]}")
    values = np.asarray(values)
    if values.shape != (len(partition),):
        raise ValueError(f"values must have shape ({len(partition)},), got {values.shape}")
    faces = [poly @ A.T + b for poly, A, b in zip(partition.polygons, partition.A, partition.b, strict=True)]
    norm = norm or Normalize(float(values.min()), float(values.max()))
    collection = Poly3DCollection(faces, cmap=cmap, norm=norm, edgecolor=edgecolor, linewidth=0.1)
    collection.set_array(values)
    ax.add_collection3d(collection)
    points = np.concatenate(faces)
    for axis, lo, hi in zip("xyz", points.min(0), points.max(0), strict=True):
        getattr(ax, f"set_{axis}lim")(lo, hi)
    return collection


def plot_region(
    partition: Partition,
    index: int,
    point: tuple[float, float] | None = None,
    *,
    norm: Normalize | None = None,
) -> Figure:
    """Region ``index`` outlined in red on the partition coloured by ``psi``: the whole box on
    the left, a zoom on the region and its neighbours on the right.

    Parameters
    ----------
    partition : an exact partition (its ``polygons`` and ``psi`` are drawn).
    index : the region to highlight, in ``[0, len(partition))``.
    point : optional ``(u, v)`` marked with a cross (e.g. the point that picked the region).
    norm : colour limits for ``psi``, shared with the chapter's other figures.
    """
    if not 0 <= index < len(partition):
        raise ValueError(f"region index must be in [0, {len(partition)}), got {index}")
    polygon = partition.polygons[index]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax in axes:
        plot_partition(ax, partition.polygons, partition.psi, norm=norm, linewidth=0.1)
        plot_partition(ax, [polygon], edgecolor="red", linewidth=1.5)
        if point is not None:
            ax.plot(*point, "r+", ms=10)
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    pad = 0.75 * float((high - low).max())
    axes[0].set(xlim=partition.bounds[:2], ylim=partition.bounds[2:], title="the latent square")
    axes[1].set(
        xlim=(low[0] - pad, high[0] + pad),
        ylim=(low[1] - pad, high[1] + pad),
        title=f"zoom on region {index}",
    )
    fig.tight_layout()
    return fig


def region_report(partition: Partition, index: int) -> str:
    """A few lines on region ``index``: its affine map ``G(x) = A x + b``, singular values of
    ``A``, local scaling, area and vertex count."""
    if not 0 <= index < len(partition):
        raise ValueError(f"region index must be in [0, {len(partition)}), got {index}")
    A, b = partition.A[index], partition.b[index]
    sigma = np.linalg.svd(A, compute_uv=False)
    rows = "\n".join(f"    [{a[0]:+.3f} {a[1]:+.3f}]   [{c:+.3f}]" for a, c in zip(A, b, strict=True))
    return (
        f"region {index} of {len(partition)}: area {partition.areas[index]:.2e}, "
        f"{len(partition.polygons[index])} vertices\n"
        f"G(x) = A x + b with\n    A                  b\n{rows}\n"
        f"singular values of A: {np.array2string(sigma, precision=3)}\n"
        f"local scaling psi = sum log s_i = {partition.psi[index]:+.3f}"
    )
