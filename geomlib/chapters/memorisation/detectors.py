"""The samples of chapter 08 and the four detectors' scores of each, cached per (prompt, seed).

* the decoder's ψ, ν, δ along the denoising trajectory (the paper's, as chapter 05);
* Wen et al. (ICLR 2024): ``||eps(x_t, c) - eps(x_t, empty)||`` over the first steps;
* the posterior mean's Jacobian ``d x0_hat / d x_t`` at one intermediate step: its local scaling
  and local rank, with the same kernels (:func:`geomlib.describe`) as the decoder's;
* the nearest training image in pixel space (the world's ground truth, as a baseline).

Every detector computes its missing rows in batches and saves each batch's rows with the seconds
they took, so an interrupted run resumes and the table's costs include cached rows. Batches change
the last digits of a value (CPU kernels sum in another order), never more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from geomlib.core.descriptors import DESCRIPTOR_NAMES, describe
from geomlib.core.diffusion import predicted_x0
from geomlib.runtime.cache import ResultCache
from geomlib.sd.decoder import DescriptorSettings, decode_latents
from geomlib.sd.hub import SDPipeline
from geomlib.sd.mini.quality import nearest_distances, to_tensor
from geomlib.sd.sampling import generate, initial_latents

Key = tuple[str, int]  # (prompt, seed)


@dataclass
class Samples:
    """Generated trajectories of ``keys`` (all on the CPU, float32).

    Attributes
    ----------
    keys : ``N`` (prompt, seed) pairs.
    trajectories : ``(T + 1, N, 4, h, w)`` the initial noise, then the latent after each step.
    timesteps : ``(T,)`` the scheduler's timesteps.
    images : ``(N, H, W, 3)`` the decoded samples in ``[0, 1]``.
    seconds : ``(N,)`` sampling time of each trajectory (its batch's time, shared).
    """

    keys: list[Key]
    trajectories: torch.Tensor
    timesteps: torch.Tensor
    images: np.ndarray
    seconds: np.ndarray


def _in_batches(
    keys: Sequence[Key],
    done: Callable[[Key], bool],
    compute: Callable[[list[Key]], None],
    batch_size: int,
    desc: str,
    progress: bool,
) -> None:
    """Call ``compute`` on the keys not ``done``, ``batch_size`` at a time, with a progress bar."""
    missing = [key for key in keys if not done(key)]
    for start in tqdm(range(0, len(missing), batch_size), desc=desc, disable=not progress or not missing):
        compute(missing[start : start + batch_size])


def generate_samples(
    pipe: SDPipeline,
    keys: Sequence[Key],
    cache: ResultCache,
    *,
    steps: int,
    guidance: float,
    batch_size: int,
    progress: bool = True,
) -> Samples:
    """Sample every (prompt, seed) of ``keys`` with the pipeline's own sampler (seed ``s`` gives
    :func:`~geomlib.sd.sampling.initial_latents` of seed ``s``, whatever the prompt); trajectories
    are cached in ``cache`` (whose settings must name the model, ``steps`` and ``guidance``)."""
    if not keys or len(set(keys)) != len(keys):
        raise ValueError("keys must be a non-empty list of distinct (prompt, seed) pairs")

    def compute(batch: list[Key]) -> None:
        tic = time.perf_counter()
        noise = torch.cat([initial_latents(pipe, 1, seed=seed) for _, seed in batch])
        out = generate(
            pipe, [p for p, _ in batch], guidance_scale=guidance, num_inference_steps=steps, latents=noise
        )
        seconds = (time.perf_counter() - tic) / len(batch)
        for i, key in enumerate(batch):
            tensors = {"latents": out.trajectory[:, i].clone(), "timesteps": out.timesteps.clone()}
            cache.save_tensors(key, tensors | {"seconds": torch.tensor(seconds, dtype=torch.float64)})

    _in_batches(keys, lambda key: cache.path(key, ".pt").exists(), compute, batch_size, "sampling", progress)
    stored = [_stored(cache.load_tensors(key), key) for key in keys]
    trajectories = torch.stack([entry["latents"] for entry in stored], dim=1)
    return Samples(
        keys=list(keys),
        trajectories=trajectories,
        timesteps=stored[0]["timesteps"],
        images=decode_latents(pipe, trajectories[-1]),
        seconds=np.array([float(entry["seconds"]) for entry in stored]),
    )


def _cached_rows(
    cache: ResultCache,
    keys: Sequence[Key],
    compute: Callable[[np.ndarray], list[dict]],
    batch_size: int,
    desc: str,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Rows of ``keys`` from ``cache``, the missing ones computed by ``compute(indices)`` (indices into
    ``keys``) and saved with their share of the batch's ``seconds``; returns ``{column: (N, ...)}``."""
    index = {key: i for i, key in enumerate(keys)}

    def run(batch: list[Key]) -> None:
        tic = time.perf_counter()
        rows = compute(np.array([index[key] for key in batch]))
        seconds = (time.perf_counter() - tic) / len(batch)
        for key, row in zip(batch, rows, strict=True):
            cache.save(key, row | {"seconds": seconds})

    _in_batches(keys, lambda key: cache.path(key).exists(), run, batch_size, desc, progress)
    rows = [_stored(cache.load(key), key) for key in keys]
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def _stored(entry: dict | None, key: Key) -> dict:
    """A cache entry that must exist (it was just written)."""
    if entry is None:
        raise RuntimeError(f"the cache lost the entry of {key} while this run wrote it")
    return entry


def _check_steps(samples: Samples, steps: Sequence[int]) -> None:
    """Raise ``ValueError`` unless every step (1-based) is one of the samples' trajectories."""
    total = len(samples.timesteps)
    if not steps or any(not 1 <= step <= total for step in steps):
        raise ValueError(f"steps must lie in [1, {total}] (the trajectories' steps), got {list(steps)}")


def described_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps (1-based) ending at the last of ``steps``."""
    return sorted({int(round(steps * (i + 1) / count)) for i in range(count)})


def decoder_scores(
    pipe: SDPipeline,
    samples: Samples,
    cache: ResultCache,
    settings: DescriptorSettings,
    steps: Sequence[int],
    *,
    batch_size: int,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """The decoder's ψ, ν, δ at the latents after ``steps`` (1-based) of every trajectory:
    ``{descriptor: (N, len(steps)), "seconds": (N,)}``."""
    steps = list(steps)
    _check_steps(samples, steps)

    def compute(indices: np.ndarray) -> list[dict]:
        points = samples.trajectories[steps][:, indices]  # (S, b, 4, h, w)
        values = settings.describe(pipe, points.flatten(0, 1)).as_dict()
        shaped = {name: np.array(values[name]).reshape(len(steps), len(indices)) for name in DESCRIPTOR_NAMES}
        return [{name: shaped[name][:, j].tolist() for name in DESCRIPTOR_NAMES} for j in range(len(indices))]

    return _cached_rows(cache, samples.keys, compute, batch_size, "decoder along trajectories", progress)


def _embeddings(pipe: SDPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-conditional and empty-prompt embeddings ``(b, L, C)`` of ``prompts``."""
    conditional, unconditional = pipe.encode_prompt(prompts, pipe.unet.device, 1, True, negative_prompt=None)
    return conditional, unconditional


def _noise(pipe: SDPipeline, x_t: torch.Tensor, timestep: int, embedding: torch.Tensor) -> torch.Tensor:
    """The noise ``eps`` the UNet implies at ``x_t`` (for any prediction type)."""
    output = pipe.unet(x_t, timestep, encoder_hidden_states=embedding).sample
    alpha_bar = pipe.scheduler.alphas_cumprod[timestep].to(x_t)
    x0 = predicted_x0(x_t, output, alpha_bar, pipe.scheduler.config.prediction_type)
    # eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar); at abar = 1 the noise is undefined, 0 by convention
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt().clamp_min(1e-12)


def noise_difference_scores(
    pipe: SDPipeline,
    samples: Samples,
    cache: ResultCache,
    first_steps: int,
    *,
    batch_size: int,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Wen et al.'s detection score: the mean over the first ``first_steps`` steps of
    ``||eps(x_t, c) - eps(x_t, empty)||`` (2-norm over the latent) at the trajectory's own ``x_t``:
    ``{"noise_difference": (N,), "seconds": (N,)}``. On a zero-terminal-SNR schedule the first
    step has ``eps = x_T`` whatever the text, so it adds 0 for every prompt."""
    _check_steps(samples, list(range(1, first_steps + 1)))
    device, dtype = pipe.unet.device, pipe.unet.dtype

    @torch.no_grad()
    def compute(indices: np.ndarray) -> list[dict]:
        conditional, unconditional = _embeddings(pipe, [samples.keys[i][0] for i in indices])
        total = torch.zeros(len(indices), dtype=torch.float64)
        for step in range(first_steps):
            x_t = samples.trajectories[step][indices].to(device, dtype)
            timestep = int(samples.timesteps[step])
            difference = _noise(pipe, x_t, timestep, conditional) - _noise(pipe, x_t, timestep, unconditional)
            total += difference.flatten(1).norm(dim=1).double().cpu()
        return [{"noise_difference": float(value / first_steps)} for value in total]

    return _cached_rows(cache, samples.keys, compute, batch_size, "noise differences", progress)


def posterior_mean_scores(
    pipe: SDPipeline,
    samples: Samples,
    cache: ResultCache,
    step: int,
    k: int,
    *,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """ψ and ν of the posterior mean's Jacobian ``d x0_hat(x_t, c) / d x_t`` at the input of
    ``step`` (1-based) of every trajectory, from the projected sketch ``W J`` with ``k`` rows (the
    text-conditional prediction, no guidance: the posterior mean of the caption's distribution):
    ``{"posterior_scaling": (N,), "posterior_rank": (N,), "seconds": (N,)}``."""
    _check_steps(samples, [step])
    timestep = int(samples.timesteps[step - 1])
    device, dtype = pipe.unet.device, pipe.unet.dtype
    alpha_bar = pipe.scheduler.alphas_cumprod[timestep].to(device, dtype)
    prediction = pipe.scheduler.config.prediction_type

    def of_prompt(prompt: str, x_t: torch.Tensor) -> list[dict]:
        """The rows of one prompt's samples ``x_t: (b, 4, h, w)``, all from one call."""
        with torch.no_grad():
            conditional, _ = _embeddings(pipe, [prompt])  # (1, L, C)

        def posterior_mean(x: torch.Tensor) -> torch.Tensor:  # (b, 4, h, w) -> (b, 4, h, w)
            text = conditional.expand(len(x), -1, -1)  # b = 1 under the kernels' map over samples
            output = pipe.unet(x, timestep, encoder_hidden_states=text).sample
            return predicted_x0(x, output, alpha_bar, prediction)

        values = describe(posterior_mean, x_t.to(device, dtype), method="projected", k=k, seed=seed)
        return [
            {"posterior_scaling": float(psi), "posterior_rank": float(nu)}
            for psi, nu in zip(values.local_scaling.tolist(), values.local_rank.tolist(), strict=True)
        ]

    def compute(indices: np.ndarray) -> list[dict]:
        # The kernels map f over samples one at a time, so the text embedding in f's closure must be
        # one prompt's: the samples of a prompt (its seeds) share a call, prompts take turns.
        by_prompt: dict[str, list[int]] = {}
        for i in indices:
            by_prompt.setdefault(samples.keys[i][0], []).append(int(i))
        rows: dict[int, dict] = {}
        for prompt, members in by_prompt.items():
            x_t = samples.trajectories[step - 1][members]
            rows |= dict(zip(members, of_prompt(prompt, x_t), strict=True))
        return [rows[int(i)] for i in indices]

    return _cached_rows(cache, samples.keys, compute, batch_size, "posterior-mean Jacobians", progress)


@dataclass
class TrainingImages:
    """The images the nearest-image baseline searches.

    Attributes
    ----------
    images : ``(M, H, W, 3)`` uint8.
    source : where they come from, for the chapter's text.
    memorised_index : for each memorised caption, the row of its training image (the world only).
    """

    images: np.ndarray
    source: str
    memorised_index: dict[str, int]


def world_training_images(world, train_size: int, count: int | None) -> TrainingImages:
    """The offline world's memorised renders and the first ``count`` of its ``train_size`` training
    renders (a uniform sample of them, :meth:`~geomlib.sd.mini.world.World.dataset_scenes`)."""
    scenes = world.dataset_scenes(train_size, seed=0)[: train_size if count is None else count]
    images = np.concatenate([world.render(world.memorised), world.render(scenes)])
    source = (
        f"the {len(world.memorised)} memorised renders and {len(scenes)} of the {train_size} training renders"
    )
    return TrainingImages(images, source, {text: i for i, text in enumerate(world.memorised_captions)})


def folder_training_images(folder: str | Path, size: int, count: int | None) -> TrainingImages:
    """Up to ``count`` images of an image folder (e.g. the training images of known memorised
    prompts), centre-cropped to ``size`` px (:class:`~geomlib.sd.images.ImageFolderImages`)."""
    from geomlib.sd.images import ImageFolderImages, image_files

    available = len(image_files(folder))
    images = ImageFolderImages(
        folder, available if count is None else min(count, available), size=size, min_side=1
    )
    return TrainingImages(images[:], f"{len(images)} images of {folder}", {})


def nearest_training_scores(samples: Samples, training: TrainingImages) -> dict[str, np.ndarray]:
    """RMS pixel distance (images in ``[0, 1]``) of each sample to its nearest training image, and
    that image's row: ``{"nearest_distance": (N,), "nearest_index": (N,), "seconds": (N,)}``."""
    tic = time.perf_counter()
    distances, index = nearest_distances(to_tensor(samples.images), to_tensor(training.images))
    seconds = (time.perf_counter() - tic) / len(samples.keys)
    return {
        "nearest_distance": distances.numpy().astype(float),
        "nearest_index": index.numpy(),
        "seconds": np.full(len(samples.keys), seconds),
    }


#: The detector families, each with its own cache.
FAMILIES: tuple[str, ...] = ("samples", "decoder", "noise_difference", "posterior_mean")


def benchmark_caches(root: str | Path, fingerprint: str, budget, seed: int = 0) -> dict[str, ResultCache]:
    """One cache per family under ``root``, each keyed by the model, the sampler and every budget
    field its values depend on, and the posterior mean's sketch by ``seed`` (its ``W``): a changed
    setting reads nothing stale."""
    sampler = {"model": fingerprint, "steps": budget.steps, "guidance": budget.guidance}
    steps = described_steps(budget.steps, budget.described_steps)
    settings = {
        "samples": {},
        "decoder": {**budget.descriptors.key(), "described_steps": steps},
        "noise_difference": {"first_steps": budget.noise_steps},
        "posterior_mean": {"step": budget.jacobian_step, "k": budget.jacobian_k, "seed": seed},
    }
    return {family: ResultCache(Path(root) / family, {**sampler, **settings[family]}) for family in FAMILIES}
