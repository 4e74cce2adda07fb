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

from geomlib.core.diffusion import forward_noise, predicted_x0
from geomlib.core.jacobian import BatchFunction


def add_noise(
    x0: torch.Tensor, alpha_bar_t: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x_t`` of ``x0`` with fresh noise from ``generator`` (:func:`geomlib.core.diffusion.forward_noise`);
    ``alpha_bar_t`` scalar or ``(B,)``, in ``x0``'s dtype."""
    abar = torch.as_tensor(alpha_bar_t, dtype=x0.dtype, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return forward_noise(x0, abar, noise)


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
        chapters differentiate the PMP with ``geomlib.core.jacobian``).

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
    return lambda x_t: predicted_x0(x_t, eps_fn(x_t), abar, "epsilon")
