"""The Jacobian rank of a posterior-mean predictor across noise levels, and the memorisation to
generalisation sweep over training-set sizes (chapter 07)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from geomlib.chapters.low_rank.denoiser import Denoiser, TrainedSet, train_on_sizes
from geomlib.chapters.low_rank.molrg import MoLRG, add_noise, denoiser_pmp, subspace_residual
from geomlib.chapters.low_rank.sampling import ddim_sample, ddim_timesteps, generalisation_score
from geomlib.core.descriptors import local_rank
from geomlib.core.jacobian import BatchFunction
from geomlib.core.spectrum import Method, jacobian_singular_values


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
    denoiser: Denoiser,
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
    alpha_bar, device = denoiser.alpha_bar.double().cpu(), denoiser.alpha_bar.device
    noise = torch.randn(n_generated, model.dim, generator=torch.Generator().manual_seed(seed))
    timesteps = ddim_timesteps(len(alpha_bar) - 1, sampling_steps)
    samples = ddim_sample(denoiser, alpha_bar, noise.to(device), timesteps).cpu()
    fresh, _ = model.sample(n_generated, torch.Generator().manual_seed(seed + 1))
    generalisation = generalisation_score(samples, train)
    reference = generalisation_score(fresh, train)
    abar = float(alpha_bar[rank_timestep])
    x_t = add_noise(fresh[:n_rank_points], abar, torch.Generator().manual_seed(seed + 2))
    sigma = jacobian_singular_values(denoiser_pmp(denoiser, rank_timestep), x_t.to(device)).cpu()
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
    rank_timestep: int,
    steps: int | None = None,
    n_generated: int = 256,
    sampling_steps: int = 50,
    seed: int = 0,
    trained: Mapping[int, TrainedSet] | None = None,
    architecture: str = "mlp",
    progress: bool = True,
    **train_kwargs,
) -> list[dict[str, float]]:
    """:func:`evaluate_denoiser` for one denoiser per training-set size ``N``.

    ``trained``: the denoisers of :func:`~geomlib.chapters.low_rank.denoiser.train_on_sizes` (for
    these ``sizes``, on training sets of ``model``; their ``architecture`` is evaluated); None
    trains them here, with ``steps``, ``seed`` and ``train_kwargs``. Returns one row per size.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive training-set sizes, got {sizes}")
    if trained is None:
        if steps is None:
            raise ValueError("give steps to train the denoisers, or trained ones")
        trained = train_on_sizes(
            model,
            sizes,
            alpha_bar,
            architectures=(architecture,),
            steps=steps,
            seed=seed,
            progress=progress,
            **train_kwargs,
        )
    missing = sorted(
        int(n) for n in sizes if int(n) not in trained or architecture not in trained[int(n)].denoisers
    )
    if missing:
        raise ValueError(f"trained has no {architecture!r} denoisers for the sizes {missing}")
    return [
        evaluate_denoiser(
            trained[int(n_train)].denoisers[architecture],
            trained[int(n_train)].train,
            model,
            n_generated=n_generated,
            sampling_steps=sampling_steps,
            rank_timestep=rank_timestep,
            seed=seed,
        )
        for n_train in sizes
    ]


def transition_size(rows: Sequence[dict[str, float]], threshold: float = 0.5) -> int | None:
    """The smallest ``N`` from which on every row's ``ratio`` is at least ``threshold`` (None: never)."""
    ordered = sorted(rows, key=lambda row: row["n_train"])
    for index, row in enumerate(ordered):
        if all(later["ratio"] >= threshold for later in ordered[index:]):
            return int(row["n_train"])
    return None
