"""The decoder as a function of the latent, and its descriptors at many latents.

``LatentDecoder`` maps diffusion latents ``(B, 4, h, w)`` to images ``(B, 3, H, W)``, exactly what the
pipeline decodes, so the kernels of :mod:`geomlib.core` differentiate it; :class:`DescriptorSettings`
is the one description of how ψ, ν and δ of a decoder are computed, shared by every chapter, the
command line and their caches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from geomlib.core.checks import finite_tensor, positive_int, positive_number
from geomlib.core.descriptors import Descriptors, describe
from geomlib.core.jacobian import check_latents
from geomlib.core.spectrum import METHODS, Method
from geomlib.sd.hub import SDPipeline


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
    height = pipe.unet.config.sample_size * factor if height is None else positive_int("height", height)
    width = pipe.unet.config.sample_size * factor if width is None else positive_int("width", width)
    if height % factor or width % factor:
        raise ValueError(
            f"height and width must be multiples of the VAE factor {factor}, got {height}x{width}"
        )
    return (pipe.unet.config.in_channels, height // factor, width // factor)


#: How far outside [0, 1] an image may reach before it is taken for another range (resampling
#: overshoots a little).
IMAGE_RANGE_SLACK = 0.01


@torch.no_grad()
def encode_images(pipe: SDPipeline, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Diffusion latents of images: the VAE posterior mean times ``scaling_factor``.

    Parameters
    ----------
    images
        ``(B, 3, H, W)`` floats in ``[0, 1]``, ``H`` and ``W`` multiples of the VAE's factor.
    batch_size
        images per encoder call (1: a latent that does not depend on its batch neighbours).

    Returns
    -------
    ``(B, 4, H / f, W / f)`` on the pipeline's device, in its dtype.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floats in [0, 1], got dtype {images.dtype} (use images.float() / 255)"
        )
    finite_tensor("images", images)
    low, high = float(images.min()), float(images.max())
    if low < -IMAGE_RANGE_SLACK or high > 1 + IMAGE_RANGE_SLACK:
        hint = (
            " (images / 255?)" if high > 2 else " (images in [-1, 1]: (images + 1) / 2)" if low < -0.5 else ""
        )
        raise ValueError(f"images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]{hint}")
    factor = pipe.vae_scale_factor
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ValueError(
            f"images of {images.shape[2]}x{images.shape[3]} px: height and width must be multiples of the"
            f" VAE factor {factor} (resize them)"
        )
    batch_size = positive_int("batch_size", batch_size)
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
    check_latents(latents, "latents")
    batch_size = positive_int("batch_size", batch_size)
    decoder = latent_decoder(pipe)
    parts = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(pipe.vae.device, pipe.vae.dtype)
        parts.append(((decoder(chunk) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(parts)


@dataclass(frozen=True)
class MemoryEstimate:
    """What describing one latent of an ``height x width`` image needs, in bytes (an estimate from
    the decoder's activations, scaled from one small forward pass: convolutions scale with the
    pixels; attention, which scales faster, is not counted, so it is a lower bound there)."""

    vertex_pass: int  # one forward pass over the vertices of δ's cross-polytope
    products: int  # the stored forward pass of the products plus one vectorised backward pass

    @property
    def peak(self) -> int:
        """The larger of the two (they do not overlap)."""
        return max(self.vertex_pass, self.products)


#: Side (latent units) of the probe forward pass behind :func:`estimate_memory`.
PROBE_LATENT_SIDE = 8
#: Live tensors of the widest size during a forward pass (a resnet block's input, its normalised
#: copy and the convolution's output).
LIVE_TENSORS = 3


@torch.no_grad()
def estimate_memory(
    pipe: SDPipeline, height: int, width: int, settings: DescriptorSettings, *, itemsize: int | None = None
) -> MemoryEstimate:
    """How much memory :func:`decoder_descriptors` needs per latent of ``height x width`` images.

    One forward pass of the decoder on a ``4 x 8 x 8`` latent records the largest activation and
    the sum of all of them per output pixel; both scale with the pixels of the real size. The
    vertex pass holds ``LIVE_TENSORS`` of the largest for each of its ``min(2P, chunk_size)``
    vertices; the products store one forward pass and run ``chunk_size`` backward passes at once.
    """
    decoder = latent_decoder(pipe)
    probe = torch.zeros(1, pipe.unet.config.in_channels, PROBE_LATENT_SIDE, PROBE_LATENT_SIDE)
    probe = probe.to(pipe.vae.device, pipe.vae.dtype)
    sizes: list[int] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out: sizes.append(out.numel()) if isinstance(out, torch.Tensor) else None
        )
        for module in decoder.vae.decoder.modules()
    ]
    try:
        image = decoder(probe)
    finally:
        for handle in handles:
            handle.remove()
    scale = (height * width) / (image.shape[-2] * image.shape[-1])
    itemsize = itemsize or torch.finfo(pipe.vae.dtype).bits // 8
    widest, total = max(sizes) * scale * itemsize, sum(sizes) * scale * itemsize
    n_vertices = 0 if settings.radius is None else 2 * settings.n_dirs
    per_pass = n_vertices if settings.chunk_size is None else min(n_vertices, settings.chunk_size)
    vectors = settings.chunk_size or (8 if pipe.vae.device.type == "cpu" else (settings.k or 1))
    return MemoryEstimate(
        vertex_pass=int(per_pass * LIVE_TENSORS * widest),
        products=int(total + vectors * LIVE_TENSORS * widest),
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
    check_latents(latents, "latents")  # the whole batch: bad samples named by their own index
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


@dataclass(frozen=True)
class DescriptorSettings:
    """How ψ, ν (and δ) of a decoder are computed: the one description that chapters, the command
    line and their caches share. Every field decides the values, so all of them go into keys.

    Attributes
    ----------
    method
        ``"projected"`` (the paper's sketch ``W J`` with ``k`` rows), ``"randomized"`` (top-``k``
        singular values by randomized SVD) or ``"exact"`` (the whole spectrum; ``k`` unused).
    k
        sketch size (``None`` only for ``"exact"``).
    seed
        seed of ``W``, of the randomized test vectors and of δ's directions: the same for every
        latent of a run.
    radius
        δ's cross-polytope radius in latent units; ``None``: no δ.
    n_dirs
        δ's directions ``P`` (the polytope has ``2P`` vertices).
    chunk_size
        at most this many products per vectorised pass (bounds memory). It changes the batch shape
        of the products, and so the last digits of ψ and ν (:data:`geomlib.BATCH_TOLERANCE`).
    """

    method: Method = "projected"
    k: int | None = 120
    seed: int = 0
    radius: float | None = None
    n_dirs: int = 16
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        positive_int("k", self.k, optional=self.method == "exact")
        positive_int("n_dirs", self.n_dirs)
        positive_int("chunk_size", self.chunk_size, optional=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.radius is not None:
            positive_number("radius (None: no δ)", self.radius)

    def key(self) -> dict:
        """The fields as a dict, for cache keys and table columns."""
        return dataclasses.asdict(self)

    def describe(self, pipe: SDPipeline, latents: torch.Tensor, *, progress: bool = False) -> Descriptors:
        """:func:`decoder_descriptors` of ``pipe`` at ``latents: (N, 4, h, w)`` with these settings."""
        return decoder_descriptors(pipe, latents, progress=progress, **self.key())
