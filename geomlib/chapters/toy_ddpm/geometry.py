"""Local geometry of a toy DDPM's denoiser over the input plane (paper section 3.1, Fig. 13).

For a fixed timestep ``t`` the denoiser is a map ``x -> eps_theta(x, t)`` from ``R^2`` to ``R^2``;
its descriptors at every point of a grid come from the foundation kernels through
:func:`geomlib.describe`: ψ and ν from the exact ``2 x 2`` Jacobian, δ from a ``P = 2``
cross-polytope of radius ``r``. Grid points within ``0.05`` (normalised units) of a training
point are *on* the manifold, the rest *off*; the chapter compares the two groups across ``t`` and
across training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from geomlib.chapters.toy_ddpm.model import Denoiser, DenoiserAtTime, load_checkpoint
from geomlib.core.descriptors import DESCRIPTOR_NAMES, describe
from geomlib.runtime.profiles import torch_threads

#: The paper's window, in normalised units: ``(xmin, xmax, ymin, ymax)``.
PAPER_EXTENT: tuple[float, float, float, float] = (-6.0, 6.0, -6.0, 6.0)
#: Distance (normalised units) within which a grid point counts as on the data manifold.
ON_MANIFOLD_RADIUS: float = 0.05


def plane_grid(
    extent: Sequence[float] = PAPER_EXTENT, resolution: int = 200, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(R * R, 2)`` cell centres of an ``R x R`` grid over ``extent``, row-major from the bottom.

    ``grid.reshape(R, R, 2)[i, j] = (x_j, y_i)``, so values computed on the grid reshape to
    ``(R, R)`` images for ``imshow(origin="lower", extent=extent)``.
    """
    xmin, xmax, ymin, ymax = (float(v) for v in extent)
    if resolution < 1 or not (xmin < xmax and ymin < ymax):
        raise ValueError(f"need resolution >= 1 and a non-empty extent, got {resolution}, {extent}")
    half_x, half_y = (xmax - xmin) / (2 * resolution), (ymax - ymin) / (2 * resolution)
    xs = torch.linspace(xmin + half_x, xmax - half_x, resolution, dtype=torch.float64)
    ys = torch.linspace(ymin + half_y, ymax - half_y, resolution, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2).to(dtype)


def evenly_spaced_timesteps(n_steps: int, count: int) -> list[int]:
    """``count`` distinct timesteps from ``0`` to ``n_steps - 1``, evenly spaced, ascending."""
    if not 1 <= count <= n_steps:
        raise ValueError(f"count must be between 1 and n_steps={n_steps}, got {count}")
    return sorted({int(round(v)) for v in np.linspace(0, n_steps - 1, count)})


@torch.no_grad()
def denoiser_descriptors(
    model: Denoiser,
    points: torch.Tensor,
    timesteps: Sequence[int],
    *,
    radius: float,
    n_dirs: int = 2,
    directions: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 16_384,
    progress: bool = True,
    threads: int | None = 1,
) -> dict[str, np.ndarray]:
    """ψ, ν and δ of ``x -> eps_theta(x, t)`` at every point, for every timestep.

    Parameters
    ----------
    model
        the denoiser; ``points`` are moved to its device.
    points
        ``(N, 2)`` inputs, e.g. :func:`plane_grid`.
    timesteps
        the ``n_t`` timesteps (integers in ``0 .. T-1``).
    radius, n_dirs, directions, seed
        the cross-polytope of δ (see :func:`geomlib.local_complexity`): ``n_dirs`` seeded random
        orthonormal directions, or explicit ``(P, 2)`` ``directions``.
    batch_size
        points per call of :func:`geomlib.describe` (bounds memory).
    threads
        CPU threads meanwhile (see :func:`geomlib.runtime.profiles.torch_threads`).

    Returns
    -------
    ``{name: (n_t, N) float64 array}`` for the names in :data:`DESCRIPTOR_NAMES`.
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {tuple(points.shape)}")
    device = next(model.parameters()).device
    points = points.to(device=device, dtype=next(model.parameters()).dtype)
    out = {name: np.empty((len(timesteps), len(points))) for name in DESCRIPTOR_NAMES}
    with torch_threads(threads):
        for row, t in enumerate(tqdm(timesteps, desc="descriptors", disable=not progress, leave=False)):
            f = DenoiserAtTime(model, t).eval()
            for start in range(0, len(points), batch_size):
                batch = points[start : start + batch_size]
                d = describe(
                    f,
                    batch,
                    method="exact",
                    radius=radius,
                    n_dirs=None if directions is not None else n_dirs,
                    directions=directions,
                    seed=seed,
                )
                for name in DESCRIPTOR_NAMES:
                    out[name][row, start : start + len(batch)] = getattr(d, name).double().cpu().numpy()
    return out


def descriptors_across_training(
    checkpoints: Mapping[int, str | Path],
    points: torch.Tensor,
    timesteps: Sequence[int],
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    **kwargs,
) -> dict[str, np.ndarray]:
    """:func:`denoiser_descriptors` of every checkpoint, ``{name: (C, n_t, N)}``, ordered by iteration.

    ``checkpoints`` maps training iterations to checkpoint files (``TrainingRun.checkpoints``);
    ``kwargs`` go to :func:`denoiser_descriptors`.
    """
    if not checkpoints:
        raise ValueError("no checkpoints given")
    per_checkpoint = []
    for iteration in tqdm(sorted(checkpoints), desc="checkpoints", disable=not progress):
        model, _ = load_checkpoint(checkpoints[iteration], device=device)
        per_checkpoint.append(denoiser_descriptors(model, points, timesteps, progress=False, **kwargs))
    return {name: np.stack([d[name] for d in per_checkpoint]) for name in DESCRIPTOR_NAMES}


def nearest_distances(
    points: torch.Tensor | np.ndarray, data: torch.Tensor | np.ndarray, chunk_size: int = 8192
) -> np.ndarray:
    """``(N,)`` Euclidean distance from each of ``points: (N, 2)`` to its nearest row of ``data: (M, 2)``."""
    points = torch.as_tensor(points, dtype=torch.float64).cpu()
    data = torch.as_tensor(data, dtype=torch.float64).cpu()
    if points.ndim != 2 or data.ndim != 2 or points.shape[1] != data.shape[1] or len(data) == 0:
        raise ValueError(
            f"need points (N, D) and non-empty data (M, D), got {tuple(points.shape)}, {tuple(data.shape)}"
        )
    parts = [torch.cdist(chunk, data).amin(dim=1) for chunk in points.split(chunk_size)]
    return torch.cat(parts).numpy()


def on_manifold_mask(
    points: torch.Tensor | np.ndarray, data: torch.Tensor | np.ndarray, radius: float = ON_MANIFOLD_RADIUS
) -> np.ndarray:
    """``(N,)`` bool: is each of ``points: (N, 2)`` within ``radius`` of a row of ``data: (M, 2)``?"""
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    return nearest_distances(points, data) <= radius


def manifold_gap(values: np.ndarray, on_manifold: np.ndarray) -> np.ndarray:
    """``E_M[Φ] - E_off[Φ]``: mean over on-manifold points minus mean over the others.

    ``values: (..., N)``, ``on_manifold: (N,)`` bool; returns ``(...)``.
    """
    values, on_manifold = np.asarray(values, dtype=np.float64), np.asarray(on_manifold, dtype=bool)
    if on_manifold.ndim != 1 or values.shape[-1] != len(on_manifold):
        raise ValueError(
            f"on_manifold must be (N,) with N = values.shape[-1], got {on_manifold.shape}, {values.shape}"
        )
    if on_manifold.all() or not on_manifold.any():
        raise ValueError("need points both on and off the manifold: refine the grid or widen it")
    return values[..., on_manifold].mean(axis=-1) - values[..., ~on_manifold].mean(axis=-1)


def gap_claims(
    gaps: Mapping[str, np.ndarray], iterations: Sequence[int], timesteps: Sequence[int], n_steps: int
) -> dict[str, dict]:
    """The paper's two checks on the gap curves ``{name: (C, n_t)}`` of ``C`` checkpoints.

    Returns, per descriptor: ``max_abs_gap`` (``(C,)``, ``max_t |gap|`` per checkpoint, in the
    order of ``iterations``), ``spearman`` (rank correlation of that with the iteration; ``nan``
    for fewer than 3 checkpoints), ``grows`` (last checkpoint above the first and ``spearman > 0``
    where defined), and ``t_smallest`` (``(t + 1) / T`` at which ``|gap|`` is smallest, per
    checkpoint).
    """
    iteration_array, timestep_array = np.asarray(iterations), np.asarray(timesteps)
    report = {}
    for name, gap in gaps.items():
        gap = np.asarray(gap)
        if gap.shape != (len(iterations), len(timesteps)):
            raise ValueError(
                f"gaps[{name!r}] must be (C={len(iterations)}, n_t={len(timesteps)}), got {gap.shape}"
            )
        max_abs = np.abs(gap).max(axis=1)
        rho = float(spearmanr(iteration_array, max_abs)[0]) if len(iterations) >= 3 else float("nan")
        grows = bool(max_abs[-1] > max_abs[0] and (np.isnan(rho) or rho > 0))
        t_smallest = (timestep_array[np.abs(gap).argmin(axis=1)] + 1) / n_steps
        report[name] = {"max_abs_gap": max_abs, "spearman": rho, "grows": grows, "t_smallest": t_smallest}
    return report
