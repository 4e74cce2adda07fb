"""Chapter 02 across training seeds: the claims with the seed as the sample, and runs that
resume from the chapter's own checkpoint folders."""

import dataclasses

import numpy as np
import pytest

import geomlib
from geomlib.chapters import toy_ddpm as D


def test_seed_claims_pair_the_seeds_and_estimate_the_smallest_gap():
    rng = np.random.default_rng(0)
    timesteps, iterations = [0, 9, 19, 29, 39], [10, 100, 1000]
    base = np.array([3.0, 1.0, 0.2, -1.0, -2.0])  # |gap| smallest at t = 19, i.e. t/T = 0.5
    growing = np.stack([np.stack([base, 2 * base, (3 + 0.1 * rng.normal()) * base]) for _ in range(6)])
    flat = np.stack([np.stack([base * (1 + 0.3 * rng.normal()) for _ in iterations]) for _ in range(6)])
    claims = D.seed_claims({"local_scaling": growing, "local_rank": flat}, iterations, timesteps, 40)
    claims = claims.set_index("descriptor")
    grows = claims.loc["local_scaling"]
    assert grows["grows"] == "as claimed" and grows["seeds"] == 6
    assert grows["first"] == pytest.approx(3.0) and grows["change"] == pytest.approx(grows["last"] - 3.0)
    assert grows["t_smallest"] == pytest.approx(0.5) and grows["t_half_width"] == 0  # every seed agrees
    assert not grows["holds_paper_t"]
    assert claims.loc["local_rank", "grows"] != "as claimed"
    one = D.seed_claims({"local_scaling": growing[:1]}, iterations, timesteps, 40).iloc[0]
    assert one["grows"] == "undecided at this sample size"  # one run decides nothing


def test_replicates_resume_their_runs_and_differ_by_seed(tmp_path):
    budget = geomlib.select_budget(D.TOY_DDPM_BUDGETS, "smoke", dry_run=True)
    budget = dataclasses.replace(budget, n_iters=20, checkpoints=(10, 20))
    data, schedule = D.load_datasaurus("dino"), D.LinearSchedule(budget.n_steps)
    runs = D.train_replicates(
        data, schedule, budget, [0, 1], dataset="dino", checkpoint_root=tmp_path, progress=False
    )
    assert [r.resumed_from for r in runs.values()] == [0, 0] and sorted(runs[0].checkpoints) == [10, 20]
    again = D.train_replicates(
        data, schedule, budget, [0, 1], dataset="dino", checkpoint_root=tmp_path, progress=False
    )
    assert [r.resumed_from for r in again.values()] == [20, 20]  # nothing trained twice
    grid = D.plane_grid(D.PAPER_EXTENT, budget.seed_grid)
    on = D.on_manifold_mask(grid, data, radius=0.5)
    gaps = D.replicate_gaps(runs, grid, on, [0, 20], radius=budget.radius)
    assert gaps["local_scaling"].shape == (2, 2, 2)
    assert not np.allclose(gaps["local_scaling"][0], gaps["local_scaling"][1])  # other weights
