"""Chapter 00's map of spectrum methods, on a small network whose exact spectrum is the truth."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from geomlib.chapters.jacobian_sketches import (
    SKETCHING_BUDGETS,
    SketchingBudget,
    frontier,
    method_table,
    plot_frontier,
    plot_psi_against_exact,
    plot_spectra,
)
from geomlib.core.descriptors import local_scaling

IN_DIM, OUT_DIM = 16, 48
BUDGET = SketchingBudget(n_latents=3, ks=(4, OUT_DIM), top_ks=(4,), slq_accuracies=(0.1,))


@pytest.fixture(scope="module")
def network():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(IN_DIM, 32, generator=generator, dtype=torch.float64) / 4
    second = torch.randn(32, OUT_DIM, generator=generator, dtype=torch.float64) / 6
    latents = torch.randn(BUDGET.n_latents, IN_DIM, generator=generator, dtype=torch.float64)
    return (lambda z: torch.tanh(z @ first) @ second), latents


@pytest.fixture(scope="module")
def table(network):
    f, latents = network
    return method_table(f, latents, BUDGET, progress=False)


def test_exact_is_the_jacobian_of_autograd_and_scores_zero(network, table):
    f, latents = network
    rows, per_latent = table
    for index, found in enumerate(per_latent):
        jacobian = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], latents[index])
        truth = torch.linalg.svdvals(jacobian).numpy()
        np.testing.assert_allclose(found["exact"].sigma, truth, rtol=1e-8)
        assert found["exact"].products == IN_DIM
    exact = rows[rows.setting == "exact"]
    assert (exact.psi_error == 0).all() and (exact.nu_error == 0).all() and (exact.top_error == 0).all()


def test_the_sketch_interlaces_and_a_full_sketch_is_exact(table):
    rows, per_latent = table
    small = rows[rows.setting == "projected k=4"]
    assert small.below_exact.all()
    # four of the 48 rows see only part of J: ψ of four values is far from ψ of sixteen
    assert (small.psi_error > 0.1).all()
    full = rows[rows.setting == f"projected k={OUT_DIM}"]
    assert (full.psi_error < 1e-8).all() and (full.top_error < 1e-8).all()
    assert (full.products == OUT_DIM).all()
    for found in per_latent:
        assert local_scaling(torch.tensor(found["exact"].sigma)[None]).item() == pytest.approx(
            found["exact"].psi
        )


def test_lanczos_and_slq_are_close_to_exact_at_their_stated_accuracy(table):
    rows, per_latent = table
    lanczos = rows[rows.setting == "lanczos k=4"]
    assert (lanczos.top_error < 1e-5).all()
    slq = rows[rows.setting == "slq accuracy=0.1"]
    for (_, row), found in zip(slq.iterrows(), per_latent, strict=True):
        magnitude = np.abs(np.log(found["exact"].sigma)).sum()
        assert row.psi_error * magnitude <= 4 * row.psi_stderr + 1e-9
        assert row.psi_stderr <= 0.1 * magnitude


def test_frontier_has_one_row_per_setting_and_exact_ranks_itself_perfectly(table):
    rows, _ = table
    summary = frontier(rows)
    assert list(summary.setting) == list(dict.fromkeys(rows.setting))
    exact = summary.set_index("setting").loc["exact"]
    assert exact.psi_spearman == pytest.approx(1.0) and exact.nu_spearman == pytest.approx(1.0)
    assert exact.products == IN_DIM
    randomized = summary.set_index("setting").loc["randomized k=4"]
    assert randomized.products == 6 * min(4 + 10, IN_DIM)  # (power_iters + 1) * l each way


def test_plots_draw_every_method(table):
    rows, per_latent = table
    summary = frontier(rows)
    fig = plot_frontier(summary)
    assert isinstance(fig, Figure)
    assert {line.get_label() for line in fig.axes[0].get_lines()} >= set(summary.method)
    ax = plot_spectra(per_latent[0], ["projected k=4", "lanczos k=4"])
    assert len(ax.get_lines()) == 3
    assert isinstance(plot_psi_against_exact(rows, ["projected k=4", "slq accuracy=0.1"]), Figure)


def test_every_profile_runs_exact_and_the_papers_sketch():
    for budget in SKETCHING_BUDGETS.values():
        assert budget.n_latents >= 3  # rank correlations need three latents
        assert budget.ks and budget.top_ks and budget.slq_accuracies
    assert 120 in SKETCHING_BUDGETS["book"].ks
