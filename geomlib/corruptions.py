"""ImageNet-C corruptions and the decoder's geometry at corrupted images (paper section 4, Fig. 4).

A thin layer over the ``imagecorruptions`` package (Hendrycks & Dietterich 2019): corruptions are
never re-implemented here. This module adds what the chapter needs around them:

* reproducible corruption: every image is corrupted from its own seed (``seed``, corruption,
  severity, image index), so a result does not depend on the batch it was computed in, and the
  global numpy random state is left as it was;
* small images: ``imagecorruptions`` refuses images under 32 px, so smaller ones go through an
  upsample-corrupt-downsample round trip (clean images too, so severity 0 is treated alike);
* image sources: the procedural world of the offline model (in-domain images) or a local ImageNet
  folder, sampled uniformly over classes;
* the measurement: encode with the VAE, ψ, ν, δ of the decoder at each latent through
  :func:`geomlib.latent.decoder_descriptors`, batched and cached so a long run resumes;
* the effect of a corruption: the paired change of a descriptor from severity 0 to 5 per
  corruption, with a t confidence interval, grouped as in the paper.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from imagecorruptions import corrupt, get_corruption_names
from PIL import Image
from scipy import stats
from tqdm.auto import tqdm

from geomlib.cache import ResultCache, atomic_write, model_fingerprint  # noqa: F401  (chapters import them from here)
from geomlib.latent import (  # noqa: F401  (world_for_model: chapters import it from here)
    decode_latents,
    decoder_descriptors,
    encode_images,
    pipeline_resolution,
    world_for_model,
)
from geomlib.mini.world import World
from geomlib.plotting import DESCRIPTOR_LABELS, image_grid, slider_animation

#: The 15 corruptions of the ImageNet-C benchmark, in the package's order.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
#: The chapter's 16: the benchmark's 15 plus ``speckle_noise``, the first of ImageNet-C's four
#: held-out ("validation") corruptions and a fourth high-frequency noise.
EXTRA_CORRUPTION = "speckle_noise"
PAPER_CORRUPTIONS: tuple[str, ...] = (*BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTION)
SEVERITIES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: The paper's reading: high-frequency noise raises ψ, band-limiting (blur) and colour-range
#: reductions lower it. Corruptions in neither group are reported as ``other``.
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise-like": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur/contrast-like": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "contrast", "fog"),
}
#: Sign of the change of ψ from severity 0 to 5 that the paper reports for each group.
EXPECTED_SIGN: dict[str, int] = {"noise-like": +1, "blur/contrast-like": -1}
MIN_SIDE = 32  # imagecorruptions raises below this
#: The name of the uncorrupted images (severity 0).
CLEAN = "clean"
#: Corruptions whose randomness is a ``seed`` argument instead of numpy's global generator.
_SEEDED_ARGUMENT = ("glass_blur", "impulse_noise")

#: Budgets of chapter 04. ``k``: rows of the projection ``W`` (the paper's sketch); ``n_dirs``,
#: ``radius``: the cross-polytope of δ (in latent units); ``batch_size``: images per cached chunk;
#: ``chunk_size`` (optional): products per vectorised pass.
CORRUPTION_BUDGETS: dict[str, dict] = {
    "smoke": dict(
        n_images=2,
        corruptions=("gaussian_noise", "defocus_blur", "contrast"),
        severities=(0, 5),
        k=8,
        n_dirs=2,
        radius=0.05,
        batch_size=16,
    ),
    "book": dict(
        n_images=8,
        corruptions=PAPER_CORRUPTIONS,
        severities=SEVERITIES,
        k=16,
        n_dirs=4,
        radius=0.05,
        batch_size=16,
    ),
    "paper": dict(
        n_images=10_000,
        corruptions=PAPER_CORRUPTIONS,
        severities=SEVERITIES,
        k=120,
        n_dirs=16,
        radius=0.05,
        batch_size=2,
        chunk_size=8,  # VJPs per pass through SD's 512 px decoder: bounds GPU memory
    ),
}


def corruption_group(name: str) -> str:
    """``"noise-like"``, ``"blur/contrast-like"`` or ``"other"``."""
    return next((group for group, names in CORRUPTION_GROUPS.items() if name in names), "other")


def check_corruptions(names: Sequence[str]) -> tuple[str, ...]:
    """Return ``names`` as a tuple if ``imagecorruptions`` has them all, else raise ``ValueError``."""
    if isinstance(names, str):
        raise ValueError("corruptions must be a list of names, not one string")
    known = get_corruption_names("all")
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"unknown corruptions {unknown or '(empty list)'}; choose from {known}")
    return tuple(names)


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (what ``imagecorruptions`` draws from) and restore it after."""
    state = np.random.get_state()  # noqa: NPY002 -- the package draws from the global generator
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def image_seed(seed: int, name: str, severity: int, index: int) -> int:
    """The seed of one corrupted image: a hash of all four through numpy's ``SeedSequence``."""
    name_code = int.from_bytes(name.encode(), "little") % (2**63)
    return int(np.random.SeedSequence([seed, name_code, severity, index]).generate_state(1)[0])


def _resize(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def corrupt_image(
    image: np.ndarray, name: str, severity: int, *, seed: int, work_size: int | None = None
) -> np.ndarray:
    """One image through one ``imagecorruptions`` corruption.

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8, square.
    name, severity
        the corruption and its severity, 0 (clean: ``name`` is not used) to 5.
    seed
        seeds the corruption's randomness (numpy's global state is restored afterwards).
    work_size
        side at which to corrupt: the image is resized to it (bicubic), corrupted and resized back
        (area average). Default: the image's own size, or 32 px for smaller images (the package's
        minimum). Severity 0 takes the same round trip, so it differs from the corrupted images
        only by the corruption.

    Returns
    -------
    ``(H, W, 3)`` uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be square (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    if name == CLEAN and severity > 0:
        raise ValueError(f"{CLEAN!r} images have severity 0, got {severity}")
    size = image.shape[0]
    work = work_size or max(size, MIN_SIDE)
    if work < MIN_SIDE:
        raise ValueError(f"work_size must be at least {MIN_SIDE} px (imagecorruptions' minimum), got {work}")
    working = image if work == size else _resize(image, work, Image.Resampling.BICUBIC)
    if severity > 0:
        kwargs = {"seed": seed % 2**32} if name in _SEEDED_ARGUMENT else {}
        with _numpy_global_seed(seed % 2**32):
            working = corrupt(working, severity=severity, corruption_name=name, **kwargs)
    return working if work == size else _resize(np.ascontiguousarray(working), size, Image.Resampling.BOX)


def corrupt_images(
    images: np.ndarray,
    name: str,
    severity: int,
    *,
    seed: int = 0,
    first_index: int = 0,
    work_size: int | None = None,
) -> np.ndarray:
    """A batch through :func:`corrupt_image`, ``(N, H, W, 3)`` uint8 to the same.

    Image ``i`` of the batch is corrupted from :func:`image_seed` ``(seed, name, severity,
    first_index + i)``, so the result for an image is the same in any batch.
    """
    if name != CLEAN:
        check_corruptions([name])
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    return np.stack(
        [
            corrupt_image(
                image,
                name,
                severity,
                seed=image_seed(seed, name, severity, first_index + i),
                work_size=work_size,
            )
            for i, image in enumerate(images)
        ]
    )


# ---------------------------------------------------------------------------------------------
# Image sources
# ---------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def center_square(image: Image.Image, size: int) -> np.ndarray:
    """The central square of ``image``, resized to ``size x size`` (Lanczos), as uint8 RGB."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))


class ImageFolderImages:
    """Images of a local folder (ImageNet layout: one sub-folder per class), sampled uniformly
    over classes and loaded lazily as ``(n, size, size, 3)`` uint8 centre crops.

    Parameters
    ----------
    folder
        a folder of class sub-folders (``train/n01440764/*.JPEG``); a folder of images without
        sub-folders counts as one class.
    n
        number of images; classes take turns, so their counts differ by at most one.
    size
        side of the returned crops; only images whose shorter side is at least ``min_side``
        (default ``size``) are used, so none is upsampled.
    seed
        seeds which images of each class are drawn.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        n: int,
        *,
        size: int = 512,
        seed: int = 0,
        min_side: int | None = None,
    ):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ValueError(f"image folder {str(folder)!r} does not exist")
        if n < 1 or size < 1:
            raise ValueError(f"need n >= 1 and size >= 1, got n={n}, size={size}")
        self.folder, self.size, self.min_side = folder, size, min_side or size
        classes = sorted(p for p in folder.iterdir() if p.is_dir()) or [folder]
        rng = np.random.default_rng(seed)
        per_class = math.ceil(n / len(classes))
        chosen = [self._draw(c, per_class, rng) for c in tqdm(classes, desc="scanning classes", leave=False)]
        interleaved = [paths[i] for i in range(per_class) for paths in chosen if i < len(paths)]
        if len(interleaved) < n:
            raise ValueError(
                f"only {len(interleaved)} images of at least {self.min_side} px in {folder}, need {n}"
            )
        self.paths: list[Path] = interleaved[:n]
        self.labels: list[str] = [p.parent.name for p in self.paths]

    def _draw(self, class_folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
        """Up to ``count`` random images of one class that are large enough (headers only)."""
        files = sorted(p for p in class_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        picked = []
        for index in rng.permutation(len(files)):
            with Image.open(files[index]) as image:
                if min(image.size) >= self.min_side:
                    picked.append(files[index])
            if len(picked) == count:
                break
        return picked

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 crops of the images in ``index`` (a slice)."""
        crops = []
        for path in self.paths[index]:
            with Image.open(path) as image:
                crops.append(center_square(image, self.size))
        return np.stack(crops)

    def identity(self) -> dict:
        """What makes this sample (for cache keys): folder, size and the chosen files."""
        return {
            "folder": str(self.folder),
            "size": self.size,
            "files": [str(p.relative_to(self.folder)) for p in self.paths],
        }


#: Renders for this chapter are drawn with ``seed + HELD_OUT_SEED``: training combinations
#: (in-domain), but not the training images themselves (those were drawn with seed 0).
HELD_OUT_SEED = 1000


def in_domain_images(world: World, n: int, seed: int = 0) -> np.ndarray:
    """``(n, S, S, 3)`` uint8 fresh renders of the world's training combinations."""
    images, _ = world.dataset(n, seed=HELD_OUT_SEED + seed)
    return images


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------

DESCRIPTORS: tuple[str, ...] = ("local_scaling", "local_rank", "local_complexity")
#: Short names for titles.
SYMBOLS: dict[str, str] = {"local_scaling": "ψ", "local_rank": "ν", "local_complexity": "δ"}


@dataclass
class DescriptorSettings:
    """How ψ, ν, δ of the decoder are computed (see :func:`geomlib.latent.decoder_descriptors`).

    Attributes
    ----------
    k : rows of the fixed projection ``W`` (``method="projected"``, the paper's sketch).
    n_dirs, radius : the cross-polytope of δ (``radius=None``: no δ).
    seed : seed of ``W`` and of the cross-polytope, the same for every latent of a run.
    batch_size : latents described between two saves of a cache (values do not depend on it: each
        latent is described in a call of its own).
    chunk_size : products per vectorised pass (bounds memory on large decoders).
    """

    k: int
    n_dirs: int
    radius: float | None = 0.05
    seed: int = 0
    batch_size: int = 16
    chunk_size: int | None = None

    def key(self) -> dict:
        """The fields that change results (not the batching)."""
        return {
            "k": self.k,
            "n_dirs": self.n_dirs,
            "radius": self.radius,
            "seed": self.seed,
            "method": "projected",
        }


def describe_latents(pipe, latents, settings: DescriptorSettings) -> dict[str, list]:
    """ψ, ν (and δ) of the decoder at ``latents: (N, 4, h, w)`` as ``{descriptor: N values}``."""
    result = decoder_descriptors(
        pipe,
        latents,
        method="projected",
        k=settings.k,
        seed=settings.seed,
        radius=settings.radius,
        n_dirs=settings.n_dirs,
        chunk_size=settings.chunk_size,
        progress=False,
    )
    return result.as_dict()


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
        a Stable-Diffusion pipeline; images are encoded with :func:`geomlib.latent.encode_images`.
    images
        ``(N, S, S, 3)`` uint8, or anything sliceable to such arrays (:class:`ImageFolderImages`),
        with ``S`` the pipeline's resolution.
    corruptions, severities
        ``imagecorruptions`` names and severities (0 = clean, computed once for all corruptions).
    settings
        the descriptors' settings (``settings.batch_size`` latents per descriptor call).
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
    return describe_latents(pipe, encode_images(pipe, pixels, batch_size=1), settings)


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
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`corruption_descriptors` through ``python -m geomlib describe``, for the ``paper`` profile.

    The corrupted images are written under ``folder/images`` (:func:`write_corrupted_images`) and
    described by the command line into ``folder/descriptors`` (parquet parts; resumable, and
    shardable across GPUs by running the printed command under ``accelerate launch``). Returns the
    same table as :func:`corruption_descriptors`.
    """
    from geomlib.cli import describe_to_parquet

    folder = Path(folder)
    image_folder = write_corrupted_images(
        images, corruptions, severities, folder / "images", seed=seed, work_size=work_size, progress=progress
    )
    options: dict[str, Any] = dict(
        method="projected",
        k=settings.k,
        seed=settings.seed,
        radius=settings.radius,
        n_dirs=settings.n_dirs if settings.radius is not None else None,
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        device=device,
        no_progress=not progress,
    )
    if progress:
        flags = " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in options.items() if v is not None and v is not False
        )
        out = folder / "descriptors"
        print(f"python -m geomlib describe --model {model} --images {image_folder} --out {out} {flags}")
    rows = describe_to_parquet(folder / "descriptors", model=model, images=image_folder, **options)
    parts = rows["id"].str.split("/", expand=True)  # <corruption>/<severity>/<image>.png
    rows = rows.assign(name=parts[0], severity=parts[1].astype(int), index=parts[2].str[:-4].astype(int))
    wanted = set(_tasks(corruptions, severities))
    keep = [(n, s) in wanted for n, s in zip(rows["name"], rows["severity"], strict=True)]
    rows = rows[np.asarray(keep) & (rows["index"] < len(images)).to_numpy()]
    columns = [d for d in DESCRIPTORS if d in rows and rows[d].notna().all()]
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
    columns = ["corruption", "group", "severity", "image", *[d for d in DESCRIPTORS if d in table]]
    return table[columns].sort_values(["corruption", "severity", "image"], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Effects and claim checks
# ---------------------------------------------------------------------------------------------


def paired_change(before: np.ndarray, after: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``after - before`` over paired samples, its t confidence interval and t-test p-value.

    Returns ``{"change", "low", "high", "p_value", "n"}``; with one pair the interval is infinite.
    """
    differences = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if differences.ndim != 1 or len(differences) == 0:
        raise ValueError("before and after must be equal-length 1-D arrays with at least one pair")
    n, mean = len(differences), float(differences.mean())
    if n < 2:
        return {"change": mean, "low": -np.inf, "high": np.inf, "p_value": np.nan, "n": n}
    sem = float(differences.std(ddof=1) / np.sqrt(n))
    if sem == 0:
        return {"change": mean, "low": mean, "high": mean, "p_value": 0.0 if mean else 1.0, "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    p_value = float(2 * stats.t.sf(abs(mean) / sem, n - 1))
    return {"change": mean, "low": mean - half, "high": mean + half, "p_value": p_value, "n": n}


def severity_effects(
    table: pd.DataFrame,
    descriptor: str = "local_scaling",
    *,
    low: int = 0,
    high: int = 5,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per corruption, the paired change of ``descriptor`` from severity ``low`` to ``high``.

    Returns one row per corruption: ``group``, ``change``, ``low``/``high`` (the ``confidence``
    t interval over images), ``p_value``, ``n``, and ``direction`` (``"up"``, ``"down"``, or
    ``"n.s."`` when the interval contains 0).
    """
    if descriptor not in table:
        raise ValueError(f"{descriptor!r} is not a column of the table ({list(table.columns)})")
    missing = {low, high} - set(table["severity"])
    if missing:
        raise ValueError(f"the table has no rows at severities {sorted(missing)}")
    rows = []
    for name, frame in table.groupby("corruption", observed=True, sort=True):
        wide = frame.pivot_table(index="image", columns="severity", values=descriptor)
        effect = paired_change(wide[low].to_numpy(), wide[high].to_numpy(), confidence)
        rows.append({"corruption": name, "group": corruption_group(str(name)), **effect})
    effects = pd.DataFrame(rows)
    effects = effects.rename(columns={"low": "ci_low", "high": "ci_high"})
    effects["direction"] = np.where(
        effects["ci_low"] > 0, "up", np.where(effects["ci_high"] < 0, "down", "n.s.")
    )
    return effects


def group_claims(effects: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim per group next to the measured changes.

    Returns one row per group of :data:`CORRUPTION_GROUPS`: the expected direction, the mean of
    the per-corruption changes, how many corruptions moved as expected (interval excluding 0 on the
    expected side), how many the other way, and a sign test p-value over the group's corruptions
    (do the changes' signs agree with the claim more often than chance?).
    """
    rows = []
    for group, sign in EXPECTED_SIGN.items():
        part = effects[effects["group"] == group]
        if part.empty:
            continue
        expected = (part["ci_low"] > 0) if sign > 0 else (part["ci_high"] < 0)
        opposite = (part["ci_high"] < 0) if sign > 0 else (part["ci_low"] > 0)
        agreeing_signs = int((np.sign(part["change"]) == sign).sum())
        sign_test = stats.binomtest(agreeing_signs, len(part), 0.5, alternative="greater").pvalue
        rows.append(
            {
                "group": group,
                "paper": "raises ψ" if sign > 0 else "lowers ψ",
                "corruptions": len(part),
                "mean change": float(part["change"].mean()),
                "as claimed (CI excludes 0)": int(expected.sum()),
                "opposite (CI excludes 0)": int(opposite.sum()),
                "sign agrees": agreeing_signs,
                "sign-test p": float(sign_test),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

GROUP_COLOURS: dict[str, str] = {
    "noise-like": "tab:red",
    "blur/contrast-like": "tab:blue",
    "other": "tab:gray",
}


def plot_severity_panels(
    table: pd.DataFrame, descriptor: str = "local_scaling", *, col_wrap: int = 4, height: float = 1.9
):
    """Fig. 4: the distribution of ``descriptor`` across severities, one small panel per corruption
    (boxes over images, coloured by group, the clean median as a dashed line). Returns the
    seaborn ``FacetGrid``."""
    import seaborn as sns  # an extra of the notebooks, not of the package

    grid = sns.catplot(
        data=table,
        x="severity",
        y=descriptor,
        col="corruption",
        col_wrap=min(col_wrap, table["corruption"].nunique()),
        kind="box",
        hue="group",
        palette=GROUP_COLOURS,
        height=height,
        aspect=1.1,
        sharey=True,
        fliersize=1.5,
        linewidth=0.7,
        legend_out=True,
    )
    clean_median = table.loc[table["severity"] == 0, descriptor].median()
    for name, ax in grid.axes_dict.items():
        ax.axhline(clean_median, color="black", lw=0.6, ls="--")
        ax.set_title(str(name).replace("_", " "), fontsize=9)
    grid.set_axis_labels("severity", DESCRIPTOR_LABELS.get(descriptor, descriptor))
    return grid


def plot_effects(effects: pd.DataFrame, descriptor_label: str = r"$\Delta\psi$ (severity 0 → 5)"):
    """Forest plot: the change per corruption with its confidence interval, coloured by group."""
    import matplotlib.pyplot as plt

    ordered = effects.sort_values("change").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(ordered) + 1))
    colours = ordered["group"].map(GROUP_COLOURS)
    ax.errorbar(
        ordered["change"],
        ordered.index,
        xerr=[ordered["change"] - ordered["ci_low"], ordered["ci_high"] - ordered["change"]],
        fmt="none",
        ecolor=colours,
        elinewidth=1.2,
    )
    ax.scatter(ordered["change"], ordered.index, c=colours, zorder=3, s=18)
    ax.axvline(0, color="black", lw=0.7)
    ax.set_yticks(ordered.index, [str(c).replace("_", " ") for c in ordered["corruption"]], fontsize=8)
    ax.set_xlabel(descriptor_label)
    for group, colour in GROUP_COLOURS.items():
        ax.scatter([], [], c=colour, label=group, s=18)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def corruption_examples(
    image: np.ndarray,
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    seed: int = 0,
    work_size: int | None = None,
) -> np.ndarray:
    """``(len(corruptions), len(severities), H, W, 3)`` uint8: one image under every corruption."""
    return np.stack(
        [
            np.stack(
                [corrupt_images(image[None], name, s, seed=seed, work_size=work_size)[0] for s in severities]
            )
            for name in corruptions
        ]
    )


def severity_slider(
    examples: np.ndarray,
    table: pd.DataFrame,
    corruptions: Sequence[str],
    severities: Sequence[int],
    image: int = 0,
    descriptor: str = "local_scaling",
) -> str:
    """A severity slider for a static page: one image under every corruption at the current
    severity, each titled with its ``descriptor`` value from ``table``.

    Parameters
    ----------
    examples
        ``(C, S, H, W, 3)`` from :func:`corruption_examples` for image ``image`` of the table.
    """
    import matplotlib.pyplot as plt

    columns = min(8, len(corruptions))
    rows = math.ceil(len(corruptions) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.95 * rows), squeeze=False)
    fig.set_dpi(80)  # every frame is embedded as a PNG: keep the page light
    lookup = table[table["image"] == image].set_index(["corruption", "severity"])[descriptor]
    shown = [
        ax.imshow(examples[i, 0], interpolation="nearest")
        for i, ax in enumerate(axes.flat[: len(corruptions)])
    ]
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(corruptions) :]:
        ax.axis("off")
    title = fig.suptitle("", fontsize=9)

    def update(frame: int) -> None:
        for i, (name, artist) in enumerate(zip(corruptions, shown, strict=False)):
            artist.set_data(examples[i, frame])
            axes.flat[i].set_title(
                f"{name.replace('_', ' ')[:17]}\nψ={lookup[(name, severities[frame])]:.1f}", fontsize=7
            )
        title.set_text(f"severity {severities[frame]}")

    update(0)
    fig.tight_layout()
    return slider_animation(fig, update, len(severities))


def corruption_explorer(
    pipe, images, table: pd.DataFrame, *, seed: int = 0, work_size: int | None = None
) -> None:
    """Live controls (displayed): pick a corruption, a severity and an image; shows the corrupted
    image, its VAE reconstruction (the decoder at its latent) and the descriptors measured there."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from geomlib.plotting import live_controls

    names = list(table["corruption"].cat.categories)
    severities = sorted(set(table["severity"]))
    controls = {
        "name": widgets.Dropdown(options=names, description="corruption"),
        "severity": widgets.SelectionSlider(options=severities, value=severities[-1], description="severity"),
        "index": widgets.IntSlider(value=0, min=0, max=int(table["image"].max()), description="image"),
    }

    def show(name: str, severity: int, index: int):
        corrupted = corrupt_images(
            np.asarray(images[index : index + 1]),
            name,
            severity,
            seed=seed,
            first_index=index,
            work_size=work_size,
        )
        pixels = torch.from_numpy(corrupted.astype(np.float32) / 255).permute(0, 3, 1, 2)
        reconstruction = decode_latents(pipe, encode_images(pipe, pixels))[0]
        row = table[
            (table["corruption"] == name) & (table["severity"] == severity) & (table["image"] == index)
        ]
        fig, axes = plt.subplots(1, 2, figsize=(4.4, 2.4))
        for ax, picture, label in zip(
            axes, (corrupted[0], reconstruction), ("corrupted", "decoder at its latent"), strict=True
        ):
            ax.imshow(picture)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
        values = ", ".join(f"{SYMBOLS[d]} = {row[d].item():.2f}" for d in DESCRIPTORS if d in row)
        fig.suptitle(values, fontsize=8)
        fig.tight_layout()
        return fig

    live_controls(show, controls)


def plot_examples(
    examples: np.ndarray, corruptions: Sequence[str], severities: Sequence[int], size: float = 0.8
):
    """One row per severity, one column per corruption, from :func:`corruption_examples`."""
    n_corruptions, n_severities = examples.shape[:2]
    tiles = examples.transpose(1, 0, 2, 3, 4).reshape(-1, *examples.shape[2:]) / 255
    titles = [name.replace("_", "\n") for name in corruptions] + [""] * (n_corruptions * (n_severities - 1))
    fig = image_grid(
        tiles, nrows=n_severities, size=size, titles=titles, row_labels=[str(s) for s in severities]
    )
    fig.supylabel("severity", fontsize=9)
    return fig
