"""Chapter 02 with the training seed as the sample: the same model trained from several seeds,
its on/off-manifold gap per checkpoint, and the paper's two claims checked across seeds (one
training run is one sample, however many grid points it is measured at)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geomlib.chapters.toy_ddpm.geometry import descriptors_across_training, gap_claims, manifold_gap
from geomlib.chapters.toy_ddpm.model import (
    Denoiser,
    LinearSchedule,
    ToyDdpmBudget,
    TrainingRun,
    checkpoint_directory,
    train_ddpm,
)
from geomlib.core.claims import ClaimCheck, paired_claim_check
from geomlib.core.stats import mean_interval

#: The paper's t/T of the smallest on/off-manifold gap.
PAPER_T_SMALLEST = 0.17


def train_replicates(
    data: torch.Tensor,
    schedule: LinearSchedule,
    budget: ToyDdpmBudget,
    seeds: Sequence[int],
    *,
    dataset: str,
    activation: str = "relu",
    device: torch.device | str | None = None,
    checkpoint_root: str | Path | None = None,
    progress: bool = True,
) -> dict[int, TrainingRun]:
    """One training run per seed with the budget's model and checkpoints (initial weights and
    batches both from the seed); each resumes from its own checkpoint folder under
    ``checkpoint_root`` (:func:`~geomlib.chapters.toy_ddpm.model.checkpoint_directory`'s default:
    the one the chapter's main run uses for the same seed)."""
    runs = {}
    for seed in tqdm(seeds, desc="training seeds", disable=not progress):
        settings = {
            key: getattr(budget, key)
            for key in ("n_steps", "hidden", "depth", "time_dim", "batch_size", "lr")
        }
        model = Denoiser(
            hidden=budget.hidden,
            depth=budget.depth,
            time_dim=budget.time_dim,
            activation=activation,
            seed=seed,
        ).to(device)
        folder = checkpoint_directory(
            "02_toy_ddpm",
            {**settings, "dataset": dataset, "activation": activation, "seed": seed},
            root=checkpoint_root,
        )
        runs[seed] = train_ddpm(
            model,
            data,
            schedule,
            n_iters=budget.n_iters,
            batch_size=budget.batch_size,
            lr=budget.lr,
            seed=seed,
            checkpoint_dir=folder,
            checkpoint_at=budget.checkpoints,
            progress=False,
        )
    return runs


def replicate_gaps(
    runs: Mapping[int, TrainingRun],
    grid: torch.Tensor,
    on_manifold: np.ndarray,
    timesteps: Sequence[int],
    *,
    radius: float,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """``{descriptor: (S, C, n_t)}``: the on/off-manifold gap of every run (in the order of
    ``runs``), checkpoint and timestep, on ``grid`` with its ``on_manifold`` mask."""
    per_run = []
    for run in runs.values():
        values = descriptors_across_training(
            run.checkpoints, grid, timesteps, radius=radius, device=device, progress=False
        )
        per_run.append({name: manifold_gap(v, on_manifold) for name, v in values.items()})
    return {name: np.stack([gaps[name] for gaps in per_run]) for name in per_run[0]}


def seed_claims(
    gaps: Mapping[str, np.ndarray],
    iterations: Sequence[int],
    timesteps: Sequence[int],
    n_steps: int,
    *,
    relative_interest: float = 0.1,
) -> pd.DataFrame:
    """The paper's claims across ``S`` seeds, from ``gaps = {descriptor: (S, C, n_t)}``.

    Per descriptor: ``grows``, the four-way :func:`~geomlib.core.claims.paired_claim_check` that
    ``max_t |gap|`` is larger at the last checkpoint than at the first (the seeds paired), with an
    effect of interest of ``relative_interest`` times its mean at the first checkpoint; and the
    estimate of the ``t/T`` of the smallest ``|gap|`` at the last checkpoint, its mean over seeds
    with a 95 % t interval (``t_low``, ``t_high``, ``t_half_width``) and whether the interval holds
    :data:`PAPER_T_SMALLEST`.
    """
    rows = []
    for name, gap in gaps.items():
        per_seed = [gap_claims({name: g}, iterations, timesteps, n_steps)[name] for g in np.asarray(gap)]
        max_abs = np.stack([claims["max_abs_gap"] for claims in per_seed])  # (S, C)
        t_last = np.array([claims["t_smallest"][-1] for claims in per_seed])
        interest = relative_interest * float(max_abs[:, 0].mean())
        grows: ClaimCheck = paired_claim_check(
            max_abs[:, 0], max_abs[:, -1], claimed_sign=1, smallest_effect=interest if interest > 0 else 1e-12
        )
        location = mean_interval(t_last)
        rows.append(
            {
                "descriptor": name,
                "seeds": len(t_last),
                "first": float(max_abs[:, 0].mean()),
                "last": float(max_abs[:, -1].mean()),
                "grows": grows.verdict,
                "change": grows.effect,
                "low": grows.low,
                "high": grows.high,
                "detectable": grows.detectable,
                "interest": grows.smallest_effect,
                "check": grows,
                "t_smallest": location["mean"],
                "t_low": location["low"],
                "t_high": location["high"],
                "t_half_width": (location["high"] - location["low"]) / 2,
                "holds_paper_t": bool(location["low"] <= PAPER_T_SMALLEST <= location["high"]),
            }
        )
    return pd.DataFrame(rows)
