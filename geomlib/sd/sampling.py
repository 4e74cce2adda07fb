"""Text-to-image generation with the pipeline's own sampler, recording every step's latent and
predicted clean latent (diffusers callbacks), from initial noise that does not depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geomlib.core.checks import positive_int
from geomlib.core.diffusion import predicted_x0
from geomlib.core.jacobian import check_latents
from geomlib.sd.decoder import decode_latents, latent_shape
from geomlib.sd.hub import SDPipeline


def initial_latents(
    pipe: SDPipeline, n: int, seed: int = 0, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """``(n, 4, h, w)`` standard normal latents; sample ``i`` is drawn on the CPU from seed
    ``seed + i``, so it is the same on every device and whatever ``n`` is."""
    positive_int("n", n)
    shape = latent_shape(pipe, height, width)
    draws = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]
    return torch.stack(draws)


@dataclass
class Generation:
    """What :func:`generate` returns (all on the CPU, float32).

    Attributes
    ----------
    images : ``(B, H, W, 3)`` numpy floats in ``[0, 1]``.
    latents : ``(B, 4, h, w)`` final latents (the decoder's input).
    trajectory : ``(T + 1, B, 4, h, w)`` the initial noise, then the latents after each step.
    predicted_x0 : ``(T, B, 4, h, w)`` the scheduler's estimate of the clean latent at each step.
    timesteps : ``(T,)`` the timesteps of the steps.
    """

    images: np.ndarray
    latents: torch.Tensor
    trajectory: torch.Tensor
    predicted_x0: torch.Tensor
    timesteps: torch.Tensor


class _TrajectoryRecorder:
    """Records latents through the pipeline's step-end callback and the predicted ``x0`` by
    wrapping ``scheduler.step`` (computed from ``alphas_cumprod``; the sampler itself is the
    pipeline's, untouched)."""

    def __init__(self, pipe: SDPipeline):
        scheduler = pipe.scheduler
        if getattr(scheduler, "init_noise_sigma", 1.0) != 1.0 or not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"trajectories need a DDPM-type scheduler (DDIM, PNDM, DDPM); got {type(scheduler).__name__}"
            )
        self.scheduler, self.prediction = scheduler, scheduler.config.prediction_type
        self.latents: list[torch.Tensor] = []
        self.x0: list[torch.Tensor] = []
        self.timesteps: list[int] = []
        self._step = scheduler.step

    def step(self, model_output, timestep, sample, *args, **kwargs):
        alpha_bar = self.scheduler.alphas_cumprod[int(timestep)].to(sample.device, torch.float32)
        x0 = predicted_x0(sample.float(), model_output.float(), alpha_bar, self.prediction)
        self.x0.append(x0.cpu())
        self.timesteps.append(int(timestep))
        return self._step(model_output, timestep, sample, *args, **kwargs)

    def callback(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.latents.append(callback_kwargs["latents"].float().cpu())
        return callback_kwargs


#: Guidance rescale on zero-terminal-SNR schedules (Lin et al. 2024, section 3.4, who recommend 0.7):
#: with pure noise at t = T, plain classifier-free guidance at SD's usual 7.5 over-exposes. SD's
#: own schedule keeps plain guidance (0).
ZERO_SNR_GUIDANCE_RESCALE = 0.7


def default_guidance_rescale(pipe: SDPipeline) -> float:
    """The guidance rescale for ``pipe``'s scheduler: :data:`ZERO_SNR_GUIDANCE_RESCALE` on a
    zero-terminal-SNR schedule (``rescale_betas_zero_snr``, the mini model), else 0 (SD 1.4)."""
    zero_snr = bool(pipe.scheduler.config.get("rescale_betas_zero_snr", False))
    return ZERO_SNR_GUIDANCE_RESCALE if zero_snr else 0.0


def resolve_guidance_rescale(pipe: SDPipeline, guidance_rescale: float | None) -> float:
    """``guidance_rescale``, or the pipeline's default for ``None``; must lie in [0, 1]."""
    value = default_guidance_rescale(pipe) if guidance_rescale is None else float(guidance_rescale)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    return value


@torch.no_grad()
def generate(
    pipe: SDPipeline,
    prompts: list[str],
    *,
    seed: int = 0,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 25,
    latents: torch.Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    guidance_rescale: float | None = None,
) -> Generation:
    """Text-to-image with the pipeline's own sampler, recording the trajectory.

    Parameters
    ----------
    prompts
        ``B`` captions.
    seed
        prompt ``i`` starts from :func:`initial_latents` seed ``seed + i`` (ignored if ``latents``).
    guidance_scale
        classifier-free guidance weight (1: none).
    latents
        optional ``(B, 4, h, w)`` initial noise.
    batch_size
        prompts per pipeline call (default: all).
    guidance_rescale
        blend of the guided prediction rescaled to the conditional one's standard deviation
        (diffusers' ``guidance_rescale``); ``None``: :func:`default_guidance_rescale`.
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings (for one prompt: [prompt])")
    positive_int("num_inference_steps", num_inference_steps)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")
    noise = latents if latents is not None else initial_latents(pipe, len(prompts), seed, height, width)
    check_latents(noise, "latents")
    if len(noise) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(noise)} initial latents")
    batch_size = len(prompts) if batch_size is None else positive_int("batch_size", batch_size)
    rescale = resolve_guidance_rescale(pipe, guidance_rescale)
    parts = [
        _generate_batch(
            pipe,
            prompts[s : s + batch_size],
            noise[s : s + batch_size],
            guidance_scale,
            rescale,
            num_inference_steps,
        )
        for s in range(0, len(prompts), batch_size)
    ]
    return Generation(
        images=np.concatenate([p.images for p in parts]),
        latents=torch.cat([p.latents for p in parts]),
        trajectory=torch.cat([p.trajectory for p in parts], dim=1),
        predicted_x0=torch.cat([p.predicted_x0 for p in parts], dim=1),
        timesteps=parts[0].timesteps,
    )


def _generate_batch(pipe, prompts, noise, guidance_scale, guidance_rescale, steps) -> Generation:
    recorder = _TrajectoryRecorder(pipe)
    pipe.scheduler.step = recorder.step  # instance attribute: shadows the method during this call
    try:
        out = pipe(
            prompts,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            latents=noise.to(pipe.unet.device, pipe.unet.dtype),
            output_type="latent",
            callback_on_step_end=recorder.callback,
            callback_on_step_end_tensor_inputs=["latents"],
        )
    finally:
        del pipe.scheduler.step
    final = out.images.float().cpu()
    return Generation(
        images=decode_latents(pipe, final),
        latents=final,
        trajectory=torch.stack([noise.float().cpu(), *recorder.latents]),
        predicted_x0=torch.stack(recorder.x0),
        timesteps=torch.tensor(recorder.timesteps),
    )
