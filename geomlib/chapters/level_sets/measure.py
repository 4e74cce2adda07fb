"""The sources of chapter 09 and their descriptors: real images (the offline world's training
renders, or a local ImageNet folder) and samples at several guidance scales from one set of prompts
and noises, each with ψ and ν of the decoder at its latent (cached per chunk, so a rerun resumes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geomlib.runtime.cache import ResultCache, content_key
from geomlib.sd.decoder import DescriptorSettings, decode_latents, encode_images
from geomlib.sd.images import ImageFolderImages
from geomlib.sd.mini.quality import AttributeClassifier, attribute_labels, load_classifier, to_tensor
from geomlib.sd.mini.world import World, caption
from geomlib.sd.pipelines import resolve_local
from geomlib.sd.sampling import generate

#: The name of the real images' source in every table.
REAL = "real"


@dataclass
class LevelSetSource:
    """Images of one source with what the chapter measures on them (rows aligned).

    Attributes
    ----------
    name : :data:`REAL` or ``"guidance <scale>"``.
    images : ``(N, H, W, 3)`` floats in ``[0, 1]``.
    latents : ``(N, 4, h, w)``: the decoder's input (a real image's VAE encoding, a sample's final latent).
    labels : ``(N, 6)`` the captioned attributes, for the offline world's fidelity score; else ``None``.
    """

    name: str
    images: np.ndarray
    latents: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


def model_classifier(model: str) -> AttributeClassifier | None:
    """The attribute classifier shipped beside an offline-world model (the fidelity score), or
    ``None`` (Stable Diffusion, the untrained placeholder)."""
    try:
        folder = resolve_local(model)
    except FileNotFoundError:
        return None
    if folder is None or not (folder / "classifier.safetensors").exists():
        return None
    return load_classifier(folder)


def guidance_name(scale: float) -> str:
    """The source name of samples at guidance ``scale``: ``"guidance 3"``."""
    return f"guidance {scale:g}"


def world_real_source(pipe, world: World, train_size: int, n: int) -> LevelSetSource:
    """The first ``n`` of the offline model's ``train_size`` training renders (a uniform sample of
    them), encoded by the VAE, with their scenes' attributes."""
    scenes = world.dataset_scenes(train_size, seed=0)[:n]
    images = world.render(scenes).astype(np.float64) / 255
    latents = encode_images(pipe, to_tensor(images)).float().cpu()
    return LevelSetSource(REAL, images, latents, attribute_labels(scenes))


def folder_real_source(pipe, images: ImageFolderImages, batch_size: int = 8) -> LevelSetSource:
    """The images of a local folder (e.g. ImageNet), encoded by the VAE ``batch_size`` at a time."""
    parts, latents = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding images", leave=False):
        part = np.asarray(images[start : start + batch_size], dtype=np.float64) / 255
        parts.append(part)
        latents.append(encode_images(pipe, to_tensor(part)).float().cpu())
    return LevelSetSource(REAL, np.concatenate(parts), torch.cat(latents))


def world_prompts(world: World, n: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """``n`` full captions of the world's training combinations (fresh draws, not the training
    images' scenes) and their ``(n, 6)`` attribute labels."""
    scenes = world.sample_scenes(n, np.random.default_rng([world.seed, 9, seed]))
    return [caption(scene.attributes) for scene in scenes], attribute_labels(scenes)


def class_prompts(labels: Sequence[str]) -> list[str]:
    """Prompts of an image folder's class names: ``"a photo of a <class>"`` (folder names; give a
    prompt file for readable ImageNet classes)."""
    return [f"a photo of a {label.replace('_', ' ')}" for label in labels]


def generated_sources(
    pipe,
    prompts: Sequence[str],
    guidance_scales: Sequence[float],
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 64,
    labels: torch.Tensor | None = None,
    cache: ResultCache | None = None,
) -> list[LevelSetSource]:
    """One source per guidance scale: ``prompts[i]`` from the noise of seed ``seed + i`` at every
    scale (the same prompts and noises, so the scales differ only in guidance). Each scale's final
    latents are cached once generated, under a key of the prompts themselves."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    sources = []
    for scale in tqdm(guidance_scales, desc="guidance scales", leave=False):
        key = ("generated", float(scale), seed, steps, content_key("\n".join(prompts).encode()))
        stored = cache.load_tensors(key) if cache is not None else None
        if stored is None:
            out = generate(
                pipe,
                list(prompts),
                seed=seed,
                guidance_scale=float(scale),
                num_inference_steps=steps,
                batch_size=batch_size,
            )
            stored = {"latents": out.latents.float().cpu()}
            if cache is not None:
                cache.save_tensors(key, stored)
        images = decode_latents(pipe, stored["latents"], batch_size=batch_size).astype(np.float64)
        sources.append(LevelSetSource(guidance_name(scale), images, stored["latents"], labels))
    return sources


def describe_sources(
    pipe,
    sources: Sequence[LevelSetSource],
    settings: DescriptorSettings,
    *,
    batch_size: int = 64,
    cache: ResultCache | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """ψ and ν (and δ with ``settings.radius``) of the decoder at every source's latents, cached per
    chunk of ``batch_size`` latents under a key of the latents themselves (other images never read
    a chunk's values).

    Returns one row per image: ``source``, ``image`` (its row in the source) and the descriptors.
    """
    rows = []
    chunks = [(source, start) for source in sources for start in range(0, len(source), batch_size)]
    for source, start in tqdm(chunks, desc="descriptors", disable=not progress, leave=False):
        chunk = source.latents[start : start + batch_size]
        key = ("descriptors", content_key(chunk.float().cpu().numpy().tobytes()))
        values = cache.load(key) if cache is not None else None
        if values is None:
            values = settings.describe(pipe, chunk).as_dict()
            values = {name: [float(v) for v in column] for name, column in values.items()}
            if cache is not None:
                cache.save(key, values)
        for offset in range(len(next(iter(values.values())))):
            row = {"source": source.name, "image": start + offset}
            rows.append(row | {name: column[offset] for name, column in values.items()})
    return pd.DataFrame(rows)
