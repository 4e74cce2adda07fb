"""The measurement of chapter 04: encode (corrupted) images with the VAE and compute ψ, ν, δ of
the decoder at each latent, cached per chunk of images so a long run resumes; in the ``paper``
profile the same table through ``python -m geomlib describe``'s runs (resumable parquet parts,
shardable across GPUs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from geomlib.chapters.corruptions.corrupt import (
    CLEAN,
    PAPER_CORRUPTIONS,
    SEVERITIES,
    check_corruptions,
    corrupt_images,
    corruption_group,
)
from geomlib.core.descriptors import DESCRIPTOR_NAMES
from geomlib.runtime.cache import ResultCache, atomic_write
from geomlib.runtime.profiles import count
from geomlib.sd.decoder import DescriptorSettings, encode_images
from geomlib.sd.mini.world import World
from geomlib.sd.pipelines import pipeline_resolution
from geomlib.sd.runs import DescribeRun, ImageInput, describe_to_table


@dataclass(frozen=True)
class CorruptionBudget:
    """A profile of chapter 04.

    Attributes
    ----------
    n_images : images per corruption and severity.
    corruptions, severities : what is applied (severity 0: the clean images).
    descriptors : how ψ, ν, δ are computed (the paper's projected sketch ``W J``; δ on a
        cross-polytope in latent units).
    images_per_entry : images corrupted, encoded and described per cache entry (or per part file
        of the command-line path): what an interruption can lose.
    """

    n_images: int = field(metadata=count(2))
    corruptions: tuple[str, ...] = field(metadata=count(("gaussian_noise", "defocus_blur", "contrast")))
    severities: tuple[int, ...] = field(metadata=count((0, 5)))
    descriptors: DescriptorSettings
    images_per_entry: int = 64


CORRUPTION_BUDGETS: dict[str, CorruptionBudget] = {
    "smoke": CorruptionBudget(
        n_images=2,
        corruptions=("gaussian_noise", "defocus_blur", "contrast"),
        severities=(0, 5),
        descriptors=DescriptorSettings(k=8, n_dirs=2, radius=0.05),
    ),
    "book": CorruptionBudget(
        n_images=8,
        corruptions=PAPER_CORRUPTIONS,
        severities=SEVERITIES,
        descriptors=DescriptorSettings(k=16, n_dirs=4, radius=0.05),
    ),
    "paper": CorruptionBudget(
        n_images=10_000,
        corruptions=PAPER_CORRUPTIONS,
        severities=SEVERITIES,
        # 8 VJPs per pass through SD's 512 px decoder bound the GPU memory
        descriptors=DescriptorSettings(k=120, n_dirs=16, radius=0.05, chunk_size=8),
        images_per_entry=2,
    ),
}


#: Renders for this chapter are drawn with ``seed + HELD_OUT_SEED``: training combinations
#: (in-domain), but not the training images themselves (those were drawn with seed 0).
HELD_OUT_SEED = 1000


def in_domain_images(world: World, n: int, seed: int = 0) -> np.ndarray:
    """``(n, S, S, 3)`` uint8 fresh renders of the world's training combinations."""
    images, _ = world.dataset(n, seed=HELD_OUT_SEED + seed)
    return images


def _tasks(corruptions: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    """Clean images once, then every (corruption, severity > 0)."""
    tasks = [(CLEAN, 0)] if 0 in severities else []
    return tasks + [(name, s) for name in corruptions for s in severities if s > 0]


def corruption_descriptors(
    pipe,
    images,
    corruptions: Sequence[str],
    severities: Sequence[int],
    settings: DescriptorSettings,
    *,
    seed: int = 0,
    work_size: int | None = None,
    cache: ResultCache | None = None,
    images_per_entry: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """ψ, ν, δ of the decoder at the VAE encodings of corrupted images.

    Parameters
    ----------
    pipe
        a Stable-Diffusion pipeline; images are encoded with :func:`geomlib.sd.decoder.encode_images`.
    images
        ``(N, S, S, 3)`` uint8, or anything sliceable to such arrays
        (:class:`geomlib.sd.images.ImageFolderImages`),
        with ``S`` the pipeline's resolution.
    corruptions, severities
        ``imagecorruptions`` names and severities (0 = clean, computed once for all corruptions).
    settings
        how the descriptors are computed.
    seed, work_size
        see :func:`corrupt_images`.
    cache
        where finished chunks are stored; a rerun reads them instead of recomputing.
    images_per_entry
        images corrupted, encoded and described together and stored as one cache entry.

    Returns
    -------
    One row per (corruption, severity, image): columns ``corruption``, ``group``, ``severity``,
    ``image`` and the descriptors. Severity-0 rows are the clean images, repeated per corruption.
    """
    check_corruptions(corruptions)
    if any(s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be among {SEVERITIES}, got {list(severities)}")
    resolution = pipeline_resolution(pipe)
    n, step = len(images), images_per_entry
    chunks = [
        (name, severity, start)
        for name, severity in _tasks(corruptions, severities)
        for start in range(0, n, step)
    ]
    results: dict[tuple[str, int], list[dict]] = {}
    for name, severity, start in tqdm(chunks, desc="corrupt, encode, describe", disable=not progress):
        key = (name, severity, start, min(start + step, n))
        value = cache.load(key) if cache is not None else None
        if value is None:
            value = _describe_chunk(
                pipe,
                images[start : start + step],
                name,
                severity,
                settings,
                seed,
                start,
                work_size,
                resolution,
            )
            if cache is not None:
                cache.save(key, value)
        results.setdefault((name, severity), []).append(value)
    return _corruption_table(results, corruptions, severities)


def _describe_chunk(
    pipe, chunk, name, severity, settings, seed, start, work_size, resolution
) -> dict[str, list]:
    """Corrupt (``clean``: the same resize round trip only), encode, describe one chunk."""
    chunk = np.asarray(chunk)
    if chunk.shape[1:] != (resolution, resolution, 3):
        raise ValueError(
            f"images must be ({resolution}, {resolution}, 3) uint8 for this pipeline, got {chunk.shape[1:]}"
        )
    corrupted = corrupt_images(chunk, name, severity, seed=seed, first_index=start, work_size=work_size)
    pixels = torch.from_numpy(corrupted.astype(np.float32) / 255).permute(0, 3, 1, 2)
    # one image per encoder call: a latent must not depend on its neighbours (see decoder_descriptors)
    return settings.describe(pipe, encode_images(pipe, pixels, batch_size=1)).as_dict()


def _save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="PNG")


def write_corrupted_images(
    images,
    corruptions: Sequence[str],
    severities: Sequence[int],
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    work_size: int | None = None,
    images_per_chunk: int = 64,
    progress: bool = True,
) -> Path:
    """Write every (corruption, severity, image) as ``folder/<corruption>/<severity>/<image>.png``.

    The same images as :func:`corruption_descriptors` computes on (PNG is lossless for uint8);
    ``clean/0/`` holds severity 0. Files already there are kept, each file is written atomically,
    so an interrupted run resumes. Returns ``folder``.
    """
    check_corruptions(corruptions)
    folder = Path(folder)
    n = len(images)
    tasks = [
        (name, sev, start)
        for name, sev in _tasks(corruptions, severities)
        for start in range(0, n, images_per_chunk)
    ]
    for name, severity, start in tqdm(tasks, desc="corrupt and write", disable=not progress):
        stop = min(start + images_per_chunk, n)
        paths = [folder / name / str(severity) / f"{i:06d}.png" for i in range(start, stop)]
        if all(path.exists() for path in paths):
            continue
        corrupted = corrupt_images(
            np.asarray(images[start:stop]), name, severity, seed=seed, first_index=start, work_size=work_size
        )
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path, image in zip(paths, corrupted, strict=True):
            atomic_write(path, functools.partial(_save_png, image))
    return folder


def corruption_descriptors_cli(
    model: str,
    images,
    corruptions: Sequence[str],
    severities: Sequence[int],
    settings: DescriptorSettings,
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    work_size: int | None = None,
    device: str | None = None,
    images_per_entry: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`corruption_descriptors` through ``python -m geomlib describe``, for the ``paper`` profile.

    The corrupted images are written under ``folder/images`` (:func:`write_corrupted_images`) and
    described by the command line into ``folder/descriptors`` (parquet parts; resumable, and
    shardable across GPUs by running the printed command under ``accelerate launch``), with
    ``images_per_entry`` images per part file. Returns the same table as
    :func:`corruption_descriptors`.
    """
    folder = Path(folder)
    image_folder = write_corrupted_images(
        images, corruptions, severities, folder / "images", seed=seed, work_size=work_size, progress=progress
    )
    run = DescribeRun(
        model=model,
        out=folder / "descriptors",
        source=ImageInput(image_folder),
        descriptors=settings,
        batch_size=images_per_entry,
        device=device,
        progress=progress,
    )
    if progress:
        print(run.command_line())
    rows = describe_to_table(run)
    parts = rows["id"].str.split("/", expand=True)  # <corruption>/<severity>/<image>.png
    rows = rows.assign(name=parts[0], severity=parts[1].astype(int), index=parts[2].str[:-4].astype(int))
    wanted = set(_tasks(corruptions, severities))
    keep = [(n, s) in wanted for n, s in zip(rows["name"], rows["severity"], strict=True)]
    rows = rows[np.asarray(keep) & (rows["index"] < len(images)).to_numpy()]
    columns = [d for d in DESCRIPTOR_NAMES if d in rows and rows[d].notna().all()]
    results = {
        (name, int(severity)): [{d: group.sort_values("index")[d].tolist() for d in columns}]
        for (name, severity), group in rows.groupby(["name", "severity"])
    }
    return _corruption_table(results, corruptions, severities)


def _corruption_table(results: dict, corruptions: Sequence[str], severities: Sequence[int]) -> pd.DataFrame:
    frames = []
    for (name, severity), values in results.items():
        frame = pd.DataFrame({d: np.concatenate([v[d] for v in values]) for d in values[0]})
        frame.insert(0, "image", np.arange(len(frame)))
        targets = corruptions if name == CLEAN else [name]
        frames += [frame.assign(corruption=target, severity=severity) for target in targets]
    table = pd.concat(frames, ignore_index=True)
    table["group"] = table["corruption"].map(corruption_group)
    table["corruption"] = pd.Categorical(table["corruption"], categories=list(corruptions), ordered=True)
    columns = ["corruption", "group", "severity", "image", *[d for d in DESCRIPTOR_NAMES if d in table]]
    return table[columns].sort_values(["corruption", "severity", "image"], ignore_index=True)
