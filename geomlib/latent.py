"""Latent diffusion: loading pipelines, the decoder as a function, generation with trajectories,
and 2-D slices of the latent space (paper section 3.2, Fig. 3).

One loader serves Stable Diffusion 1.4 (hub id), any local pipeline directory and the project's
offline model ``data/mini-sd`` (see :mod:`geomlib.mini`). Latents are always in the diffusion
model's space, i.e. the VAE posterior scaled by ``vae.config.scaling_factor``, shape ``(B, 4, h, w)``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlparse

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from geomlib.descriptors import Descriptors, describe
from geomlib.jacobian import Method
from geomlib.mini.world import World, load_world
from geomlib.profiles import default_device


@contextlib.contextmanager
def quiet_hub_libraries() -> Iterator[None]:
    """Silence diffusers/transformers progress bars and warnings (e.g. "requires torchvision")
    inside the block, restoring their settings after."""
    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


with quiet_hub_libraries():  # importing the pipeline warns that torchvision is missing: it is not needed
    from diffusers import StableDiffusionPipeline

#: A diffusers ``StableDiffusionPipeline``. Its components (``vae``, ``unet``, ...) are registered at
#: run time, which static type checkers cannot follow, hence ``Any`` in annotations.
SDPipeline: TypeAlias = Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The project's offline text-to-image model, trained by ``python -m geomlib.mini.train``.
MINI_MODEL = PROJECT_ROOT / "data" / "mini-sd"
SD14 = "CompVis/stable-diffusion-v1-4"
TINY_RANDOM = "tiny-random"
SD14_RANDOM = "sd14-random"

#: Budgets of chapter 03 (latent slices).
SLICE_BUDGETS: dict[str, dict] = {
    "smoke": dict(
        resolution=3,
        k=16,
        n_dirs=2,
        radius=0.5,
        steps=5,
        mosaic=3,
        chunk_size=None,
        widget_resolution=3,
    ),
    # 196 grid points x 120 VJPs through the 32x32 decoder: minutes on 2 CPU cores
    "book": dict(
        resolution=14,
        k=120,
        n_dirs=16,
        radius=0.5,
        steps=25,
        mosaic=7,
        chunk_size=None,
        widget_resolution=6,
    ),
    # SD 1.4's decoder at 512x512: 120 VJPs per grid point, 8 at a time to fit in GPU memory
    "paper": dict(
        resolution=12,
        k=120,
        n_dirs=16,
        radius=0.5,
        steps=50,
        mosaic=6,
        chunk_size=8,
        widget_resolution=4,
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """The pipeline's weights are neither on disk nor downloadable from here."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to the hub within ``timeout_s``: so a machine without internet fails at
    once instead of waiting for HTTP retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _missing_weights_message(name: str, reason: str) -> str:
    return (
        f"Cannot load the pipeline {name!r}: {reason}.\n"
        f"  * On a machine with internet: `hf download {name}` (or `huggingface-cli download {name}`),"
        " then load it again, here or with HF_HUB_OFFLINE=1.\n"
        "  * Or give the path of a local diffusers pipeline directory (one with model_index.json).\n"
        f"  * The project's offline model needs no download: load_pipeline({str(MINI_MODEL)!r})."
    )


def resolve_local(name_or_path: str | os.PathLike) -> Path | None:
    """The local pipeline directory meant by ``name_or_path``, or ``None`` for a hub id.

    Relative paths are tried against the working directory, then the project root (so
    ``"data/mini-sd"`` works from ``notebooks/`` too); ``"mini-sd"`` names the offline model.
    """
    if str(name_or_path) in ("mini", "mini-sd"):
        return MINI_MODEL
    path = Path(name_or_path).expanduser()
    for candidate in (path, PROJECT_ROOT / path):
        if candidate.exists():
            return candidate
    parent_is_local = any((base / path.parts[0]).is_dir() for base in (Path.cwd(), PROJECT_ROOT))
    looks_like_hub_id = not path.is_absolute() and len(path.parts) == 2 and not parent_is_local
    if looks_like_hub_id:
        return None
    raise WeightsNotFoundError(_missing_weights_message(str(name_or_path), "no such local directory"))


def load_pipeline(
    name_or_path: str | os.PathLike = MINI_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> SDPipeline:
    """Load a Stable-Diffusion pipeline: a hub id (``CompVis/stable-diffusion-v1-4``), a local
    directory, or the project's offline model (the default).

    Hub ids are looked up in the local cache first; when they are not there and
    ``HF_HUB_OFFLINE`` is set or the hub cannot be reached within 3 s, this raises
    :class:`WeightsNotFoundError` at once, saying what to download or which path to give.
    The safety checker is not loaded. Returns the pipeline on ``device`` (default:
    :func:`geomlib.default_device`) in ``dtype`` (default: as saved), in eval mode.
    """
    kwargs: dict[str, Any] = dict(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["dtype"] = dtype
    with quiet_hub_libraries():
        pipe = _from_pretrained(name_or_path, kwargs)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.unet, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return pipe.to(default_device(None if device is None else str(device)))


def _from_pretrained(name_or_path: str | os.PathLike, kwargs: dict) -> SDPipeline:
    """A local directory, or a hub id from the cache; fails fast when neither is there."""
    local = resolve_local(name_or_path)
    if local is not None:
        if not (local / "model_index.json").exists():
            raise WeightsNotFoundError(_missing_weights_message(str(local), "it has no model_index.json"))
        pipe = StableDiffusionPipeline.from_pretrained(str(local), local_files_only=True, **kwargs)
    else:
        name = str(name_or_path)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(name, local_files_only=True, **kwargs)
        except (OSError, ValueError) as cached_error:  # not in the cache (diffusers raises OSError)
            if _offline():
                raise WeightsNotFoundError(
                    _missing_weights_message(name, "not in the cache, HF_HUB_OFFLINE is set")
                ) from cached_error
            if not _hub_reachable():
                raise WeightsNotFoundError(
                    _missing_weights_message(name, "not in the cache, hub unreachable")
                ) from cached_error
            pipe = StableDiffusionPipeline.from_pretrained(name, **kwargs)
    return pipe


def tiny_random_pipeline(folder: str | os.PathLike | None = None, *, seed: int = 0) -> SDPipeline:
    """A tiny SD-architecture pipeline with random weights (untrained), saved to ``folder`` (a
    temporary directory by default) and loaded back through :func:`load_pipeline`: the hub's code
    path, for tests and for chapters run before the offline model exists."""
    from geomlib.mini.build import build_pipeline
    from geomlib.mini.world import World

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="geomlib-tiny-sd-"))
    with quiet_hub_libraries():
        build_pipeline(World(seed=0, n_memorised=4).vocabulary, "tiny", seed=seed).save_pretrained(folder)
    return load_pipeline(folder, device="cpu")


def random_sd14_pipeline(device=None, dtype: torch.dtype | None = None, *, seed: int = 0) -> SDPipeline:
    """SD 1.4's architecture (published UNet, VAE and CLIP ViT-L/14 configs) with random weights.

    Only for measuring the time and memory of the paper-scale path on a GPU without the real
    weights: its images and descriptors mean nothing.
    """
    from geomlib.mini.build import build_pipeline
    from geomlib.mini.world import World

    pipe = build_pipeline(World(seed=0, n_memorised=0).vocabulary, "sd14", seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(default_device(None if device is None else str(device)), dtype)


def open_model(model: str, device=None) -> tuple[StableDiffusionPipeline, str]:
    """A chapter's model and a label for its figures: ``"tiny-random"`` builds the untrained tiny
    pipeline, ``"sd14-random"`` SD 1.4's architecture with random weights (both labelled so, never
    for results); anything else goes to :func:`load_pipeline`."""
    if model == SD14_RANDOM:
        return random_sd14_pipeline(device), "RANDOM-WEIGHT SD 1.4 architecture: time and memory check only"
    if model == TINY_RANDOM:
        return tiny_random_pipeline().to(
            default_device(device)
        ), "UNTRAINED tiny random pipeline (placeholder)"
    is_mini = Path(model).resolve() == MINI_MODEL.resolve()
    return load_pipeline(model, device=device), "mini-sd (data/mini-sd)" if is_mini else str(model)


def world_for_model(model: str, image_size: int | None = None) -> World | None:
    """The procedural :class:`~geomlib.mini.world.World` a model was trained on, or ``None``.

    The offline model (or any folder with a ``world.json``) gives its own world; the untrained
    tiny pipeline (``"tiny-random"``) the world its vocabulary came from, at ``image_size``;
    anything else (Stable Diffusion) has none.
    """
    if model == TINY_RANDOM:
        return World(seed=0, n_memorised=4, image_size=image_size or 16)
    try:
        folder = resolve_local(model)
    except FileNotFoundError:
        return None
    return load_world(folder) if folder is not None and (folder / "world.json").exists() else None


def pipeline_resolution(pipe) -> int:
    """Side in pixels of the images the pipeline's VAE works at."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def default_model(profile: str) -> str:
    """SD 1.4 for ``paper``; otherwise the offline model, or the tiny random pipeline if absent."""
    if profile == "paper":
        return SD14
    return str(MINI_MODEL) if (MINI_MODEL / "model_index.json").exists() else TINY_RANDOM


class LatentDecoder(nn.Module):
    """The VAE decoder as a batched function of diffusion latents.

    ``forward(z)``: ``(B, 4, h, w)`` latents (scaled by ``scaling_factor``, as the UNet sees
    them) to ``(B, 3, H, W)`` images in about ``[-1, 1]``; exactly what the pipeline decodes,
    ``vae.decode(z / scaling_factor)``. Its nonlinearities (``SiLU``) are the VAE's, so
    :func:`geomlib.local_complexity` can hook it.
    """

    vae: Any  # a diffusers AutoencoderKL

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, 4, h, w)`` diffusion latents to ``(B, 3, H, W)`` images."""
        return self.vae.decode(z / self.scaling_factor).sample


def latent_decoder(pipe: SDPipeline) -> LatentDecoder:
    """The decoder of ``pipe`` as a function ``(B, 4, h, w) -> (B, 3, H, W)``."""
    return LatentDecoder(pipe.vae)


def latent_shape(
    pipe: SDPipeline, height: int | None = None, width: int | None = None
) -> tuple[int, int, int]:
    """``(4, h, w)`` of the latents of ``height x width`` images (default: the UNet's size)."""
    factor = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * factor
    width = width or pipe.unet.config.sample_size * factor
    if height % factor or width % factor:
        raise ValueError(
            f"height and width must be multiples of the VAE factor {factor}, got {height}x{width}"
        )
    return (pipe.unet.config.in_channels, height // factor, width // factor)


@torch.no_grad()
def encode_images(pipe: SDPipeline, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Diffusion latents of images: the VAE posterior mean times ``scaling_factor``.

    Parameters
    ----------
    images
        ``(B, 3, H, W)`` floats in ``[0, 1]``.

    Returns
    -------
    ``(B, 4, H / f, W / f)`` on the pipeline's device, in its dtype.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    vae = pipe.vae
    parts = []
    for start in range(0, len(images), batch_size):
        # contiguous: a channels-last view (e.g. from numpy HWC arrays) takes other conv kernels
        chunk = images[start : start + batch_size].to(vae.device, vae.dtype).contiguous() * 2 - 1
        parts.append(vae.encode(chunk).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(parts)


@torch.no_grad()
def decode_latents(pipe: SDPipeline, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Images of diffusion latents ``(B, 4, h, w)``, as ``(B, H, W, 3)`` floats in ``[0, 1]``."""
    decoder = latent_decoder(pipe)
    parts = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(pipe.vae.device, pipe.vae.dtype)
        parts.append(((decoder(chunk) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(parts)


def initial_latents(
    pipe: SDPipeline, n: int, seed: int = 0, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """``(n, 4, h, w)`` standard normal latents; sample ``i`` is drawn on the CPU from seed
    ``seed + i``, so it is the same on every device and whatever ``n`` is."""
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

    def _x0(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.scheduler.alphas_cumprod[int(timestep)].to(sample.device, torch.float32)
        sample, model_output = sample.float(), model_output.float()
        if self.prediction == "epsilon":
            return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
        if self.prediction == "v_prediction":
            return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
        return model_output  # "sample"

    def step(self, model_output, timestep, sample, *args, **kwargs):
        self.x0.append(self._x0(model_output, timestep, sample).cpu())
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
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    noise = latents if latents is not None else initial_latents(pipe, len(prompts), seed, height, width)
    if len(noise) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(noise)} initial latents")
    batch_size = batch_size or len(prompts)
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


@dataclass
class LatentPlane:
    """A 2-D slice of latent space: ``origin + u * basis[0] + v * basis[1]``.

    Attributes
    ----------
    origin : ``(E,)`` the anchors' centroid (flattened latent).
    basis : ``(2, E)`` orthonormal directions (Gram-Schmidt of ``a1 - a0``, ``a2 - a0``).
    shape : per-sample latent shape, e.g. ``(4, 8, 8)``.
    anchor_coords : ``(3, 2)`` the anchors' ``(u, v)``.
    us, vs : ``(n,)`` grid coordinates along each direction.
    """

    origin: torch.Tensor
    basis: torch.Tensor
    shape: tuple[int, ...]
    anchor_coords: torch.Tensor
    us: torch.Tensor
    vs: torch.Tensor

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(umin, umax, vmin, vmax)`` for ``imshow(..., origin="lower")``."""
        return (float(self.us[0]), float(self.us[-1]), float(self.vs[0]), float(self.vs[-1]))

    def to_latent(self, coords: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` plane coordinates to ``(N, *shape)`` latents."""
        coords = torch.as_tensor(coords, dtype=self.origin.dtype)
        return (self.origin + coords @ self.basis).reshape(len(coords), *self.shape)

    def grid_coords(self) -> torch.Tensor:
        """``(n_v, n_u, 2)``: row ``i`` has ``v = vs[i]`` (row 0 is the bottom of a heatmap)."""
        v, u = torch.meshgrid(self.vs, self.us, indexing="ij")
        return torch.stack([u, v], dim=-1)

    def grid_latents(self) -> torch.Tensor:
        """``(n_v * n_u, *shape)`` latents of the grid, row by row."""
        return self.to_latent(self.grid_coords().reshape(-1, 2))

    def inside_hull(self) -> torch.Tensor:
        """``(n_v, n_u)`` bool: grid points inside the anchors' triangle (barycentric test)."""
        a, b, c = self.anchor_coords.double()
        p = self.grid_coords().double()
        matrix = torch.stack([b - a, c - a], dim=1)  # columns: edges from a
        weights = torch.linalg.solve(matrix, (p - a).reshape(-1, 2).T).T.reshape(*p.shape[:2], 2)
        tol = 1e-9
        return (weights >= -tol).all(-1) & (weights.sum(-1) <= 1 + tol)


def latent_plane(anchors: torch.Tensor, resolution: int = 16, padding: float = 0.25) -> LatentPlane:
    """The plane through three anchor latents, with a ``resolution x resolution`` grid on it.

    Parameters
    ----------
    anchors
        ``(3, *shape)`` latents, not collinear.
    resolution
        grid points per axis.
    padding
        the grid covers the anchors' bounding box in plane coordinates, widened on each side by
        ``padding`` times its width (height).
    """
    if anchors.ndim < 2 or anchors.shape[0] != 3:
        raise ValueError(f"anchors must have shape (3, *latent_shape), got {tuple(anchors.shape)}")
    if resolution < 2 or padding < 0:
        raise ValueError(f"need resolution >= 2 and padding >= 0, got {resolution}, {padding}")
    flat = anchors.flatten(1).double()
    first = flat[1] - flat[0]
    second = flat[2] - flat[0]
    e1 = first / first.norm()
    residual = second - (second @ e1) * e1
    if residual.norm() <= 1e-5 * second.norm():  # relative to float32 precision
        raise ValueError("the three anchors are (nearly) collinear: they span no plane")
    basis = torch.stack([e1, residual / residual.norm()])
    origin = flat.mean(0)
    coords = (flat - origin) @ basis.T
    low, high = coords.min(0).values, coords.max(0).values
    margin = padding * (high - low)
    axes = [
        torch.linspace(float(low[i] - margin[i]), float(high[i] + margin[i]), resolution, dtype=torch.float64)
        for i in range(2)
    ]
    dtype = anchors.dtype if anchors.is_floating_point() else torch.float32
    return LatentPlane(
        origin=origin.to(dtype),
        basis=basis.to(dtype),
        shape=tuple(anchors.shape[1:]),
        anchor_coords=coords.to(dtype),
        us=axes[0].to(dtype),
        vs=axes[1].to(dtype),
    )


def decoder_descriptors(
    pipe: SDPipeline,
    latents: torch.Tensor,
    *,
    method: Method = "projected",
    k: int | None = 120,
    seed: int = 0,
    radius: float | None = 0.5,
    n_dirs: int | None = 16,
    chunk_size: int | None = None,
    progress: bool = True,
) -> Descriptors:
    """ψ, ν (and δ) of the decoder at many latents, one latent per :func:`geomlib.describe` call.

    Each latent's products and vertex passes run in calls of their own, whose shapes do not depend
    on the other latents: its values are bit-identical whether it is described alone or among
    others, in any order, batch or resumed run (at a fixed device, dtype and settings). Batching
    latents together would let CPU kernels sum in another order for another batch shape, which
    moves ψ in the 7th digit and flips δ by a neuron whose pre-activation is within rounding of 0.
    On 2 CPU cores this is also no slower than batches of 8 or 16 (the per-latent passes already
    fill the cores).

    Parameters
    ----------
    latents
        ``(N, 4, h, w)`` diffusion latents.
    method, k, seed
        the spectrum: ``"projected"`` with ``k = 120`` and the fixed ``W`` of ``seed`` (the paper's
        setting), or ``"randomized"`` (top-``k`` by randomized SVD), or ``"exact"``.
    radius, n_dirs
        the cross-polytope of δ, in latent units (``None``: no δ), counted on the decoder's SiLUs.
    chunk_size
        at most this many products per vectorised pass (bounds memory on large decoders).

    Returns
    -------
    :class:`~geomlib.Descriptors` with ``(N,)`` fields, on the CPU.
    """
    decoder = latent_decoder(pipe)
    device, dtype = pipe.vae.device, pipe.vae.dtype
    k_used = min(k, int(np.prod(latents.shape[1:]))) if method == "randomized" and k else k
    parts = []
    for index in tqdm(range(len(latents)), desc="descriptors", disable=not progress):
        z = latents[index : index + 1].to(device, dtype).contiguous()  # encodings are strided
        parts.append(
            describe(
                decoder,
                z,
                method=method,
                k=k_used,
                seed=seed,
                chunk_size=chunk_size,
                radius=radius,
                n_dirs=n_dirs if radius is not None else None,
            )
        )
    every = Descriptors.concatenate(parts)
    return Descriptors(  # on the CPU, ψ, ν and σ as float32 (also for half-precision decoders)
        local_scaling=every.local_scaling.float().cpu(),
        local_rank=every.local_rank.float().cpu(),
        singular_values=every.singular_values.float().cpu(),
        local_complexity=None if every.local_complexity is None else every.local_complexity.cpu(),
    )


DESCRIPTOR_NAMES: tuple[str, ...] = ("local_scaling", "local_rank", "local_complexity")


def default_prompts(model: str) -> list[str]:
    """The chapter's three prompts: the paper's for SD, captions of the grammar otherwise."""
    if model == SD14 or "stable-diffusion" in str(model):
        return ["a cat", "a dog", "a fox"]
    return [
        "a large red circle in the center on a blue background",
        "a large yellow star in the center on a blue background",
        "a large green square in the center on a blue background",
    ]


@dataclass
class LatentSlice:
    """Descriptors of the decoder over a :class:`LatentPlane`'s grid.

    Attributes
    ----------
    plane : the plane and its grid.
    grids : ``{descriptor: (n_v, n_u) array}`` ψ, ν, δ (row 0 = smallest ``v``).
    inside : ``(n_v, n_u)`` bool, grid points inside the anchors' triangle.
    """

    plane: LatentPlane
    grids: dict[str, np.ndarray]
    inside: np.ndarray

    def hull_contrast(self) -> dict[str, tuple[float, float]]:
        """``{descriptor: (mean inside the anchors' hull, mean outside)}``."""

        def mean(grid: np.ndarray, mask: np.ndarray) -> float:
            return float(grid[mask].mean()) if mask.any() else float("nan")  # a coarse grid may miss the hull

        return {
            name: (mean(grid, self.inside), mean(grid, ~self.inside)) for name, grid in self.grids.items()
        }


def latent_slice(
    pipe: SDPipeline,
    anchors: torch.Tensor,
    *,
    resolution: int = 16,
    padding: float = 0.25,
    radius: float = 0.5,
    **descriptor_options,
) -> LatentSlice:
    """ψ, ν, δ of the decoder on the plane through ``anchors: (3, 4, h, w)``.

    ``descriptor_options`` go to :func:`decoder_descriptors` (``method``, ``k``, ``n_dirs``,
    ``seed``, ...); ``radius`` is δ's cross-polytope radius in latent units.
    """
    plane = latent_plane(anchors.float().cpu(), resolution, padding)
    values = decoder_descriptors(pipe, plane.grid_latents(), radius=radius, **descriptor_options)
    shape = (len(plane.vs), len(plane.us))
    grids = {name: getattr(values, name).reshape(shape).numpy() for name in DESCRIPTOR_NAMES}
    return LatentSlice(plane=plane, grids=grids, inside=plane.inside_hull().numpy())


def slice_images(pipe: SDPipeline, plane: LatentPlane, n: int) -> tuple[np.ndarray, torch.Tensor]:
    """Decoded images on an ``n x n`` grid spanning the plane's extent, top row first (largest
    ``v``), as for a picture: ``((n * n, H, W, 3), (n * n, 2) coordinates)``."""
    umin, umax, vmin, vmax = plane.extent
    v, u = torch.meshgrid(torch.linspace(vmax, vmin, n), torch.linspace(umin, umax, n), indexing="ij")
    coords = torch.stack([u, v], dim=-1).reshape(-1, 2).to(plane.origin.dtype)
    return decode_latents(pipe, plane.to_latent(coords)), coords


def slice_slider(pipe: SDPipeline, result: LatentSlice, images_per_row: int = 8) -> str:
    """An explorable for a static page: a slider over the grid's rows; each frame marks the row on
    the ψ, ν, δ heatmaps and shows images decoded along it. Returns ``to_jshtml`` HTML."""
    import matplotlib.pyplot as plt

    from geomlib.plotting import DESCRIPTOR_CMAPS, DESCRIPTOR_LABELS, slider_animation

    plane = result.plane
    columns = np.unique(np.linspace(0, len(plane.us) - 1, images_per_row).round().astype(int))
    coords = plane.grid_coords()[:, columns].reshape(-1, 2)
    decoded = decode_latents(pipe, plane.to_latent(coords))
    strips = decoded.reshape(len(plane.vs), len(columns), *decoded.shape[1:])
    fig = plt.figure(figsize=(10, 5.6))
    grid = fig.add_gridspec(2, 3, height_ratios=[3, 1.3])
    lines = []
    for index, name in enumerate(DESCRIPTOR_NAMES):
        ax = fig.add_subplot(grid[0, index])
        ax.imshow(
            result.grids[name],
            origin="lower",
            extent=plane.extent,
            cmap=DESCRIPTOR_CMAPS[name],
            aspect="auto",
        )
        ax.plot(*np.vstack([plane.anchor_coords, plane.anchor_coords[:1]]).T, "w--", linewidth=1)
        ax.set_title(DESCRIPTOR_LABELS[name], fontsize=9)
        lines.append(ax.axhline(float(plane.vs[0]), color="red", linewidth=1.5))
    strip_ax = fig.add_subplot(grid[1, :])
    strip_ax.set_axis_off()
    strip = strip_ax.imshow(np.concatenate(list(strips[0]), axis=1))
    fig.tight_layout()

    def update(row: int) -> None:
        for line in lines:
            line.set_ydata([float(plane.vs[row])] * 2)
        strip.set_data(np.concatenate(list(strips[row]), axis=1))
        strip_ax.set_title(
            f"row {row}: v = {float(plane.vs[row]):.2f}, images at {len(columns)} points along u", fontsize=9
        )

    return slider_animation(fig, update, len(plane.vs))


def slice_widget(
    pipe: SDPipeline,
    prompts: list[str],
    *,
    padding: float,
    resolution: int,
    seed: int = 0,
    guidance_scale: float = 7.5,
    steps: int = 25,
    **slice_options,
) -> None:
    """Live controls (displayed) for readers who run the notebook: three prompts and the padding;
    the "Run" button generates the anchors and redraws the ψ, ν, δ heatmaps (nothing runs until then)."""
    import ipywidgets as widgets

    from geomlib.plotting import heatmap_panels, live_controls, outline_polygon

    if len(prompts) != 3:
        raise ValueError(f"a slice needs three prompts, got {len(prompts)}")

    def redraw(prompt_a: str, prompt_b: str, prompt_c: str, padding: float):
        anchors = generate(
            pipe,
            [prompt_a, prompt_b, prompt_c],
            seed=seed,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
        ).latents
        result = latent_slice(
            pipe, anchors, resolution=resolution, padding=padding, progress=False, **slice_options
        )
        fig = heatmap_panels(result.grids, result.plane.extent)
        outline_polygon(fig, result.plane.anchor_coords.numpy(), labels="ABC")
        return fig

    texts = {
        f"prompt_{key}": widgets.Text(value=text, layout=widgets.Layout(width="90%"))
        for key, text in zip("abc", prompts, strict=True)
    }
    slider = widgets.FloatSlider(value=padding, min=0.0, max=2.0, step=0.1, description="padding")
    live_controls(
        redraw, {**texts, "padding": slider}, rows=[*([name] for name in texts), ["padding"]], manual=True
    )
