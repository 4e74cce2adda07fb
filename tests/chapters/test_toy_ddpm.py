"""Tests for the toy DDPM (geomlib.chapters.toy_ddpm.model, ddpm_geometry) and the Datasaurus loader.

Truth comes from outside the code under test: the sha256 written in data/datasaurus.md, closed
forms of the schedule and of Bayes-optimal denoisers, finite-difference Jacobians, pre-activations
recomputed layer by layer from the weights, and brute-force distances.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from geomlib.chapters.toy_ddpm import model as ddpm_module
from geomlib.chapters.toy_ddpm.datasaurus import (
    DATASAURUS_SETS,
    datasaurus_path,
    denormalise,
    load_datasaurus,
    normalise,
)
from geomlib.chapters.toy_ddpm.geometry import (
    denoiser_descriptors,
    gap_claims,
    manifold_gap,
    on_manifold_mask,
    plane_grid,
)
from geomlib.chapters.toy_ddpm.model import Denoiser, LinearSchedule, load_checkpoint, sample_ddpm, train_ddpm

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- data


def test_shipped_csv_matches_its_provenance_note():
    recorded = re.search(
        r"sha256 of `datasaurus.csv` \| `([0-9a-f]{64})`", (ROOT / "data/datasaurus.md").read_text()
    )
    assert recorded is not None
    assert hashlib.sha256(datasaurus_path().read_bytes()).hexdigest() == recorded.group(1)
    sets = [load_datasaurus(name, normalised=False) for name in DATASAURUS_SETS]
    assert all(s.shape == (142, 2) for s in sets)
    # the point of the Dozen: the same means (54.26, 47.83) in every set
    np.testing.assert_allclose([s.mean(axis=0) for s in sets], [[54.26, 47.83]] * 13, atol=0.01)


def test_normalisation_is_the_tiny_diffusion_convention():
    canvas = np.array([[54.0, 48.0], [81.0, 72.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalise(canvas), [[0, 0], [2, 2], [-4, -4]])
    np.testing.assert_allclose(denormalise(normalise(canvas)), canvas)
    with pytest.raises(ValueError):
        load_datasaurus("t-rex")


# ----------------------------------------------------------------------------- schedule and sampler


def test_schedule_matches_closed_form():
    schedule = LinearSchedule(1000)
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(
        0.02
    )
    short = LinearSchedule(10, beta_start=0.1, beta_end=0.5)
    betas = [0.1 + 0.4 * i / 9 for i in range(10)]
    np.testing.assert_allclose(short.alpha_bars.numpy(), np.cumprod([1 - b for b in betas]), rtol=1e-12)
    x0, noise, t = torch.ones(1, 2), torch.full((1, 2), 2.0), torch.tensor([3])
    a = math.prod(1 - b for b in betas[:4])
    np.testing.assert_allclose(
        short.add_noise(x0, noise, t).numpy(), [[math.sqrt(a) + 2 * math.sqrt(1 - a)] * 2], rtol=1e-6
    )


def test_sampler_with_the_exact_denoiser_of_a_point_mass_returns_the_point():
    schedule, point = LinearSchedule(30), torch.tensor([1.5, -0.5], dtype=torch.float64)

    def oracle(x, t):  # data = delta(point): eps = (x_t - sqrt(a) x0) / sqrt(1 - a) exactly
        a = schedule.alpha_bars[t].unsqueeze(-1)
        return (x - a.sqrt() * point) / (1 - a).sqrt()

    samples = sample_ddpm(
        oracle, schedule, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    torch.testing.assert_close(samples, point.expand(64, 2), atol=1e-9, rtol=0)


def _ddpm_gaussian_moments(betas: list[float], mean: float, std: float) -> tuple[float, float]:
    """Mean and variance of ancestral DDPM sampling (Ho et al. 2020, eq. 11, sigma_t^2 = beta_tilde_t)
    for data N(mean, std^2): with the exact eps the chain is linear-Gaussian, so the moments follow
    a scalar recursion, started from x_{T-1} ~ N(0, 1)."""
    bars = np.cumprod([1 - b for b in betas])
    m, v = 0.0, 1.0
    for t in range(len(betas) - 1, -1, -1):
        a, beta = bars[t], betas[t]
        gain = math.sqrt(1 - a) / (a * std**2 + 1 - a)  # eps = gain * (x - sqrt(a) mean)
        c1 = (1 - beta / math.sqrt(1 - a) * gain) / math.sqrt(1 - beta)
        c0 = beta / math.sqrt(1 - a) * gain * math.sqrt(a) * mean / math.sqrt(1 - beta)
        noise_var = beta * (1 - bars[t - 1]) / (1 - a) if t > 0 else 0.0
        m, v = c1 * m + c0, c1**2 * v + noise_var
    return m, v


@pytest.mark.parametrize("n_steps", [8, 1000])
def test_sampler_with_the_exact_denoiser_of_a_gaussian_has_the_predicted_moments(n_steps):
    schedule, mean, std = LinearSchedule(n_steps), torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5

    def oracle(x, t):  # data = N(mean, std^2 I): E[eps | x_t] is linear in x_t
        a = schedule.alpha_bars[t].unsqueeze(-1)
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * std**2 + 1 - a)

    samples = sample_ddpm(
        oracle, schedule, 4000, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    betas = schedule.betas.tolist()
    for axis in range(2):
        m, v = _ddpm_gaussian_moments(betas, mean[axis].item(), std)
        assert samples[:, axis].mean().item() == pytest.approx(m, abs=4 * math.sqrt(v / 4000))
        assert samples[:, axis].std().item() == pytest.approx(math.sqrt(v), rel=0.05)
    if n_steps == 1000:  # a long chain samples the data distribution itself
        torch.testing.assert_close(
            samples.std(0), torch.full((2,), std, dtype=torch.float64), atol=0.025, rtol=0
        )


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained():
    """A small denoiser trained on the dino for 1000 steps, and its untrained twin."""
    data, schedule = load_datasaurus("dino"), LinearSchedule(40)
    untrained, model = (
        Denoiser(hidden=64, depth=3, time_dim=16, seed=3),
        Denoiser(hidden=64, depth=3, time_dim=16, seed=3),
    )
    train_ddpm(model, data, schedule, n_iters=1000, batch_size=128, lr=3e-3, seed=0, progress=False)
    return data, schedule, untrained, model


def _held_out_loss(model, data, schedule) -> float:
    """The epsilon loss on a fixed batch, with x_t formed here from the closed form."""
    g = torch.Generator().manual_seed(123)
    x0 = torch.as_tensor(data, dtype=torch.float32)[torch.randint(len(data), (4096,), generator=g)]
    t = torch.randint(schedule.n_steps, (4096,), generator=g)
    eps = torch.randn(4096, 2, generator=g)
    a = torch.cumprod(1 - schedule.betas, 0)[t].float().unsqueeze(-1)
    with torch.no_grad():
        return torch.mean((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps) ** 2).item()


def test_training_reduces_the_loss(trained):
    data, schedule, untrained, model = trained
    before, after = _held_out_loss(untrained, data, schedule), _held_out_loss(model, data, schedule)
    assert after < 0.6 * before, (before, after)


def test_samples_land_near_the_data(trained):
    data, schedule, _, model = trained
    samples = sample_ddpm(model, schedule, 500, generator=torch.Generator().manual_seed(0)).double().numpy()
    rng = np.random.default_rng(0)
    uniform = rng.uniform(-6, 6, size=(500, 2))  # noise over the paper's window
    gaussian = rng.multivariate_normal(data.mean(0), np.cov(data.T), size=500)  # first two moments only

    def mean_nn(points):  # brute force
        return np.sqrt(((points[:, None, :] - data[None]) ** 2).sum(-1)).min(1).mean()

    assert mean_nn(samples) < 0.25 * mean_nn(uniform)
    assert mean_nn(samples) < 0.8 * mean_nn(gaussian)


def test_resuming_gives_the_same_run_as_an_uninterrupted_one(tmp_path, monkeypatch):
    data, schedule = load_datasaurus("dino"), LinearSchedule(20)
    kwargs = dict(batch_size=32, lr=1e-2, seed=5, progress=False)

    def fresh():
        return Denoiser(hidden=16, depth=2, time_dim=8, seed=1)

    straight = fresh()
    reference = train_ddpm(
        straight, data, schedule, n_iters=40, checkpoint_dir=tmp_path / "a", checkpoint_at=[20, 40], **kwargs
    )
    # stop at a kept checkpoint, then continue in a new process-like start (a fresh model object)
    train_ddpm(
        fresh(), data, schedule, n_iters=20, checkpoint_dir=tmp_path / "b", checkpoint_at=[20], **kwargs
    )
    resumed_model = fresh()
    resumed = train_ddpm(
        resumed_model,
        data,
        schedule,
        n_iters=40,
        checkpoint_dir=tmp_path / "b",
        checkpoint_at=[20, 40],
        **kwargs,
    )
    assert resumed.resumed_from == 20
    # crash at step 33; the rolling checkpoint of step 30 is where the rerun starts
    real_step, calls = ddpm_module._training_step, {"n": 0}

    def crashing_step(*args):
        calls["n"] += 1
        if calls["n"] == 33:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(ddpm_module, "_training_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_ddpm(
            fresh(), data, schedule, n_iters=40, checkpoint_dir=tmp_path / "c", save_every=15, **kwargs
        )
    monkeypatch.setattr(ddpm_module, "_training_step", real_step)
    crashed_model = fresh()
    crashed = train_ddpm(
        crashed_model, data, schedule, n_iters=40, checkpoint_dir=tmp_path / "c", save_every=15, **kwargs
    )
    assert crashed.resumed_from == 30
    for run, model in [(resumed, resumed_model), (crashed, crashed_model)]:
        np.testing.assert_array_equal(run.losses, reference.losses)
        for p, q in zip(model.parameters(), straight.parameters(), strict=True):
            assert torch.equal(p, q)
    reloaded, state = load_checkpoint(reference.checkpoints[40])
    assert state["iteration"] == 40 and all(
        torch.equal(p, q) for p, q in zip(reloaded.parameters(), straight.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="different settings"):  # another learning rate: not the same run
        train_ddpm(
            fresh(), data, schedule, n_iters=40, checkpoint_dir=tmp_path / "a", **{**kwargs, "lr": 0.5}
        )


# ----------------------------------------------------------------------------- descriptors on the grid


def _pre_activations(model: Denoiser, x: torch.Tensor, t: int) -> list[torch.Tensor]:
    """Each hidden layer's pre-activation, recomputed from the weights (no hooks)."""
    half = model.config["time_dim"] // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float64) / half)
    h = torch.cat(
        [x, torch.sin(t * freqs).expand(len(x), half), torch.cos(t * freqs).expand(len(x), half)], dim=1
    )
    linears = [m for m in model.trunk if isinstance(m, torch.nn.Linear)]
    act = torch.relu if model.config["activation"] == "relu" else torch.nn.functional.gelu
    found = []
    for layer in linears[:-1]:
        z = h @ layer.weight.T + layer.bias
        found.append(z)
        h = act(z)
    return found


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_grid_descriptors_equal_per_point_brute_force(activation):
    model = Denoiser(hidden=24, depth=2, time_dim=8, activation=activation, seed=7).double().eval()
    points, t, radius = plane_grid((-3.0, 3.0, -3.0, 3.0), resolution=5, dtype=torch.float64), 4, 0.3
    angle = 0.4
    directions = torch.tensor(
        [[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]], dtype=torch.float64
    )
    got = denoiser_descriptors(
        model, points, [t], radius=radius, directions=directions, batch_size=7, progress=False
    )
    h = 1e-6
    for i, x in enumerate(points):
        # Jacobian by central differences, column j = (f(x + h e_j) - f(x - h e_j)) / 2h
        with torch.no_grad():
            columns = [
                model(x[None] + h * e, t)[0] - model(x[None] - h * e, t)[0]
                for e in torch.eye(2, dtype=torch.float64)
            ]
        sigma = np.linalg.svd(torch.stack(columns, dim=1).numpy() / (2 * h), compute_uv=False)
        weights = sigma / sigma.sum() + 1e-30
        assert got["local_scaling"][0, i] == pytest.approx(np.log(sigma).sum(), abs=1e-5)
        assert got["local_rank"][0, i] == pytest.approx(np.exp(-(weights * np.log(weights)).sum()), abs=1e-5)
        # δ: neurons whose pre-activation takes both signs over the 4 vertices x ± r b_i
        vertices = torch.cat([x + radius * directions, x - radius * directions])
        with torch.no_grad():
            pre = _pre_activations(model, vertices, t)
        crossing = sum(int(((z > 0).any(0) & ~(z > 0).all(0)).sum()) for z in pre)
        assert got["local_complexity"][0, i] == crossing


# ----------------------------------------------------------------------------- on / off manifold


def test_on_off_split_and_gap_match_brute_force():
    rng = np.random.default_rng(4)
    data = rng.uniform(-1, 1, size=(30, 2))
    points = np.concatenate(
        [data + rng.normal(scale=0.04, size=data.shape), rng.uniform(-2, 2, size=(300, 2))]
    )
    mask = on_manifold_mask(points, data, radius=0.05)
    brute = [any(math.hypot(p[0] - d[0], p[1] - d[1]) <= 0.05 for d in data) for p in points]
    assert mask.tolist() == brute and 0 < mask.sum() < len(points)
    values = rng.normal(size=(3, len(points)))
    on = [[v for v, m in zip(row, brute, strict=True) if m] for row in values]
    off = [[v for v, m in zip(row, brute, strict=True) if not m] for row in values]
    np.testing.assert_allclose(
        manifold_gap(values, mask), [sum(a) / len(a) - sum(b) / len(b) for a, b in zip(on, off, strict=True)]
    )
    with pytest.raises(ValueError):
        manifold_gap(values, np.ones(len(points), dtype=bool))


def test_gap_claims_read_growth_and_minimum():
    timesteps, iterations = [0, 9, 19, 29, 39], [10, 100, 1000]
    base = np.array([3.0, 1.0, 0.2, -1.0, -2.0])  # |gap| smallest at t = 19, i.e. t/T = 20/40
    claims = gap_claims(
        {"local_scaling": np.stack([base, 2 * base, 3 * base])}, iterations, timesteps, n_steps=40
    )
    report = claims["local_scaling"]
    np.testing.assert_allclose(report["max_abs_gap"], [3, 6, 9])
    assert report["grows"] and report["spearman"] == pytest.approx(1.0)
    np.testing.assert_allclose(report["t_smallest"], [0.5, 0.5, 0.5])
    shrinking = gap_claims(
        {"local_rank": np.stack([3 * base, 2 * base, base])}, iterations, timesteps, n_steps=40
    )
    assert not shrinking["local_rank"]["grows"]
    # rising then collapsing below the start: positive rank correlation, yet it did not grow
    scales = [3.0, 4.0, 5.0, 6.0, 7.0, 2.9]
    late_drop = gap_claims({"local_rank": np.outer(scales, base / 3)}, list(range(6)), timesteps, n_steps=40)
    assert late_drop["local_rank"]["spearman"] > 0 and not late_drop["local_rank"]["grows"]


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError):
        Denoiser(activation="tanh")
    with pytest.raises(ValueError):
        train_ddpm(Denoiser(), np.zeros((5, 3, 1)), LinearSchedule(10), n_iters=1, progress=False)
    with pytest.raises(ValueError):
        plane_grid((1.0, 0.0, 0.0, 1.0), resolution=4)
    with pytest.raises(ValueError):
        LinearSchedule(1)
