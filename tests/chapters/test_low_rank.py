"""geomlib.chapters.low_rank against independent truth: numerical integrals, finite differences, closed
forms derived by hand, brute-force linear algebra."""

import math

import numpy as np
import pytest
import torch

import geomlib
from geomlib.chapters import low_rank as lr
from geomlib.core.diffusion import linear_alpha_bar
from geomlib.runtime.profiles import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """These small problems gain nothing from intra-op threads, and on a busy shared CPU the
    threads' contention made them up to 10x slower."""
    with torch_threads(1):
        yield


def _gaussian_weights(points: torch.Tensor, x_t: torch.Tensor, abar: float) -> torch.Tensor:
    """Likelihood of ``x_t`` under ``N(sqrt(abar) x0, (1 - abar) I)`` for each candidate ``x0``."""
    sq = (x_t - math.sqrt(abar) * points).pow(2).sum(-1)
    return torch.exp(-sq / (2 * (1 - abar)))


def _posterior_mean_by_quadrature(model: lr.MoLRG, x_t: torch.Tensor, abar: float) -> torch.Tensor:
    """E[x0 | x_t] = int x0 p(x_t | x0) p(x0) / int p(x_t | x0) p(x0), on a grid over each subspace
    (ranks 1 and 2 only), with no use of the softmax formula."""
    numerator, denominator = torch.zeros(model.dim, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for pi, basis in zip(model.weights, model.bases, strict=True):
        rank = basis.shape[1]
        axis = torch.linspace(-7, 7, 3001 if rank == 1 else 701, dtype=torch.float64)
        cell = float(axis[1] - axis[0]) ** rank
        coeffs = axis[:, None] if rank == 1 else torch.cartesian_prod(axis, axis)
        prior = torch.exp(-0.5 * coeffs.pow(2).sum(-1)) / (2 * math.pi) ** (rank / 2)
        points = coeffs @ basis.double().T
        weight = float(pi) * prior * _gaussian_weights(points, x_t.double(), abar) * cell
        numerator += (weight[:, None] * points).sum(0)
        denominator += weight.sum()
    return numerator / denominator


def test_posterior_mean_matches_numerical_integral_with_unequal_ranks_and_weights():
    model = lr.make_molrg(
        3, (1, 2), weights=(0.3, 0.7), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    x_t = torch.tensor([[0.8, -1.1, 0.4], [0.1, 0.2, -1.5], [2.0, 0.3, 0.3]], dtype=torch.float64)
    for abar in (0.2, 0.6, 0.9):
        closed = model.posterior_mean(x_t, abar)
        numeric = torch.stack([_posterior_mean_by_quadrature(model, x, abar) for x in x_t])
        torch.testing.assert_close(closed, numeric, atol=1e-6, rtol=1e-5)


def test_posterior_mean_jacobian_matches_finite_differences_and_autodiff():
    model = lr.make_molrg(6, (2, 1, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_t = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    abar, h = 0.5, 1e-6
    closed = model.posterior_mean_jacobian(x_t, abar)
    columns = [
        (model.posterior_mean(x_t + h * e, abar) - model.posterior_mean(x_t - h * e, abar)) / (2 * h)
        for e in torch.eye(6, dtype=torch.float64)
    ]
    torch.testing.assert_close(closed, torch.stack(columns, dim=-1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(
        geomlib.jacobian(lr.molrg_pmp(model, abar), x_t), closed, atol=1e-10, rtol=1e-9
    )


def test_one_subspace_jacobian_is_sqrt_abar_times_projector_of_rank_r():
    """K = 1: w = 1, so E[x0 | x_t] = s U U^T x_t and J = s P at every noise level: r singular
    values equal to s = sqrt(abar), the rest zero."""
    dim, rank = 12, 3
    model = lr.make_molrg(dim, (rank,), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_t = torch.randn(5, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for abar in (0.999, 0.5, 0.01):
        sigma = geomlib.jacobian_singular_values(lr.molrg_pmp(model, abar), x_t)
        expected = torch.tensor([math.sqrt(abar)] * rank + [0.0] * (dim - rank), dtype=torch.float64)
        torch.testing.assert_close(sigma, expected.expand_as(sigma), atol=1e-10, rtol=1e-10)
        assert lr.spectral_rank(sigma).tolist() == [rank] * 5


def test_rank_is_one_subspace_near_data_and_the_union_far_from_it():
    """K = 2, ranks (2, 4). Small noise: the weights saturate on the component that made x_t, J ~ s P_k,
    rank r_k. Large noise: w -> pi, J ~ s (P_1 + P_2) / 2, rank r_1 + r_2."""
    model = lr.make_molrg(16, (2, 4), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x0, labels = model.sample(40, torch.Generator().manual_seed(7))
    near = lr.add_noise(x0, 0.9999, torch.Generator().manual_seed(8))
    ranks = lr.spectral_rank(geomlib.jacobian_singular_values(lr.molrg_pmp(model, 0.9999), near))
    assert torch.equal(ranks, torch.tensor([2, 4])[labels])
    far = lr.add_noise(x0, 1e-4, torch.Generator().manual_seed(9))
    assert (lr.spectral_rank(geomlib.jacobian_singular_values(lr.molrg_pmp(model, 1e-4), far)) == 6).all()


def test_empirical_posterior_mean_matches_brute_force_and_its_rank_is_at_most_n_minus_1():
    generator = torch.Generator().manual_seed(10)
    train = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    x_t = torch.randn(6, 7, generator=generator, dtype=torch.float64)
    abar = 0.3
    weights = torch.stack([_gaussian_weights(train, x, abar) for x in x_t])
    expected = (weights / weights.sum(1, keepdim=True)) @ train
    torch.testing.assert_close(lr.empirical_posterior_mean(x_t, train, abar), expected)
    sigma = geomlib.jacobian_singular_values(lr.empirical_pmp(train, abar), x_t)
    numerical_rank = (sigma > 1e-9 * sigma[:, :1]).sum(1)
    assert (numerical_rank == 3).all()  # generic points: exactly N - 1


def test_spectral_rank_on_known_spectra():
    assert lr.spectral_rank(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])).item() == 3
    # energies 16 and 9 (unsorted input): 16/25 = 0.64 of the energy in the first value
    assert lr.spectral_rank(torch.tensor([3.0, 4.0]), energy=0.6).item() == 1
    assert lr.spectral_rank(torch.tensor([3.0, 4.0]), energy=0.65).item() == 2
    # 100 equal values: 99 of them hold exactly 99 %
    assert lr.spectral_rank(torch.ones(2, 100)).tolist() == [99, 99]
    # 2^-i: the top r hold (1 - 4^-r) / (1 - 4^-10) of the energy; 0.99 needs r = 4 (0.9961), not 3 (0.9844)
    assert lr.spectral_rank(2.0 ** -torch.arange(10.0)).item() == 4
    assert lr.spectral_rank(torch.zeros(3)).item() == 0
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            lr.spectral_rank(torch.ones(3), energy=bad)
    with pytest.raises(ValueError):
        lr.spectral_rank(torch.tensor([1.0, -1.0]))


def test_project_out_equals_explicit_projector_and_is_orthogonal_to_the_basis():
    generator = torch.Generator().manual_seed(11)
    basis = torch.linalg.qr(torch.randn(2, 30, 4, generator=generator, dtype=torch.float64)).Q
    vectors = torch.randn(2, 5, 30, generator=generator, dtype=torch.float64)
    projector = torch.eye(30, dtype=torch.float64) - basis @ basis.transpose(1, 2)  # brute force, small E
    out = lr.project_out(vectors, basis)
    torch.testing.assert_close(out, torch.einsum("bde,bne->bnd", projector, vectors))
    assert torch.einsum("bek,bne->bnk", basis, out).abs().max() < 1e-12


def test_nullspace_direction_in_a_huge_space_never_builds_the_projector():
    """E = 3e6, k = 4: V V^T would take 36 TB, so this only runs if it is never formed."""
    dim, k = 3_000_000, 4
    basis = torch.linalg.qr(torch.randn(1, dim, k, generator=torch.Generator().manual_seed(12))).Q
    direction = lr.nullspace_direction(basis, torch.Generator().manual_seed(13))
    assert direction.shape == (1, dim)
    assert abs(float(direction.norm()) - 1) < 1e-4
    assert float((basis[0].T @ direction[0]).abs().max()) < 1e-5


def test_ddim_with_the_exact_pmp_of_one_gaussian_subspace_returns_the_projection_of_the_noise():
    """Data N(0, P) on one subspace: x_t has covariance s^2 P + sigma^2 I, so on the subspace the
    marginal is N(0, I) at every t and the probability-flow ODE leaves that component still, while the
    orthogonal component shrinks like sigma_t. Fine DDIM steps must end at P x_T."""
    model = lr.make_molrg(10, (3,), generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    alpha_bar = linear_alpha_bar()
    x_T = torch.randn(4, 10, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    sample = lr.ddim_sample(
        lambda x, t: model.posterior_mean(x, float(alpha_bar[t])),
        alpha_bar,
        x_T,
        lr.ddim_timesteps(999, 1000),
    )
    projector = model.bases[0] @ model.bases[0].T
    torch.testing.assert_close(sample, x_T @ projector, atol=5e-3, rtol=5e-3)


def test_generalisation_score_on_hand_made_points():
    train = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert lr.generalisation_score(train.clone(), train) == 0.0
    generated = torch.tensor(
        [[2.0, 0.0], [0.0, -1.0]]
    )  # nearest: |2-1|/2 = 0.5 and |(0,-1)-(1,0)|/1 = sqrt 2
    expected = (0.5 + math.sqrt(2)) / 2
    assert lr.generalisation_score(generated, train) == pytest.approx(expected)
    assert lr.generalisation_score(generated, train, chunk_size=1) == pytest.approx(expected)


def test_denoiser_trained_on_one_point_learns_the_constant_posterior_mean_and_keeps_the_global_rng():
    """With N = 1 the posterior mean is that point for every x_t and t."""
    point = torch.tensor([[1.5, -0.5, 0.0, 1.0]])
    alpha_bar = linear_alpha_bar()
    state = torch.random.get_rng_state()
    denoiser = lr.train_denoiser(
        point, alpha_bar, steps=300, batch_size=64, hidden=32, depth=2, progress=False
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    x_t = torch.randn(64, 4, generator=torch.Generator().manual_seed(16))
    t = torch.randint(1000, (64,), generator=torch.Generator().manual_seed(17))
    with torch.no_grad():
        error = (denoiser(x_t, t) - point).norm(dim=-1) / point.norm()
    assert float(error.mean()) < 0.1


class _ScaledIdentityUNet(torch.nn.Module):
    """A stand-in UNet whose noise prediction is ``mean(encoder_hidden_states) * x``."""

    def forward(self, sample, timestep, encoder_hidden_states):
        scale = encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return type("Output", (), {"sample": scale * sample})()


def test_unet_posterior_mean_applies_guidance_and_the_eps_to_x0_formula():
    """eps_c = 2 x, eps_u = x, so the guided eps is (1 + w) x and x0 = (1 - sigma (1 + w)) x / s."""
    alpha_bar = linear_alpha_bar()
    cond, uncond = torch.full((1, 3, 5), 2.0), torch.ones(1, 3, 5)
    x_t = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(18))
    t, w = 300, 4.0
    s, sigma = math.sqrt(float(alpha_bar[t])), math.sqrt(1 - float(alpha_bar[t]))
    guided = lr.unet_posterior_mean(
        _ScaledIdentityUNet(), alpha_bar, cond, negative_embeds=uncond, guidance_scale=w
    )
    torch.testing.assert_close(guided(x_t, t), (1 - sigma * (1 + w)) * x_t / s)
    plain = lr.unet_posterior_mean(_ScaledIdentityUNet(), alpha_bar, cond)
    torch.testing.assert_close(plain(x_t, t), (1 - sigma * 2) * x_t / s)
    with pytest.raises(ValueError):
        lr.unet_posterior_mean(_ScaledIdentityUNet(), alpha_bar, cond, guidance_scale=w)


def test_edit_directions_of_a_diffusers_unet_span_the_top_of_the_exact_spectrum():
    """On a tiny random UNet2DConditionModel: the edit directions are orthonormal, each v_i is
    stretched by about s_i (exact SVD of the full 64 x 64 Jacobian), and the nullspace direction,
    orthogonal to the top null_rank of them, is stretched by at most about s_{null_rank + 1}."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = (
        UNet2DConditionModel(
            sample_size=4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        .eval()
        .requires_grad_(False)
    )
    alpha_bar = linear_alpha_bar()
    embeds = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(19))
    t, k, null_rank = 700, 3, 52
    pmp = lr.denoiser_pmp(lr.unet_posterior_mean(unet, alpha_bar, embeds), t)
    x_t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(20))
    edit = lr.edit_directions(pmp, x_t, k, null_rank=null_rank, power_iters=3, oversample=10)
    exact = torch.linalg.svdvals(geomlib.jacobian(pmp, x_t)[0])
    flat = edit.directions.reshape(k, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(k), atol=1e-5, rtol=0)
    stretch = geomlib.jvp_columns(pmp, x_t, flat)[0].norm(dim=0)
    torch.testing.assert_close(stretch, exact[:k], rtol=0.03, atol=0)
    torch.testing.assert_close(edit.singular_values, exact[:k], rtol=0.03, atol=0)
    null = edit.null_direction.reshape(1, -1)
    assert float((flat @ null.T).abs().max()) < 1e-5
    assert float(geomlib.jvp_columns(pmp, x_t, null)[0].norm()) <= 1.05 * float(exact[null_rank])
    assert float(exact[null_rank]) < 0.5 * float(exact[k])  # the bound is a real restriction


def test_split_timesteps_and_input_checks():
    before, after = lr.split_timesteps(lr.ddim_timesteps(999, 11), 700)
    assert before[0] == 999 and after[-1] == 0 and before[-1] == after[0] == 699
    with pytest.raises(ValueError):
        lr.make_molrg(4, (3, 2))  # 5 > 4 dimensions
    with pytest.raises(ValueError):
        lr.MoLRG.posterior_mean(lr.make_molrg(4, (2,)), torch.zeros(1, 4), 1.0)
    with pytest.raises(ValueError):
        lr.ddim_sample(lambda x, t: x, linear_alpha_bar(), torch.zeros(1, 2), [10, 20])


def test_compare_edits_on_one_gaussian_subspace_null_edits_vanish_and_top_edits_move_the_sample():
    """One subspace of rank 3 in R^10: the PMP Jacobian is a multiple of the projector, so its
    99 %-energy rank is 3, the null direction lies outside the subspace and DDIM erases it (every
    lambda ends at the unedited sample), while v_1 lies inside and moves the sample by lambda."""
    model = lr.make_molrg(10, (3,), generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    alpha_bar = linear_alpha_bar()
    sampler = lambda x, t: model.posterior_mean(x, float(alpha_bar[t]))  # noqa: E731
    timesteps = lr.ddim_timesteps(700, 200)
    x_t = torch.randn(1, 10, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    strengths = [-2.0, 0.0, 2.0]
    out = lr.compare_edits(sampler, alpha_bar, x_t, timesteps, strengths, 2, seed=3)
    assert out.null_rank == 3 and out.labels == ["v1", "v2", "null", "random"]
    assert out.latents.shape == (4, 3, 10)
    projector = model.bases[0] @ model.bases[0].T
    null = out.directions[2]
    assert float((projector @ null).norm()) < 1e-6 and abs(float(null.norm()) - 1) < 1e-6
    unedited = out.latents[0, 1]
    torch.testing.assert_close(out.latents[2], unedited.expand(3, -1), atol=1e-3, rtol=0)
    moved = (out.latents[0, 2] - unedited).norm()
    assert float(moved) > 1.0  # v1 is in the subspace: the edit survives sampling


# --- reproducibility across architectures (section 3) -------------------------------------------


def test_residual_denoiser_also_learns_the_constant_posterior_mean_of_one_point():
    point = torch.tensor([[1.5, -0.5, 0.0, 1.0]])
    denoiser = lr.train_denoiser(
        point,
        linear_alpha_bar(),
        steps=300,
        batch_size=64,
        hidden=32,
        depth=2,
        architecture="residual",
        progress=False,
    )
    assert isinstance(denoiser, lr.ResidualDenoiser)
    x_t = torch.randn(64, 4, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        error = (denoiser(x_t, 500) - point).norm(dim=-1) / point.norm()
    assert float(error.mean()) < 0.1
    with pytest.raises(ValueError, match="architecture"):
        lr.train_denoiser(point, linear_alpha_bar(), steps=1, architecture="transformer")


def test_gl_and_rp_scores_on_hand_made_points():
    train = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    samples = torch.tensor([[1.0, 0.1], [0.0, 2.0], [5.0, 5.0]])  # nearest: 0.1, 1, 4.47
    assert lr.gl_score(samples, train, radius=0.5)["estimate"] == pytest.approx(2 / 3)
    assert lr.gl_score(samples, train, radius=1.0)["estimate"] == pytest.approx(1 / 3)
    assert lr.gl_score(train, train, radius=0.0)["estimate"] == 0.0
    shifted = samples + torch.tensor([[0.0, 0.3], [0.0, 0.0], [2.0, 0.0]])
    assert lr.rp_score(samples, shifted, radius=0.5)["estimate"] == pytest.approx(2 / 3)
    assert lr.rp_score(samples, samples, radius=0.0)["estimate"] == 1.0
    with pytest.raises(ValueError, match="finite"):  # a NaN is never "near": it would count as a copy
        lr.gl_score(torch.full((2, 2), float("nan")), train, radius=1.0)
    with pytest.raises(ValueError, match="finite"):
        lr.rp_score(samples, torch.full_like(samples, float("inf")), radius=1.0)
    mixture = lr.make_molrg(3, (1, 2), weights=(0.3, 0.7), generator=torch.Generator().manual_seed(1))
    assert lr.rms_norm(mixture) == pytest.approx(math.sqrt(0.3 * 1 + 0.7 * 2))
    x0, _ = mixture.sample(20000, torch.Generator().manual_seed(2))
    assert lr.rms_norm(mixture) == pytest.approx(float(x0.pow(2).sum(-1).mean().sqrt()), rel=0.02)
    torch.testing.assert_close(
        lr.nearest_distance(samples, train, chunk_size=1), lr.nearest_distance(samples, train)
    )
    with pytest.raises(ValueError, match="two"):
        lr.rp_score(samples, samples[:2], radius=1.0)
    with pytest.raises(ValueError, match="radius"):
        lr.gl_score(samples, train, radius=-1.0)


@pytest.fixture(scope="module")
def small_trained_set():
    """One tiny denoiser trained on 64 points of a rank-4 mixture, registered under two names, and
    the empirical PMP of the same points registered as a third "denoiser"."""
    mixture = lr.make_molrg(12, (4, 4), generator=torch.Generator().manual_seed(30))
    alpha_bar = linear_alpha_bar()
    trained = lr.train_on_sizes(
        mixture, (64,), alpha_bar, steps=200, batch_size=64, hidden=32, depth=2, progress=False
    )
    net, train = trained[64].denoisers["mlp"], trained[64].train
    copier = lr.empirical_sampler(train, alpha_bar)
    return mixture, {64: lr.TrainedSet(train=train, denoisers={"a": net, "b": net, "copier": copier})}


def test_two_copies_of_one_model_reproduce_exactly_and_other_noise_does_not(small_trained_set):
    """The issue's known answers: two copies of the same model have RP = 1; the same model against
    samples from other noises has RP near 0 (it generalises enough that different noises give
    different samples). And a sampler that is the empirical PMP matches that limit on every noise."""
    mixture, trained = small_trained_set
    rows = lr.reproducibility_scores(
        mixture,
        trained,
        linear_alpha_bar(),
        n_noise=256,
        sampling_steps=10,
        radius_fraction=0.1,
        progress=False,
    )
    by_name = {(row["score"], row["between"]): row for row in rows}
    assert by_name[("RP", "a vs b")]["estimate"] == 1.0
    assert by_name[("RP", "a vs b")]["low"] > 0.98
    assert by_name[("RP", "a vs b, other noise")]["high"] < 0.05
    assert by_name[("RP", f"copier vs {lr.EMPIRICAL}")]["estimate"] == 1.0
    assert by_name[("RP", f"copier vs {lr.POPULATION}")]["estimate"] < 0.05
    # 64 points, each reached with probability about 1/64: two other noises rarely share one
    assert by_name[("RP", "a vs copier, other noise")]["estimate"] < 0.1
    # the empirical PMP's samples are training points; fresh-like samples of the population PMP are not
    assert by_name[("GL", lr.EMPIRICAL)]["estimate"] < 0.05
    assert by_name[("GL", "copier")]["estimate"] < 0.05
    assert by_name[("GL", lr.POPULATION)]["estimate"] > 0.9
    assert {row["n"] for row in rows} == {256}


def test_chance_level_of_a_copier_of_two_points_is_the_chance_of_the_same_point():
    """With two training points the copier sends about half of all noises to each, so two different
    noises land on the same point with probability about 1/2: the chance level, not reproduction."""
    mixture = lr.make_molrg(6, (2, 2), generator=torch.Generator().manual_seed(33))
    alpha_bar = linear_alpha_bar()
    train = torch.stack([mixture.bases[0][:, 0], mixture.bases[1][:, 0]]) * 2
    copier = lr.empirical_sampler(train, alpha_bar)
    trained = {2: lr.TrainedSet(train=train, denoisers={"a": copier, "b": copier})}
    rows = lr.reproducibility_scores(
        mixture, trained, alpha_bar, n_noise=400, sampling_steps=20, radius_fraction=0.1, progress=False
    )
    chance = next(row for row in rows if row["between"] == "a vs b, other noise")
    assert chance["low"] < 0.5 < chance["high"] or abs(chance["estimate"] - 0.5) < 0.1


def test_empirical_sampler_recalls_training_points_and_population_sampler_lands_on_the_subspaces():
    mixture = lr.make_molrg(10, (3, 3), generator=torch.Generator().manual_seed(31))
    alpha_bar = linear_alpha_bar()
    train = lr.training_set(mixture, 5, seed=0)
    torch.testing.assert_close(train, mixture.sample(5, torch.Generator().manual_seed(5))[0])
    noise = torch.randn(64, 10, generator=torch.Generator().manual_seed(32), dtype=torch.float64)
    steps = lr.ddim_timesteps(999, 100)
    recalled = lr.ddim_sample(lr.empirical_sampler(train, alpha_bar), alpha_bar, noise, steps)
    assert float(lr.nearest_distance(recalled, train).max()) < 1e-3 * lr.rms_norm(mixture)
    new = lr.ddim_sample(lr.population_sampler(mixture, alpha_bar), alpha_bar, noise, steps)
    assert float(lr.subspace_residual(mixture, new).max()) < 1e-2


def _proportion_row(size: int, score: str, between: str, estimate: float, n: int = 400) -> dict:
    hits = np.arange(n) < round(estimate * n)
    return {
        "n_train": size,
        "score": score,
        "between": between,
        **geomlib.core.stats.proportion_interval(hits),
    }


def _rows(rp, gl, population_gl=1.0, chance=None):
    """Rows as reproducibility_scores writes them, with Wilson intervals of 400 draws. ``gl[N]``: one
    GL for both architectures or ``(a, b)``; ``population_gl`` a number or ``{N: GL}``; ``chance``
    ``{N: RP by chance}`` (default 0)."""
    rows = []
    for size, value in rp.items():
        gl_a, gl_b = gl[size] if isinstance(gl[size], tuple) else (gl[size], gl[size])
        population = population_gl[size] if isinstance(population_gl, dict) else population_gl
        rows += [
            _proportion_row(size, "RP", "a vs b", value),
            _proportion_row(size, "RP", "a vs b, other noise", (chance or {}).get(size, 0.0)),
            _proportion_row(size, "GL", "a", gl_a),
            _proportion_row(size, "GL", "b", gl_b),
            _proportion_row(size, "GL", lr.POPULATION, population),
        ]
    return rows


def test_regimes_and_the_claim_check_on_made_up_sweeps():
    gl = {2: 0.0, 16: 0.5, 1024: 0.95}
    rows = _rows({2: 0.95, 16: 0.3, 1024: 0.9}, gl)
    regimes = lr.reproducibility_regimes(rows, ("a", "b"))
    assert regimes == {"memorisation": [2], "transition": [16], "generalisation": [1024], "unresolved": []}
    check = lr.reproducibility_check(rows, ("a", "b"), regimes)
    assert check["verdict"].startswith("as claimed")
    assert check["transition"]["n_train"] == 16 and check["generalisation"]["estimate"] == pytest.approx(0.9)
    assert check["transition"]["adjusted_high"] == pytest.approx(check["transition"]["high"])  # k = 1
    flat = _rows({2: 0.95, 16: 0.92, 1024: 0.9}, gl)
    assert lr.reproducibility_check(flat, ("a", "b"), regimes)["verdict"].startswith("partly")
    low = _rows({2: 0.95, 16: 0.3, 1024: 0.2}, gl)
    assert "generalisation" in lr.reproducibility_check(low, ("a", "b"), regimes)["verdict"]
    few = {key: value for key, value in regimes.items() if key != "generalisation"}
    assert lr.reproducibility_check(rows, ("a", "b"), few)["verdict"].startswith("undecided")
    no_middle = {**regimes, "transition": []}
    assert "undecided on the dip" in lr.reproducibility_check(rows, ("a", "b"), no_middle)["verdict"]
    backwards = {"memorisation": [1024], "transition": [16], "generalisation": [2]}
    assert "do not follow" in lr.reproducibility_check(rows, ("a", "b"), backwards)["verdict"]
    with pytest.raises(ValueError, match="N = \\[64\\]"):
        lr.reproducibility_check(rows, ("a", "b"), {**regimes, "transition": [16, 64]})


def test_regimes_need_every_architecture_and_a_radius_that_resolves_copies():
    # one architecture still generalises a little at N = 2: not memorisation (max over models)
    rows = _rows({2: 0.95, 16: 0.3, 1024: 0.9}, {2: (0.05, 0.3), 16: 0.5, 1024: (0.95, 0.5)})
    regimes = lr.reproducibility_regimes(rows, ("a", "b"))
    assert regimes["memorisation"] == [] and regimes["transition"] == [2, 16, 1024]
    # a perfect generaliser's GL below 1 (dense training points) lowers the bar of "generalised"
    dense = _rows({2: 0.95, 16: 0.3, 1024: 0.9}, {2: 0.0, 16: 0.3, 1024: 0.6}, population_gl=0.62)
    assert lr.reproducibility_regimes(dense, ("a", "b"))["generalisation"] == [1024]
    # ... but where even it matches training points, GL = 0 proves nothing: unresolved, not memorised
    blind = _rows({2: 0.95, 1024: 0.9}, {2: 0.0, 1024: 0.0}, population_gl={2: 1.0, 1024: 0.05})
    assert lr.reproducibility_regimes(blind, ("a", "b")) == {
        "memorisation": [2],
        "transition": [],
        "generalisation": [],
        "unresolved": [1024],
    }


def test_a_copy_that_chance_explains_is_not_reproduction():
    """At N = 2 two copiers agree on every noise, but so do two other noises half the time; at N = 4
    chance is low. The weakest size of the regime (N = 4) beats its chance; N = 2 must too."""
    rows = _rows(
        {2: 0.97, 4: 0.95, 128: 0.3, 1024: 0.9},
        {2: 0.0, 4: 0.0, 128: 0.5, 1024: 0.95},
        chance={2: 0.96, 4: 0.05},
    )
    regimes = lr.reproducibility_regimes(rows, ("a", "b"))
    assert regimes["memorisation"] == [2, 4]
    check = lr.reproducibility_check(rows, ("a", "b"), regimes)
    assert check["memorisation"]["n_train"] == 4
    assert check["verdict"].startswith("not as claimed") and "memorisation" in check["verdict"]
    fair = _rows(
        {2: 0.97, 4: 0.95, 128: 0.3, 1024: 0.9},
        {2: 0.0, 4: 0.0, 128: 0.5, 1024: 0.95},
        chance={2: 0.5, 4: 0.05},
    )
    assert lr.reproducibility_check(fair, ("a", "b"), regimes)["verdict"].startswith("as claimed")


def test_the_dip_is_judged_at_the_lowest_of_several_with_a_wider_interval():
    sizes = {2: 0.95, 8: 0.80, 16: 0.80, 32: 0.80, 64: 0.80, 1024: 0.85}
    gl = {2: 0.0, 8: 0.5, 16: 0.5, 32: 0.5, 64: 0.5, 1024: 0.95}
    rows = _rows(sizes, gl)
    regimes = lr.reproducibility_regimes(rows, ("a", "b"))
    check = lr.reproducibility_check(rows, ("a", "b"), regimes)
    assert check["transition"]["adjusted_high"] > check["transition"]["high"]  # k = 4
    assert check["verdict"].startswith("partly")  # 0.80 of 400 is not resolved below 0.85


def test_memorisation_sweep_reuses_trained_denoisers(small_trained_set):
    mixture, trained = small_trained_set
    kwargs = dict(rank_timestep=50, n_generated=16, sampling_steps=5, architecture="a")
    rows = lr.memorisation_sweep(mixture, (64,), linear_alpha_bar(), trained=trained, **kwargs)
    assert rows[0]["n_train"] == 64
    with pytest.raises(ValueError, match="no 'a' denoisers for the sizes \\[8\\]"):
        lr.memorisation_sweep(mixture, (8,), linear_alpha_bar(), trained=trained, **kwargs)
    with pytest.raises(ValueError, match="no 'transformer' denoisers"):
        lr.memorisation_sweep(
            mixture, (64,), linear_alpha_bar(), trained=trained, **{**kwargs, "architecture": "transformer"}
        )
    with pytest.raises(ValueError, match="give steps"):
        lr.memorisation_sweep(mixture, (64,), linear_alpha_bar(), rank_timestep=50)


def test_table_and_claim_lines_print_what_the_check_found(tmp_path):
    rows = _rows({2: 0.95, 16: 0.3, 1024: 0.9}, {2: 0.0, 16: 0.5, 1024: 0.95})
    regimes = lr.reproducibility_regimes(rows, ("a", "b"))
    check = lr.reproducibility_check(rows, ("a", "b"), regimes)
    table = lr.reproducibility_table(rows)
    assert list(table.index) == [2, 16, 1024] and table.loc[16, "RP: a vs b"].startswith("0.30 [")
    lines = lr.claim_lines(check, rows, ("a", "b"), regimes)
    assert lines[-1] == f"verdict: {check['verdict']}"
    assert any("N = 16: 0.30" in line and "dip" in line for line in lines)
    parts = dict(lr.reproducibility_claims(check))
    assert parts["memorisation: lowest RP above 0.5"].verdict == "as claimed"  # 0.95 of 400
    dip = parts["dip: generalisation's lowest RP above the transition's"]
    assert dip.verdict == "as claimed" and dip.effect == pytest.approx(0.6)  # 0.9 - 0.3
    assert sum("four-way" in line for line in lines) == 4
    flat = _rows({2: 0.95, 16: 0.93, 1024: 0.9}, {2: 0.0, 16: 0.5, 1024: 0.95})
    flat_check = lr.reproducibility_check(flat, ("a", "b"), lr.reproducibility_regimes(flat, ("a", "b")))
    no_dip = dict(lr.reproducibility_claims(flat_check))[
        "dip: memorisation's lowest RP above the transition's"
    ]
    assert no_dip.verdict == "no effect larger than" and no_dip.high < 0.1  # 0.95 vs 0.93: no dip of 0.1
    assert lr.retraining_minutes(tmp_path) is None
    (tmp_path / "training.json").write_text('{"timings": {"denoiser_s": 600, "training_total_s": 1800}}')
    assert lr.retraining_minutes(tmp_path) == {"denoiser": 10.0, "total": 30.0}


def test_reproducibility_figure_draws_every_curve_and_shades_both_regimes():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.patches import Polygon, Rectangle

    from geomlib.chapters.low_rank.figures import _log_cells

    rows = _rows({2: 0.95, 16: 0.3, 1024: 0.9}, {2: 0.0, 16: 0.5, 1024: 0.95})
    for row in list(rows):
        if row["between"] in ("a", "b") and row["score"] == "GL":
            for limit in (lr.EMPIRICAL, lr.POPULATION):
                rows.append({**row, "score": "RP", "between": f"{row['between']} vs {limit}"})
    regimes = lr.reproducibility_regimes(rows, ("a", "b"))
    fig = lr.plot_reproducibility(rows, ("a", "b"), regimes)
    left, right = fig.axes
    assert len(left.lines) == 5 and len(right.lines) == 4  # RP, chance, GL a, GL b, GL population; 2 x 2
    spans = [p for p in left.patches if isinstance(p, Rectangle | Polygon)]
    assert len(spans) == 2
    cells = _log_cells([2, 16, 1024])
    assert cells[2][0] == pytest.approx(2 / 1.5) and cells[16] == pytest.approx(
        (math.sqrt(32), math.sqrt(16384))
    )
    matplotlib.pyplot.close(fig)
