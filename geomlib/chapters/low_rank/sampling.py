"""Deterministic DDIM sampling with a posterior-mean predictor, its schedules, and the
nearest-neighbour generalisation score of chapter 07."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from geomlib.core.diffusion import ddim_step


@torch.no_grad()
def ddim_sample(
    pmp: Callable[[torch.Tensor, int], torch.Tensor],
    alpha_bar: torch.Tensor,
    x_start: torch.Tensor,
    timesteps: Sequence[int],
    *,
    denoise_last: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``x_start`` at ``timesteps[0]`` along ``timesteps``.

    Each step predicts ``x0_hat = pmp(x_t, t)``, the implied noise ``eps = (x_t - s_t x0_hat) / sigma_t``,
    and moves to ``x_{t'} = s_{t'} x0_hat + sigma_{t'} eps``.

    Parameters
    ----------
    pmp
        ``(x_t: (B, ...), t: int) -> x0_hat: (B, ...)``.
    alpha_bar
        ``(T,)`` schedule.
    x_start
        ``(B, ...)`` the state at ``timesteps[0]``.
    timesteps
        strictly decreasing integer timesteps.
    denoise_last
        return ``x0_hat`` at ``timesteps[-1]`` (a clean sample); ``False``: the noisy state there.
    """
    steps = [int(t) for t in timesteps]
    if (
        not steps
        or any(a <= b for a, b in zip(steps[:-1], steps[1:], strict=True))
        or steps[-1] < 0
        or steps[0] >= len(alpha_bar)
    ):
        raise ValueError(f"timesteps must decrease strictly within [0, {len(alpha_bar)}), got {steps}")
    x_t = x_start
    pairs = list(zip(steps[:-1], steps[1:], strict=True))
    for t, t_next in tqdm(pairs, desc="DDIM", disable=not progress, leave=False):
        x0_hat = pmp(x_t, t)
        x_t = ddim_step(x_t, x0_hat, float(alpha_bar[t]), float(alpha_bar[t_next]))
    return pmp(x_t, steps[-1]) if denoise_last else x_t


def ddim_timesteps(start: int, n_steps: int) -> list[int]:
    """``n_steps`` evenly spaced, strictly decreasing integer timesteps from ``start`` to 0."""
    if start < 0 or n_steps < 1:
        raise ValueError(f"need start >= 0 and n_steps >= 1, got {start}, {n_steps}")
    grid = torch.linspace(start, 0, min(n_steps, start + 1)).round().long().unique_consecutive()
    return grid.tolist()


def split_timesteps(timesteps: Sequence[int], t_split: int) -> tuple[list[int], list[int]]:
    """Split a decreasing schedule at the timestep nearest ``t_split``, which ends the first part and
    starts the second: ``(before, after)``, ``before[-1] == after[0]``."""
    steps = [int(t) for t in timesteps]
    if len(steps) < 3:
        raise ValueError(f"need at least three timesteps to split, got {steps}")
    index = min(range(len(steps)), key=lambda i: abs(steps[i] - t_split))
    index = min(max(index, 1), len(steps) - 2)  # both parts take at least one step
    return steps[: index + 1], steps[index:]


def generalisation_score(generated: torch.Tensor, train: torch.Tensor, chunk_size: int = 4096) -> float:
    """Mean over generated samples of ``min_i ||g - x_i|| / ||g||``, a nearest-neighbour
    generalisation score in the spirit of Wang et al. (2024): 0 when every sample is a copy of a
    training point, large when samples are new. Compare it with the score of fresh samples from
    the data distribution (what a perfect generaliser gets with the same training set).

    Parameters
    ----------
    generated
        ``(M, d)``.
    train
        ``(N, d)``.
    """
    if generated.ndim != 2 or train.ndim != 2 or generated.shape[1] != train.shape[1]:
        raise ValueError(f"need (M, d) and (N, d), got {tuple(generated.shape)} and {tuple(train.shape)}")
    distances = [
        torch.cdist(generated.double(), train[i : i + chunk_size].double()).min(1).values
        for i in range(0, len(train), chunk_size)
    ]
    nearest = torch.stack(distances).min(0).values
    return float((nearest / generated.double().norm(dim=-1).clamp_min(1e-12)).mean())
