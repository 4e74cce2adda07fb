"""Reward guidance: classifier guidance by the ψ reward model, on top of classifier-free guidance.

Dhariwal & Nichol's classifier guidance for DDIM (their algorithm 2) replaces the noise prediction
at step ``t`` by ``ε̃ = ε - ρ sqrt(1 - ᾱ_t) ∇_{x_t} R(x_t, t)``, with ``ε`` the CFG prediction and
``R`` the reward (here a function of the reward model's level-set probabilities). A DDIM step
(``η = 0``) is linear in ``ε``::

    x_{t'} = sqrt(ᾱ_{t'} / ᾱ_t) x_t + (sqrt(1 - ᾱ_{t'}) - sqrt(ᾱ_{t'} (1 - ᾱ_t) / ᾱ_t)) ε,

so the guided step equals the pipeline's own step plus ``ρ c_t ∇_{x_t} R(x_t, t)`` with

    c_t = sqrt(1 - ᾱ_t) (sqrt(ᾱ_{t'} (1 - ᾱ_t) / ᾱ_t) - sqrt(1 - ᾱ_{t'})) >= 0.

The step is the same for a v-predicting UNet (diffusers' DDIM turns ``v`` into ``ε`` and ``x̂0``
first), so the formula holds for both prediction types. On a zero-terminal-SNR schedule
(``ᾱ_T = 0``, the mini model's) the first step starts from pure noise, where ``x̂0 = -v`` does not
depend on ``x_t`` and ``c_t`` is unbounded: that step is left unguided (``c_t = 0``).

That is exactly what :class:`RewardGuidance` adds in the pipeline's ``callback_on_step_end``: the
gradient is taken at the latent ``x_t`` that entered the step (the latent the previous callback
returned, or the initial noise) and its timestep ``t``. ``ρ = 0`` returns the latents untouched, so
the sampler is then exactly the pipeline's. ``ρ > 0`` raises ``R``, ``ρ < 0`` lowers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from torch import nn

from geomlib.core.jacobian import vjp_rows
from geomlib.sd.decoder import decode_latents
from geomlib.sd.hub import SDPipeline
from geomlib.sd.sampling import initial_latents, resolve_guidance_rescale

OBJECTIVES: tuple[str, ...] = ("expected_bin", "log_prob")


Objective = str | Callable[[torch.Tensor], torch.Tensor]


def reward_objective(
    logits: torch.Tensor, objective: Objective = "expected_bin", raise_psi: bool = True
) -> torch.Tensor:
    """The reward ``R``, ``(B,)``, from level-set logits ``(B, K)``; it grows with the predicted ψ.

    ``expected_bin``: ``sum_k k p_k``, the expected level set (0 .. K-1).
    ``log_prob``: ``log p_{K-1}`` (the highest level set) when ``raise_psi``, else ``-log p_0``
    (so that ``ρ < 0`` is classifier guidance towards the lowest level set with weight ``|ρ|``).
    A callable ``logits -> (B,)`` is used as it is.
    """
    if callable(objective):
        return objective(logits)
    if objective == "expected_bin":
        return (logits.softmax(-1) * torch.arange(logits.shape[-1], device=logits.device)).sum(-1)
    if objective == "log_prob":
        log_p = logits.log_softmax(-1)
        return log_p[:, -1] if raise_psi else -log_p[:, 0]
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def reward_gradient(
    net: nn.Module, x: torch.Tensor, t: int, objective: Objective = "expected_bin", raise_psi: bool = True
) -> torch.Tensor:
    """``∇_x R(x, t)`` for every sample, ``(B, *shape)`` on ``x``'s device in the net's dtype, by one
    VJP of the reward through :func:`geomlib.vjp_rows` (samples are independent: GroupNorm is per
    sample). ``net(x, t)`` returns logits ``(B, K)``."""

    def reward(z: torch.Tensor) -> torch.Tensor:
        return reward_objective(net(z, t), objective, raise_psi).unsqueeze(1)  # (B, 1)

    parameter = next(net.parameters())
    device = parameter.device
    z = x.detach().to(device, parameter.dtype)
    ones = torch.ones(1, 1, dtype=z.dtype, device=device)
    return vjp_rows(reward, z, ones)[:, 0].reshape(z.shape).to(x.device)


def check_ddim(pipe: SDPipeline) -> Any:
    """The pipeline's scheduler if the guidance formula holds for it (DDIM, ε- or v-prediction, no
    clipping or thresholding), else ``ValueError`` saying how to switch."""
    scheduler, config = pipe.scheduler, pipe.scheduler.config  # (Any: diffusers registers them at run time)
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(
            f"reward guidance is derived for DDIM; the pipeline has {type(scheduler).__name__}:"
            " set pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )
    if config.prediction_type not in ("epsilon", "v_prediction") or config.clip_sample or config.thresholding:
        raise ValueError("reward guidance needs ε- or v-prediction without clip_sample or thresholding")
    return scheduler


def guidance_coefficient(scheduler: Any, timestep: int) -> float:
    """``c_t`` of the module docstring for the DDIM step from ``timestep`` (inference steps set);
    0 where ``ᾱ_t = 0`` (pure noise: nothing to guide). The previous timestep is the one diffusers'
    ``DDIMScheduler.step`` uses, ``t - T // steps``, whatever the timestep spacing."""
    alphas = scheduler.alphas_cumprod
    previous = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_t = float(alphas[timestep])
    if alpha_t <= 0:
        return 0.0
    alpha_prev = float(alphas[previous]) if previous >= 0 else float(scheduler.final_alpha_cumprod)
    return float(
        np.sqrt(1 - alpha_t) * (np.sqrt(alpha_prev * (1 - alpha_t) / alpha_t) - np.sqrt(1 - alpha_prev))
    )


class RewardGuidance:
    """``callback_on_step_end`` adding ``ρ c_t ∇_{x_t} R(x_t, t)`` to the latents after each step.

    Parameters
    ----------
    net
        the reward model (on the pipeline's device).
    rho
        guidance weight; 0 leaves the sampler untouched.
    initial
        ``(B, 4, h, w)`` the latents the pipeline starts from (the input of step 0).
    objective
        see :func:`reward_objective`; ``ρ < 0`` with ``log_prob`` guides towards the lowest level set.

    Attributes
    ----------
    gradient_norms : per step, the ``(B,)`` norms of ``ρ c_t ∇R`` that were added.
    """

    def __init__(
        self,
        pipe: SDPipeline,
        net: nn.Module,
        rho: float,
        initial: torch.Tensor,
        objective: Objective = "expected_bin",
    ):
        if not callable(objective) and objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.scheduler = check_ddim(pipe)
        self.net, self.rho, self.objective = net, float(rho), objective
        self.previous = initial * self.scheduler.init_noise_sigma
        self.gradient_norms: list[torch.Tensor] = []

    def __call__(self, pipe: SDPipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """Add the guidance term to ``callback_kwargs["latents"]`` (the output of step ``step_index``)."""
        if self.rho == 0:
            return callback_kwargs
        latents = callback_kwargs["latents"]
        t = int(timestep)
        gradient = reward_gradient(self.net, self.previous, t, self.objective, raise_psi=self.rho > 0)
        shift = self.rho * guidance_coefficient(self.scheduler, t) * gradient
        self.gradient_norms.append(shift.flatten(1).norm(dim=1).cpu())
        latents = latents + shift.to(latents.dtype)
        self.previous = latents
        callback_kwargs["latents"] = latents
        return callback_kwargs


@dataclass
class GuidedSamples:
    """Samples of :func:`guided_generate` (on the CPU).

    Attributes
    ----------
    images : ``(B, H, W, 3)`` floats in ``[0, 1]``.
    latents : ``(B, 4, h, w)`` final latents (the decoder's input).
    rho : the guidance weight.
    """

    images: np.ndarray
    latents: torch.Tensor
    rho: float


@torch.no_grad()
def guided_generate(
    pipe: SDPipeline,
    net: nn.Module | None,
    prompts: list[str],
    rho: float,
    *,
    seed: int = 0,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 25,
    objective: Objective = "expected_bin",
    latents: torch.Tensor | None = None,
    batch_size: int | None = None,
    guidance_rescale: float | None = None,
) -> GuidedSamples:
    """Text-to-image with the pipeline's sampler (DDIM + CFG ``guidance_scale``) plus reward guidance ``ρ``.

    Prompt ``i`` starts from :func:`geomlib.sd.sampling.initial_latents` seed ``seed + i`` (or from
    ``latents``), as in :func:`geomlib.sd.sampling.generate`: the same seeds and prompts give the same
    samples at ``ρ = 0``, and paired samples across ``ρ``. ``net`` may be ``None`` only for ``ρ = 0``.
    ``guidance_rescale``: as in :func:`geomlib.sd.sampling.generate` (``None``: the pipeline's default).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if net is None and rho != 0:
        raise ValueError("reward guidance with rho != 0 needs a reward model")
    noise = latents if latents is not None else initial_latents(pipe, len(prompts), seed)
    if len(noise) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(noise)} initial latents")
    batch_size = batch_size or len(prompts)
    rescale = resolve_guidance_rescale(pipe, guidance_rescale)
    finals = []
    for start in range(0, len(prompts), batch_size):
        batch = noise[start : start + batch_size].to(pipe.unet.device, pipe.unet.dtype)
        callback = RewardGuidance(pipe, net, rho, batch, objective) if net is not None else None
        out = pipe(
            prompts[start : start + batch_size],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_rescale=rescale,
            latents=batch,
            output_type="latent",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        finals.append(out.images.float().cpu())
    final = torch.cat(finals)
    return GuidedSamples(images=decode_latents(pipe, final), latents=final, rho=float(rho))
