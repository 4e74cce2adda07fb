"""geomlib.chapters.low_rank against independent truth: numerical integrals, finite differences, closed
forms derived by hand, brute-force linear algebra."""

import math

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
