"""Low-rank structure of diffusion models: the mixture of low-rank Gaussians (MoLRG), its posterior
mean, a learned denoiser, and edits along the singular vectors of the posterior-mean predictor.

Forward process (DDPM, Ho et al. 2020): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with the
**linear-beta schedule** ``beta_t = linspace(1e-4, 0.02, 1000)`` and ``abar_t = prod_{s <= t} (1 - beta_s)``,
for ``t = 0, ..., T - 1`` (the indexing of diffusers' ``DDPMScheduler.alphas_cumprod``).

MoLRG (Wang et al. 2024): ``K`` orthonormal bases ``U_k: d x r_k`` with mutually orthogonal ranges;
``x_0 = U_k a``, ``a ~ N(0, I_{r_k})``, component ``k`` with probability ``pi_k``. With
``s = sqrt(abar_t)``, ``sigma^2 = 1 - abar_t`` and ``P_k = U_k U_k^T``, component ``k`` gives
``x_t ~ N(0, s^2 P_k + sigma^2 I)`` and ``E[x_0 | x_t, k] = s P_k x_t`` (because ``s^2 + sigma^2 = 1``), so

    E[x_0 | x_t] = s sum_k w_k(x_t) P_k x_t,
    w = softmax_k( log pi_k + (r_k / 2) log sigma^2 + s^2 ||U_k^T x_t||^2 / (2 sigma^2) ),

the posterior-mean predictor (PMP) ``x0_hat(x_t, t)`` that a perfectly trained denoiser learns. Its
Jacobian is ``s sum_k w_k P_k`` plus a rank-``K`` correction from the softmax; near the data
(``sigma -> 0``) the weights saturate and the rank is the ``r_k`` of one subspace, far from it
(``s -> 0``) it is ``s sum_k pi_k P_k``, of rank ``sum_k r_k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from geomlib.descriptors import local_rank
from geomlib.jacobian import BatchFunction, Method, jacobian_singular_values, randomized_svd
from geomlib.profiles import torch_threads
from geomlib.seeding import reinitialise, seeded_global_rng

#: Budgets of chapter 07, read with ``geomlib.select_budget(LOWRANK_BUDGETS, profile)``. MoLRG part:
#: ambient ``dim``, subspace ``ranks``, the denoiser's data and training, the ``t`` grid of the rank
#: profile, the training-set ``sweep_sizes``. Edit part: ``edit_k`` directions at ``edit_t_fraction``
#: of the schedule, ``image_steps`` DDIM steps, the strengths ``lambda`` (latent units); the latent
#: rank profile is exact when ``latent_spectrum_k`` is None, else the top-k by randomized SVD;
#: ``chunk_size`` bounds the UNet products per vectorised pass (memory).
LOWRANK_BUDGETS: dict[str, dict] = {
    "smoke": dict(
        dim=16,
        ranks=(2, 2),
        n_points=8,
        t_fractions=(0.02, 0.3, 0.9),
        train_size=512,
        train_steps=300,
        hidden=64,
        depth=2,
        batch_size=128,
        sweep_sizes=(4, 256),
        sweep_steps=300,
        n_generated=64,
        sampling_steps=10,
        sweep_t_fraction=0.05,
        edit_k=2,
        edit_t_fraction=0.7,
        image_steps=4,
        edit_strengths=(-4.0, 0.0, 4.0),
        edit_power_iters=1,
        latent_t_fractions=(0.7,),
        n_latents=1,
        latent_spectrum_k=8,
        guidance_scale=3.0,
        bench_k=(2,),
        chunk_size=None,
    ),
    "book": dict(
        dim=32,
        ranks=(3, 3),
        n_points=32,
        t_fractions=(0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97),
        train_size=4096,
        train_steps=6000,
        hidden=128,
        depth=3,
        batch_size=256,
        sweep_sizes=(2, 4, 8, 16, 32, 64, 256, 1024),
        sweep_steps=2000,
        n_generated=256,
        sampling_steps=50,
        sweep_t_fraction=0.05,
        edit_k=5,
        edit_t_fraction=0.7,
        image_steps=25,
        edit_strengths=(-8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0),
        edit_power_iters=2,
        latent_t_fractions=(0.05, 0.3, 0.5, 0.7, 0.9),
        n_latents=1,
        latent_spectrum_k=None,
        guidance_scale=3.0,
        bench_k=(5, 10),
        chunk_size=None,
    ),
    "paper": dict(
        dim=64,
        ranks=(4, 4, 4),
        n_points=64,
        t_fractions=tuple(i / 20 for i in range(1, 20)),
        train_size=16384,
        train_steps=20000,
        hidden=256,
        depth=4,
        batch_size=512,
        sweep_sizes=(2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
        sweep_steps=8000,
        n_generated=1024,
        sampling_steps=100,
        sweep_t_fraction=0.05,
        edit_k=10,
        edit_t_fraction=0.7,
        image_steps=50,
        edit_strengths=(-64.0, -32.0, 0.0, 32.0, 64.0),
        edit_power_iters=2,
        latent_t_fractions=(0.05, 0.3, 0.5, 0.7, 0.9),
        n_latents=1,
        latent_spectrum_k=256,
        guidance_scale=7.5,
        bench_k=(5, 10),
        chunk_size=16,
    ),
}


# --------------------------------------------------------------------------------------------
# schedule


def ddpm_alpha_bar(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``abar_t = prod_{s <= t} (1 - beta_s)`` of DDPM's linear-beta schedule, ``(num_steps,)`` float64."""
    if num_steps < 2 or not 0 < beta_start < beta_end < 1:
        raise ValueError(
            "need num_steps >= 2 and 0 < beta_start < beta_end < 1,"
            f" got {num_steps}, {beta_start}, {beta_end}"
        )
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def timestep_at(fraction: float, num_steps: int) -> int:
    """The integer timestep ``round(fraction * (T - 1))`` for a fraction of the schedule in ``[0, 1]``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction of the schedule must be in [0, 1], got {fraction}")
    return int(round(fraction * (num_steps - 1)))


def add_noise(
    x0: torch.Tensor, alpha_bar_t: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; ``alpha_bar_t`` scalar or ``(B,)``."""
    abar = torch.as_tensor(alpha_bar_t, dtype=x0.dtype, device=x0.device)
    abar = abar.reshape(-1, *([1] * (x0.ndim - 1))) if abar.ndim else abar
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


# --------------------------------------------------------------------------------------------
# the mixture of low-rank Gaussians


@dataclass(frozen=True)
class MoLRG:
    """A mixture of low-rank Gaussians on mutually orthogonal subspaces of ``R^d``.

    Attributes
    ----------
    bases
        ``K`` tensors ``U_k: (d, r_k)`` with orthonormal columns; ``U_j^T U_k = 0`` for ``j != k``.
    weights
        ``(K,)`` mixture weights ``pi_k``, positive, summing to 1.
    """

    bases: tuple[torch.Tensor, ...]
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return self.bases[0].shape[0]

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(basis.shape[1] for basis in self.bases)

    @property
    def total_rank(self) -> int:
        """``sum_k r_k``: the dimension of the union's span."""
        return sum(self.ranks)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``x_0 = U_k a``: returns ``(x0: (n, d), labels: (n,))``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        labels = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        x0 = torch.zeros(n, self.dim, dtype=self.bases[0].dtype)
        for k, basis in enumerate(self.bases):
            chosen = labels == k
            coeffs = torch.randn(int(chosen.sum()), basis.shape[1], generator=generator, dtype=basis.dtype)
            x0[chosen] = coeffs @ basis.T
        return x0, labels

    def component_posteriors(self, x_t: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
        """``w_k(x_t) = P(k | x_t)``, ``(B, K)``, for ``x_t: (B, d)``."""
        abar = _check_alpha_bar(alpha_bar_t)
        noise_var = 1.0 - abar
        logits = torch.stack(
            [
                math.log(float(pi))
                + 0.5 * basis.shape[1] * math.log(noise_var)
                + abar / (2 * noise_var) * (x_t @ basis.to(x_t)).pow(2).sum(-1)
                for pi, basis in zip(self.weights, self.bases, strict=True)
            ],
            dim=-1,
        )
        return torch.softmax(logits, dim=-1)

    def posterior_mean(self, x_t: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
        """The closed-form PMP ``E[x_0 | x_t] = s sum_k w_k P_k x_t``, ``(B, d)``."""
        weights = self.component_posteriors(x_t, alpha_bar_t)
        projections = torch.stack([(x_t @ u.to(x_t)) @ u.to(x_t).T for u in self.bases], dim=1)  # (B, K, d)
        return math.sqrt(alpha_bar_t) * (weights.unsqueeze(-1) * projections).sum(1)

    def posterior_mean_jacobian(self, x_t: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
        """Closed-form Jacobian of :meth:`posterior_mean`, ``(B, d, d)`` (a reference for tests:
        chapters differentiate the PMP with ``geomlib.jacobian``).

        ``J = s sum_k w_k P_k + s sum_k w_k (P_k x)(g_k - gbar)^T`` with the logit gradients
        ``g_k = (s^2 / sigma^2) P_k x`` and ``gbar = sum_j w_j g_j``.
        """
        abar = _check_alpha_bar(alpha_bar_t)
        weights = self.component_posteriors(x_t, alpha_bar_t)  # (B, K)
        projectors = torch.stack([u.to(x_t) @ u.to(x_t).T for u in self.bases])  # (K, d, d)
        projected = torch.einsum("kde,be->bkd", projectors, x_t)  # (B, K, d): P_k x
        grads = abar / (1.0 - abar) * projected
        centred = grads - (weights.unsqueeze(-1) * grads).sum(1, keepdim=True)
        linear = torch.einsum("bk,kde->bde", weights, projectors)
        softmax_term = torch.einsum("bk,bkd,bke->bde", weights, projected, centred)
        return math.sqrt(abar) * (linear + softmax_term)


def _check_alpha_bar(alpha_bar_t: float) -> float:
    abar = float(alpha_bar_t)
    if not 0.0 < abar < 1.0:
        raise ValueError(f"alpha_bar_t must be in (0, 1) (strictly: some noise, some signal), got {abar}")
    return abar


def make_molrg(
    dim: int,
    ranks: Sequence[int],
    *,
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> MoLRG:
    """Random MoLRG in ``R^dim``: the columns of one QR of a Gaussian, split into ``len(ranks)``
    blocks, so the bases are orthonormal and mutually orthogonal. Equal weights by default."""
    ranks = [int(r) for r in ranks]
    if not ranks or min(ranks) < 1 or sum(ranks) > dim:
        raise ValueError(f"need ranks >= 1 with sum(ranks) <= dim = {dim}, got {ranks}")
    pis = (
        torch.full((len(ranks),), 1.0 / len(ranks))
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    if pis.shape != (len(ranks),) or (pis <= 0).any() or abs(float(pis.sum()) - 1) > 1e-6:
        raise ValueError(f"weights must be {len(ranks)} positive numbers summing to 1, got {weights}")
    gaussian = torch.randn(dim, sum(ranks), generator=generator, dtype=torch.float64)
    columns = torch.linalg.qr(gaussian).Q.to(dtype)
    bases = tuple(torch.split(columns, ranks, dim=1))
    return MoLRG(bases=tuple(b.contiguous() for b in bases), weights=pis.to(torch.float64))


def empirical_posterior_mean(x_t: torch.Tensor, train: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """``E[x_0 | x_t]`` when ``x_0`` is uniform on the ``N`` training points: the denoiser that
    minimises the training loss exactly, and so memorises.

    ``sum_i w_i x_i`` with ``w = softmax_i(-||x_t - s x_i||^2 / (2 sigma^2))``; its Jacobian is
    ``(s / sigma^2) Cov_w(x_i)``, of rank at most ``N - 1``.

    Parameters
    ----------
    x_t
        ``(B, d)``.
    train
        ``(N, d)``.
    """
    abar = _check_alpha_bar(alpha_bar_t)
    if x_t.ndim != 2 or train.ndim != 2 or x_t.shape[1] != train.shape[1]:
        raise ValueError(f"need x_t (B, d) and train (N, d), got {tuple(x_t.shape)}, {tuple(train.shape)}")
    points = train.to(x_t)
    # -||x - s x_i||^2 / 2 sigma^2 up to a per-row constant: (s x.x_i - s^2 ||x_i||^2 / 2) / sigma^2
    logits = (math.sqrt(abar) * x_t @ points.T - 0.5 * abar * points.pow(2).sum(-1)) / (1.0 - abar)
    return torch.softmax(logits, dim=-1) @ points


def subspace_residual(model: MoLRG, x: torch.Tensor) -> torch.Tensor:
    """``min_k ||x - P_k x|| / ||x||``, ``(B,)``: 0 on the union of subspaces, about 1 off it."""
    residuals = torch.stack([(x - (x @ u.to(x)) @ u.to(x).T).norm(dim=-1) for u in model.bases], -1)
    return residuals.min(-1).values / x.norm(dim=-1).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# a small learned denoiser


class MLPDenoiser(nn.Module):
    """An MLP ``(x_t, t) -> x0_hat``: the learned PMP of a low-dimensional data set.

    The input is scaled to unit variance, ``x_t / sqrt(abar_t v + 1 - abar_t)`` with ``v`` the data's
    per-coordinate second moment, and the output by ``sqrt(v)`` (EDM's ``c_in``/``c_out``, without a
    skip connection, so the Jacobian is the network's own). The timestep enters every layer as
    features ``[sin, cos](2^j pi t / T)`` and ``log SNR / 10``.

    Parameters
    ----------
    dim
        data dimension ``d``.
    alpha_bar
        ``(T,)`` the noise schedule (:func:`ddpm_alpha_bar`).
    data_second_moment
        ``v = E ||x_0||^2 / d``.
    hidden, depth
        width and number of hidden layers (SiLU).
    n_frequencies
        sinusoidal time features, ``2 * n_frequencies`` of them.
    """

    alpha_bar: torch.Tensor
    frequencies: torch.Tensor

    def __init__(
        self,
        dim: int,
        alpha_bar: torch.Tensor,
        data_second_moment: float = 1.0,
        hidden: int = 128,
        depth: int = 3,
        n_frequencies: int = 4,
    ) -> None:
        super().__init__()
        if min(dim, hidden, depth, n_frequencies) < 1 or data_second_moment <= 0:
            raise ValueError("dim, hidden, depth, n_frequencies and data_second_moment must be positive")
        self.register_buffer("alpha_bar", alpha_bar.detach().float().clone())
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))
        self.data_second_moment = float(data_second_moment)
        n_time = 2 * n_frequencies + 1
        self.first = nn.Linear(dim + n_time, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden + n_time, hidden) for _ in range(depth - 1)])
        self.last = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def time_features(self, t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """``(batch, 2 n_frequencies + 1)`` features of the integer timesteps ``t`` (scalar or ``(B,)``)."""
        abar = self.alpha_bar[t].reshape(-1, 1).to(dtype)
        phase = (t.to(dtype) / len(self.alpha_bar)).reshape(-1, 1) * self.frequencies.to(dtype)
        log_snr = torch.log(abar / (1 - abar)) / 10
        return torch.cat([torch.sin(phase), torch.cos(phase), log_snr], dim=-1).expand(batch, -1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x_t: (B, d)``, ``t``: int or ``(B,)`` integer timesteps -> ``x0_hat: (B, d)``."""
        t = torch.as_tensor(t, device=x_t.device).long()
        abar = self.alpha_bar[t].reshape(-1, 1).to(x_t.dtype)
        time = self.time_features(t, x_t.shape[0], x_t.dtype)
        scaled = x_t / torch.sqrt(abar * self.data_second_moment + 1 - abar)
        h = self.act(self.first(torch.cat([scaled, time], dim=-1)))
        for layer in self.hidden:
            h = self.act(layer(torch.cat([h, time], dim=-1)))
        return self.last(h) * math.sqrt(self.data_second_moment)


def train_denoiser(
    x0_train: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    hidden: int = 128,
    depth: int = 3,
    lr: float = 2e-3,
    snr_cap: float = 20.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_threads: int | None = 1,
    progress: bool = True,
) -> MLPDenoiser:
    """Train an :class:`MLPDenoiser` to predict ``x_0`` from ``x_t`` on the ``N`` samples ``x0_train``.

    Each step draws ``batch_size`` training samples (with replacement), timesteps uniform in
    ``[0, T)`` and fresh noise, and takes an Adam step (cosine-decayed learning rate) on
    ``(1 + min(SNR_t, snr_cap)) ||x0_hat - x0||^2``: the weight stresses small noise, where the
    predictor must project exactly onto the data. With few samples the minimiser is the posterior
    mean of the *empirical* distribution, which recalls training points (memorisation); with many
    it approaches the population's.

    Parameters
    ----------
    x0_train
        ``(N, d)`` training samples.
    alpha_bar
        ``(T,)`` the noise schedule (:func:`ddpm_alpha_bar`).
    steps
        optimiser steps.
    seed
        seeds the initialisation, batches, timesteps and noise (a local generator).
    num_threads
        PyTorch CPU threads while training (see :func:`geomlib.profiles.torch_threads`).

    Returns
    -------
    the trained denoiser, in eval mode, on ``device``.
    """
    if x0_train.ndim != 2 or len(x0_train) == 0:
        raise ValueError(f"x0_train must be (N, d) with N >= 1, got {tuple(x0_train.shape)}")
    if steps < 1 or batch_size < 1 or snr_cap < 0:
        raise ValueError(
            f"steps, batch_size must be positive and snr_cap >= 0, got {steps}, {batch_size}, {snr_cap}"
        )
    generator = torch.Generator().manual_seed(seed)
    data, abar = x0_train.float(), alpha_bar.float()
    second_moment = float(data.pow(2).mean())
    with seeded_global_rng(seed):  # nn.Linear draws a throw-away init from the global RNG
        model = MLPDenoiser(data.shape[1], abar, second_moment, hidden, depth)
    model = reinitialise(model, generator).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    with torch_threads(num_threads):
        for _ in tqdm(range(steps), desc=f"denoiser N={len(data)}", disable=not progress, leave=False):
            index = torch.randint(len(data), (batch_size,), generator=generator)
            t = torch.randint(len(abar), (batch_size,), generator=generator)
            x0, abar_t = data[index], abar[t]
            x_t = add_noise(x0, abar_t, generator)
            weight = 1 + torch.clamp(abar_t / (1 - abar_t), max=snr_cap)
            error = (model(x_t.to(device), t.to(device)) - x0.to(device)).pow(2).sum(-1)
            loss = (weight.to(device) * error).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


# --------------------------------------------------------------------------------------------
# the posterior-mean predictor as a function of x_t, for the Jacobian kernels


def molrg_pmp(model: MoLRG, alpha_bar_t: float) -> BatchFunction:
    """``x_t: (B, d) -> E[x_0 | x_t]: (B, d)`` at a fixed noise level: the closed-form PMP."""
    _check_alpha_bar(alpha_bar_t)
    return lambda x_t: model.posterior_mean(x_t, alpha_bar_t)


def empirical_pmp(train: torch.Tensor, alpha_bar_t: float) -> BatchFunction:
    """``x_t -> E[x_0 | x_t]`` for the empirical distribution of ``train: (N, d)``: the memorising optimum."""
    _check_alpha_bar(alpha_bar_t)
    return lambda x_t: empirical_posterior_mean(x_t, train, alpha_bar_t)


def denoiser_pmp(denoiser: Callable[[torch.Tensor, int], torch.Tensor], t: int) -> BatchFunction:
    """``x_t -> denoiser(x_t, t)`` at a fixed timestep ``t``: the learned PMP."""
    return lambda x_t: denoiser(x_t, t)


def pmp_from_eps(eps_fn: BatchFunction, alpha_bar_t: float) -> BatchFunction:
    """``x0_hat = (x_t - sqrt(1 - abar_t) eps(x_t)) / sqrt(abar_t)`` from a noise predictor at fixed ``t``."""
    abar = _check_alpha_bar(alpha_bar_t)
    return lambda x_t: (x_t - math.sqrt(1.0 - abar) * eps_fn(x_t)) / math.sqrt(abar)


# --------------------------------------------------------------------------------------------
# sampling and the generalisation score


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
        abar, abar_next = float(alpha_bar[t]), float(alpha_bar[t_next])
        eps = (x_t - math.sqrt(abar) * x0_hat) / math.sqrt(1.0 - abar)
        x_t = math.sqrt(abar_next) * x0_hat + math.sqrt(1.0 - abar_next) * eps
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


# --------------------------------------------------------------------------------------------
# rank across noise levels, and the memorisation-to-generalisation sweep


@dataclass
class RankProfile:
    """Jacobian spectra of a PMP at forward-noised data, one row per timestep.

    Attributes
    ----------
    timesteps
        ``(n_t,)`` integer timesteps.
    singular_values
        ``(n_t, B, m)`` descending.
    spectral_rank
        ``(n_t, B)`` :func:`spectral_rank` of each spectrum.
    local_rank
        ``(n_t, B)`` ν of each spectrum (:func:`geomlib.local_rank`).
    """

    timesteps: torch.Tensor
    singular_values: torch.Tensor
    spectral_rank: torch.Tensor
    local_rank: torch.Tensor


def jacobian_rank_profile(
    pmp_at: Callable[[int], BatchFunction],
    x0: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: Sequence[int],
    *,
    energy: float = 0.99,
    method: Method = "exact",
    k: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool = True,
) -> RankProfile:
    """Spectra of ``d x0_hat / d x_t`` at ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for each ``t``.

    Parameters
    ----------
    pmp_at
        ``t -> (x_t -> x0_hat)``, e.g. ``lambda t: denoiser_pmp(model, t)``.
    x0
        ``(B, *shape)`` clean samples.
    timesteps
        integer timesteps; the noise at ``t`` is drawn from seed ``seed + t``, so two models
        profiled with the same ``seed`` see the same ``x_t``.
    method, k
        as in :func:`geomlib.jacobian_singular_values`.
    """
    spectra = []
    for t in tqdm([int(t) for t in timesteps], desc="Jacobian spectra", disable=not progress, leave=False):
        x_t = add_noise(x0, float(alpha_bar[t]), torch.Generator().manual_seed(seed + t))
        spectra.append(
            jacobian_singular_values(pmp_at(t), x_t, method=method, k=k, chunk_size=chunk_size).cpu()
        )
    sigma = torch.stack(spectra)
    return RankProfile(
        timesteps=torch.tensor([int(t) for t in timesteps]),
        singular_values=sigma,
        spectral_rank=spectral_rank(sigma.flatten(0, 1), energy).reshape(sigma.shape[:2]),
        local_rank=local_rank(sigma.flatten(0, 1)).reshape(sigma.shape[:2]),
    )


def evaluate_denoiser(
    denoiser: MLPDenoiser,
    train: torch.Tensor,
    model: MoLRG,
    *,
    n_generated: int,
    sampling_steps: int,
    rank_timestep: int,
    n_rank_points: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Memorisation and Jacobian measurements of a denoiser trained on ``train: (N, d)`` from ``model``.

    Returns
    -------
    ``generalisation``: :func:`generalisation_score` of ``n_generated`` DDIM samples;
    ``reference``: the same score for fresh samples of ``model`` (what a perfect generaliser gets);
    ``ratio``: their quotient (about 0: copies, about 1: new samples); ``off_subspace``: the mean
    :func:`subspace_residual` of the samples; at ``rank_timestep``, on noised fresh samples:
    ``rank_above_half`` (singular values above ``sqrt(abar) / 2``, half the population PMP's),
    ``spectral_rank`` and ``local_rank`` (means).
    """
    alpha_bar = denoiser.alpha_bar.double().cpu()
    noise = torch.randn(n_generated, model.dim, generator=torch.Generator().manual_seed(seed))
    samples = ddim_sample(denoiser, alpha_bar, noise, ddim_timesteps(len(alpha_bar) - 1, sampling_steps))
    fresh, _ = model.sample(n_generated, torch.Generator().manual_seed(seed + 1))
    generalisation = generalisation_score(samples, train)
    reference = generalisation_score(fresh, train)
    abar = float(alpha_bar[rank_timestep])
    x_t = add_noise(fresh[:n_rank_points], abar, torch.Generator().manual_seed(seed + 2))
    sigma = jacobian_singular_values(denoiser_pmp(denoiser, rank_timestep), x_t)
    return dict(
        n_train=len(train),
        generalisation=generalisation,
        reference=reference,
        ratio=generalisation / reference,
        off_subspace=float(subspace_residual(model, samples).mean()),
        rank_above_half=float((sigma > 0.5 * math.sqrt(abar)).sum(-1).double().mean()),
        spectral_rank=float(spectral_rank(sigma).double().mean()),
        local_rank=float(local_rank(sigma).mean()),
    )


def memorisation_sweep(
    model: MoLRG,
    sizes: Sequence[int],
    alpha_bar: torch.Tensor,
    *,
    steps: int,
    rank_timestep: int,
    n_generated: int = 256,
    sampling_steps: int = 50,
    seed: int = 0,
    progress: bool = True,
    **train_kwargs,
) -> list[dict[str, float]]:
    """Train one denoiser per training-set size ``N`` and :func:`evaluate_denoiser` it.

    The training set of size ``N`` is drawn from seed ``seed + N``; ``train_kwargs`` go to
    :func:`train_denoiser`. Returns one row per size.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive training-set sizes, got {sizes}")
    rows = []
    for n_train in tqdm(list(sizes), desc="training-set sizes", disable=not progress):
        train, _ = model.sample(int(n_train), torch.Generator().manual_seed(seed + int(n_train)))
        denoiser = train_denoiser(train, alpha_bar, steps=steps, seed=seed, progress=progress, **train_kwargs)
        rows.append(
            evaluate_denoiser(
                denoiser,
                train,
                model,
                n_generated=n_generated,
                sampling_steps=sampling_steps,
                rank_timestep=rank_timestep,
                seed=seed,
            )
        )
    return rows


def transition_size(rows: Sequence[dict[str, float]], threshold: float = 0.5) -> int | None:
    """The smallest ``N`` from which on every row's ``ratio`` is at least ``threshold`` (None: never)."""
    ordered = sorted(rows, key=lambda row: row["n_train"])
    for index, row in enumerate(ordered):
        if all(later["ratio"] >= threshold for later in ordered[index:]):
            return int(row["n_train"])
    return None


# --------------------------------------------------------------------------------------------
# rank, edit directions and the nullspace


def spectral_rank(sigma: torch.Tensor, energy: float = 0.99) -> torch.Tensor:
    """Smallest ``r`` whose top-``r`` singular values carry ``energy`` of ``sum_i s_i^2``.

    Parameters
    ----------
    sigma
        ``(B, m)`` (or ``(m,)``) singular values, any order, non-negative.
    energy
        fraction in ``(0, 1]``.

    Returns
    -------
    ``(B,)`` (or scalar) integer ranks in ``[1, m]``; 0 for an all-zero spectrum.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if not isinstance(sigma, torch.Tensor) or sigma.ndim not in (1, 2) or sigma.shape[-1] == 0:
        raise ValueError("sigma must be a (B, m) or (m,) tensor of singular values")
    if not torch.isfinite(sigma).all() or (sigma < 0).any():
        raise ValueError("singular values must be finite and non-negative")
    power = sigma.double().sort(dim=-1, descending=True).values.pow(2)
    cumulative = power.cumsum(-1)
    total = cumulative[..., -1:]
    # a relative tolerance, so a spectrum with exactly `energy` in its top r gives r, not r + 1
    reached = cumulative >= energy * total * (1 - 1e-12)
    rank = reached.to(torch.int64).argmax(-1) + 1
    return torch.where(total.squeeze(-1) > 0, rank, torch.zeros_like(rank))


def project_out(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``v - V (V^T v)``: the part of each ``v`` orthogonal to the columns of ``V``.

    ``V V^T`` (``E x E``) is never formed, so this costs ``O(E k)`` per vector.

    Parameters
    ----------
    vectors
        ``(B, E)`` or ``(B, n, E)``.
    basis
        ``(B, E, k)`` orthonormal columns per sample (e.g. ``randomized_svd(...).V``).
    """
    if (
        basis.ndim != 3
        or vectors.ndim not in (2, 3)
        or vectors.shape[0] != basis.shape[0]
        or vectors.shape[-1] != basis.shape[1]
    ):
        raise ValueError(
            f"need vectors (B, [n,] E) and basis (B, E, k); got {tuple(vectors.shape)}, {tuple(basis.shape)}"
        )
    single = vectors.ndim == 2
    v = vectors.unsqueeze(1) if single else vectors  # (B, n, E)
    coefficients = torch.einsum("bne,bek->bnk", v, basis.to(v))  # V^T v: k numbers per vector
    result = v - torch.einsum("bek,bnk->bne", basis.to(v), coefficients)
    return result.squeeze(1) if single else result


def nullspace_direction(basis: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random unit vector orthogonal to the columns of ``basis: (B, E, k)``, ``(B, E)``."""
    if basis.ndim != 3 or basis.shape[2] >= basis.shape[1]:
        raise ValueError(f"basis must be (B, E, k) with k < E, got {tuple(basis.shape)}")
    gaussian = torch.randn(basis.shape[0], basis.shape[1], generator=generator, dtype=torch.float64)
    direction = project_out(gaussian.to(basis.device), basis.double())
    return (direction / direction.norm(dim=-1, keepdim=True)).to(basis.dtype)


@dataclass
class EditDirections:
    """Top right singular vectors of the PMP Jacobian at one noisy latent (LOCO-Edit's directions).

    Attributes
    ----------
    directions
        ``(k, *latent_shape)`` unit edit directions ``v_1 .. v_k`` (input space of the PMP).
    singular_values
        ``(k,)`` descending.
    null_direction
        ``(*latent_shape,)`` a unit direction orthogonal to all ``v_i``.
    """

    directions: torch.Tensor
    singular_values: torch.Tensor
    null_direction: torch.Tensor


def edit_directions(
    pmp: BatchFunction,
    x_t: torch.Tensor,
    k: int,
    *,
    null_rank: int | None = None,
    power_iters: int = 2,
    oversample: int = 5,
    chunk_size: int | None = None,
    seed: int = 0,
) -> EditDirections:
    """Top-``k`` singular directions of ``d x0_hat / d x_t`` at one latent, by ``geomlib.randomized_svd``,
    and a direction in the (approximate) nullspace.

    Parameters
    ----------
    pmp
        the posterior-mean predictor at a fixed timestep, ``(B, *shape) -> (B, *shape)``.
    x_t
        ``(1, *shape)`` one noisy latent.
    k
        number of edit directions.
    null_rank
        the null direction is orthogonal to the top ``null_rank`` right singular vectors, so the
        Jacobian stretches it by at most about ``s_{null_rank + 1}``; default ``k``. Take the
        Jacobian's numerical rank (e.g. :func:`spectral_rank`) for a direction that the PMP ignores;
        the randomized SVD then finds ``max(k, null_rank)`` triplets.
    seed
        seeds the randomized SVD's test vectors and the nullspace direction.
    """
    if x_t.shape[0] != 1:
        raise ValueError(f"x_t must hold one latent, shape (1, ...), got {tuple(x_t.shape)}")
    null_rank = k if null_rank is None else int(null_rank)
    if not 1 <= k <= null_rank < x_t[0].numel():
        raise ValueError(f"need 1 <= k <= null_rank < {x_t[0].numel()}, got k={k}, null_rank={null_rank}")
    svd = randomized_svd(
        pmp, x_t, null_rank, oversample=oversample, power_iters=power_iters, seed=seed, chunk_size=chunk_size
    )
    null = nullspace_direction(svd.V, torch.Generator().manual_seed(seed + 1))
    shape = x_t.shape[1:]
    directions = svd.V[0, :, :k].T.reshape(k, *shape).to(x_t.dtype)
    return EditDirections(directions, svd.S[0, :k], null[0].reshape(shape).to(x_t.dtype))


def edit_latents(x_t: torch.Tensor, direction: torch.Tensor, strengths: Sequence[float]) -> torch.Tensor:
    """``x_t + lambda v`` for each strength ``lambda``.

    ``x_t: (1, *shape)`` and ``direction: (*shape,)`` give ``(L, *shape)``.
    """
    if x_t.shape[0] != 1 or tuple(direction.shape) != tuple(x_t.shape[1:]):
        raise ValueError(
            f"need x_t (1, *shape) and direction (*shape,), got {tuple(x_t.shape)}, {tuple(direction.shape)}"
        )
    lambdas = torch.as_tensor(list(strengths), dtype=x_t.dtype, device=x_t.device)
    return x_t + lambdas.reshape(-1, *([1] * direction.ndim)) * direction.to(x_t)


def relative_change(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||x_i - ref|| / ||ref||`` for each ``x_i`` of ``x: (N, *shape)``; ``reference: (*shape)``.

    Accepts numpy arrays too (images ``(N, H, W, 3)``); returns ``(N,)`` float64.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    reference = torch.as_tensor(reference, dtype=torch.float64)
    if tuple(x.shape[1:]) != tuple(reference.shape):
        raise ValueError(
            f"need x (N, *shape) and reference (*shape), got {tuple(x.shape)}, {tuple(reference.shape)}"
        )
    difference = (x - reference).flatten(1).norm(dim=-1)
    return difference / reference.norm().clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# the PMP of a text-to-image UNet (diffusers), and LOCO-style edits


def prompt_embeddings(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conditional, unconditional)`` text embeddings ``(1, L, C)`` of ``prompt`` for a Stable-
    Diffusion pipeline (the unconditional one is the empty prompt's, for guidance)."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            prompt, device=pipe.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    return cond, uncond


def unet_posterior_mean(
    unet: nn.Module,
    alpha_bar: torch.Tensor,
    prompt_embeds: torch.Tensor,
    *,
    negative_embeds: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    prediction_type: str = "epsilon",
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The PMP of a conditional UNet, ``(x_t: (B, C, h, w), t: int) -> x0_hat: (B, C, h, w)``.

    ``x0_hat = (x_t - sqrt(1 - abar_t) eps(x_t, t, c)) / sqrt(abar_t)`` with the prompt embedding
    ``c: (1, L, C')`` fixed, so at fixed ``t`` it is a function of the latent only. With
    ``guidance_scale != 1`` the noise is classifier-free guided,
    ``eps_u + w (eps_c - eps_u)`` (``negative_embeds`` required), at twice the cost.

    Parameters
    ----------
    unet
        a diffusers ``UNet2DConditionModel`` (or anything with its call signature).
    alpha_bar
        ``(T,)`` the scheduler's ``alphas_cumprod``.
    prediction_type
        ``"epsilon"`` or ``"v_prediction"`` (the scheduler's ``config.prediction_type``).
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    guided = guidance_scale != 1.0
    if guided and negative_embeds is None:
        raise ValueError("guidance_scale != 1 needs negative_embeds (the unconditional embedding)")
    embeds = (
        prompt_embeds
        if negative_embeds is None or not guided
        else torch.cat([negative_embeds, prompt_embeds])
    )

    def posterior_mean(x_t: torch.Tensor, t: int) -> torch.Tensor:
        batch = x_t.shape[0]
        inputs = torch.cat([x_t, x_t]) if guided else x_t
        context = embeds.repeat_interleave(batch, dim=0).to(x_t.dtype)
        output = unet(inputs, int(t), encoder_hidden_states=context).sample
        if guided:
            uncond, cond = output.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        abar = float(alpha_bar[int(t)])
        if prediction_type == "v_prediction":
            return math.sqrt(abar) * x_t - math.sqrt(1.0 - abar) * output
        return (x_t - math.sqrt(1.0 - abar) * output) / math.sqrt(abar)

    return posterior_mean


@torch.no_grad()
def edit_sweep(
    pmp: Callable[[torch.Tensor, int], torch.Tensor],
    alpha_bar: torch.Tensor,
    x_t: torch.Tensor,
    directions: torch.Tensor,
    strengths: Sequence[float],
    timesteps: Sequence[int],
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Clean samples from every edited latent ``x_t + lambda v_i`` by DDIM along ``timesteps``.

    Parameters
    ----------
    pmp
        ``(x_t, t) -> x0_hat``, the sampler's denoiser.
    x_t
        ``(1, *shape)`` the latent at ``timesteps[0]``.
    directions
        ``(n, *shape)`` unit directions (edit directions, a nullspace direction, ...).
    strengths
        ``L`` values of ``lambda``.
    batch_size
        edited latents per DDIM run.

    Returns
    -------
    ``(n, L, *shape)`` clean latents.
    """
    edited = torch.cat([edit_latents(x_t, v, strengths) for v in directions])  # (n L, *shape)
    parts = [
        ddim_sample(pmp, alpha_bar, edited[i : i + batch_size], timesteps)
        for i in tqdm(range(0, len(edited), batch_size), desc="edits", disable=not progress, leave=False)
    ]
    return torch.cat(parts).reshape(len(directions), len(strengths), *x_t.shape[1:])


@dataclass
class EditComparison:
    """LOCO-style edits at one latent against two controls (see :func:`compare_edits`).

    Attributes
    ----------
    edit : the top-``k`` edit directions, their singular values and the null direction.
    null_rank : the 99 %-energy rank of the PMP Jacobian the null direction is orthogonal to.
    directions : ``(k + 2, *shape)`` ``v_1 .. v_k``, the null direction, a random unit direction.
    labels : ``["v1", ..., "vk", "null", "random"]``.
    strengths : the ``L`` values of ``lambda``.
    latents : ``(k + 2, L, *shape)`` clean latents sampled from ``x_t + lambda * direction``.
    """

    edit: EditDirections
    null_rank: int
    directions: torch.Tensor
    labels: list[str]
    strengths: list[float]
    latents: torch.Tensor


def compare_edits(
    sampler: Callable[[torch.Tensor, int], torch.Tensor],
    alpha_bar: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: Sequence[int],
    strengths: Sequence[float],
    k: int,
    *,
    spectrum_k: int | None = None,
    power_iters: int = 2,
    chunk_size: int | None = None,
    seed: int = 0,
) -> EditComparison:
    """Edit ``x_t`` (at ``timesteps[0]``) along the top-``k`` singular vectors of the PMP Jacobian,
    a null direction and a random direction, then finish sampling each edited latent by DDIM.

    The null direction is orthogonal to the top ``null_rank`` singular vectors, ``null_rank`` the
    99 %-energy rank of the Jacobian's spectrum (:func:`spectral_rank`; exact spectrum, or the top
    ``spectrum_k`` by randomized SVD), at least ``k`` and below the latent dimension. The random
    direction (seed ``seed + 2``) is the control that neither respects nor avoids the Jacobian.
    """
    pmp = denoiser_pmp(sampler, int(timesteps[0]))  # the PMP at the edit timestep
    sigma = jacobian_singular_values(
        pmp, x_t, method="exact" if spectrum_k is None else "randomized", k=spectrum_k, chunk_size=chunk_size
    )
    null_rank = min(max(int(spectral_rank(sigma)[0]), k), x_t[0].numel() - 1)
    edit = edit_directions(
        pmp, x_t, k, null_rank=null_rank, power_iters=power_iters, seed=seed, chunk_size=chunk_size
    )
    random_direction = torch.randn(x_t.shape[1:], generator=torch.Generator().manual_seed(seed + 2)).to(x_t)
    directions = torch.cat(
        [edit.directions, edit.null_direction[None], (random_direction / random_direction.norm())[None]]
    )
    labels = [f"v{i + 1}" for i in range(k)] + ["null", "random"]
    strengths = [float(s) for s in strengths]
    latents = edit_sweep(sampler, alpha_bar, x_t, directions, strengths, timesteps)
    return EditComparison(edit, null_rank, directions, labels, strengths, latents)


# --------------------------------------------------------------------------------------------
# the chapter's figures


def plot_rank_profiles(
    profiles: dict[str, RankProfile],
    num_steps: int,
    ranks: Sequence[int],
    *,
    spectrum_timestep: int | None = None,
    panel_size: float = 3.8,
):
    """Spectral rank and ν against ``t / T`` for each named profile, and their mean spectra at one ``t``.

    Parameters
    ----------
    profiles
        ``{label: RankProfile}`` on the same timesteps.
    num_steps
        ``T``, to put ``t / T`` on the x axis.
    ranks
        the subspace ranks ``r_k``: dashed lines at ``max r_k`` and ``sum r_k``.
    spectrum_timestep
        the ``t`` of the third panel (default: the middle of the grid).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_size, panel_size))
    for label, profile in profiles.items():
        fractions = profile.timesteps.double() / num_steps
        for ax, values in zip(
            axes[:2], (profile.spectral_rank.double(), profile.local_rank.double()), strict=True
        ):
            low, high = values.quantile(0.25, dim=1), values.quantile(0.75, dim=1)
            (line,) = ax.plot(fractions, values.mean(1), marker="o", ms=3, label=label)
            ax.fill_between(fractions, low, high, color=line.get_color(), alpha=0.2)
    timesteps = next(iter(profiles.values())).timesteps.tolist()
    chosen = spectrum_timestep if spectrum_timestep is not None else timesteps[len(timesteps) // 2]
    row = timesteps.index(min(timesteps, key=lambda t: abs(t - chosen)))
    for label, profile in profiles.items():
        mean_spectrum = profile.singular_values[row].double().mean(0)
        axes[2].semilogy(
            range(1, len(mean_spectrum) + 1), mean_spectrum.clamp_min(1e-8), marker=".", label=label
        )
    for ax, name in zip(axes[:2], ("rank (99% of the energy)", r"local rank $\nu$"), strict=True):
        ax.axhline(max(ranks), color="grey", ls="--", lw=0.8, label=r"$r = \max_k r_k$")
        ax.axhline(sum(ranks), color="black", ls=":", lw=0.8, label=r"$\sum_k r_k$")
        ax.set(xlabel="t / T", ylabel=name)
    axes[2].axvline(sum(ranks) + 0.5, color="grey", ls="--", lw=0.8)
    axes[2].set(
        xlabel="index i",
        ylabel=r"mean singular value $s_i$",
        title=f"spectra at t/T = {timesteps[row] / num_steps:.2f}",
    )
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_memorisation_sweep(
    rows: Sequence[dict[str, float]], ranks: Sequence[int], transition: int | None, *, panel_size: float = 3.8
):
    """Generalisation score and Jacobian rank against the training-set size ``N`` (log axis).

    ``rows`` come from :func:`memorisation_sweep`; ``transition`` (from :func:`transition_size`) is
    marked by a vertical line.
    """
    import matplotlib.pyplot as plt

    sizes = [row["n_train"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_size, panel_size))
    axes[0].plot(sizes, [row["generalisation"] for row in rows], marker="o", label="learned denoiser")
    axes[0].plot(
        sizes,
        [row["reference"] for row in rows],
        marker="s",
        ls=":",
        label="fresh data (perfect generaliser)",
    )
    axes[0].set(ylabel="nearest-training-point distance / norm", title="generalisation score")
    axes[1].plot(
        sizes, [row["rank_above_half"] for row in rows], marker="o", label=r"#$s_i > \sqrt{\bar\alpha_t}/2$"
    )
    axes[1].plot(sizes, [row["local_rank"] for row in rows], marker="^", ls=":", label=r"local rank $\nu$")
    axes[1].axhline(max(ranks), color="grey", ls="--", lw=0.8, label=r"$r$ (one subspace)")
    axes[1].set(ylabel="Jacobian rank of the learned PMP", title="rank near the data")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        if transition is not None:
            ax.axvline(transition, color="tab:red", lw=0.8, alpha=0.6)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
