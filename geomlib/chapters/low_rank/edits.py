"""LOCO-style edits (chapter 07): the top singular vectors of a posterior-mean predictor's Jacobian
as edit directions, a direction in its nullspace, the PMP of a text-to-image UNet, and the DDIM
sweep that finishes every edited latent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from geomlib.chapters.low_rank.molrg import denoiser_pmp
from geomlib.chapters.low_rank.ranks import spectral_rank
from geomlib.chapters.low_rank.sampling import ddim_sample
from geomlib.core.diffusion import predicted_x0
from geomlib.core.jacobian import BatchFunction, randomized_svd
from geomlib.core.spectrum import jacobian_singular_values


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
        return predicted_x0(x_t, output, float(alpha_bar[int(t)]), prediction_type)

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
