"""Reward data for geometry guidance (paper section 5): clean latents, their ψ, noisy copies.

An item is an image ``x``, its clean latent ``z0`` (VAE posterior mean times ``scaling_factor``,
what the sampler ends at and the decoder starts from), the decoder's local scaling ``ψ(z0)``, and a
forward-process copy ``x_t = sqrt(ᾱ_t) z0 + sqrt(1 - ᾱ_t) ε`` at a random timestep ``t``.

ψ is computed on the **clean** latent: it is a property of the decoder at its input, and the decoder
only ever sees clean latents (the sampler's output). The reward model must predict, from the noisy
``x_t`` the sampler holds at step ``t``, the ψ level set of the clean sample it will end at: the
label of classifier guidance, ``p(y | x_t)`` with ``y`` a property of ``x_0``. The decoder's ψ at a
noisy latent would describe an image nobody decodes.

Computing ψ is the expensive part, so data is written in shards (``shard-00000.pt`` ...), each
saved atomically; rerunning :func:`prepare_reward_data` on the same folder skips finished shards.
Item ``i`` (its image, noise and timestep) depends only on ``i`` and the seeds, never on the shard
size or on where a run was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from geomlib.core.diffusion import forward_noise
from geomlib.runtime.cache import model_fingerprint, save_atomic
from geomlib.runtime.seeding import generator_for
from geomlib.sd.decoder import DescriptorSettings, encode_images
from geomlib.sd.hub import SDPipeline
from geomlib.sd.images import image_files, read_image
from geomlib.sd.mini.world import World
from geomlib.sd.runs import DescribeRun, ImageInput, describe_to_table

MANIFEST = "manifest.json"


def decoder_psi(pipe: SDPipeline, latents: torch.Tensor, settings: DescriptorSettings) -> torch.Tensor:
    """ψ of the decoder at ``latents: (N, 4, h, w)`` with ``settings`` (δ is not computed), ``(N,)``
    float64 on the CPU."""
    return dataclasses.replace(settings, radius=None).describe(pipe, latents).local_scaling.double()


# ------------------------------------------------------------------------------ images to encode


class ImageSource(Protocol):
    """Items ``start .. stop - 1`` as ``((n, 3, H, W) floats in [0, 1], n ids)``; item ``i`` is
    always the same image."""

    def __call__(self, start: int, stop: int) -> tuple[torch.Tensor, list[str]]: ...

    def __len__(self) -> int: ...

    def description(self) -> dict:
        """What decides the images (written into the data's manifest)."""
        ...


@dataclass(frozen=True)
class WorldImages:
    """Scenes of the mini model's procedural world; scene ``i`` is drawn from ``(world.seed, seed, i)``."""

    world: World
    seed: int = 1

    def __call__(self, start: int, stop: int) -> tuple[torch.Tensor, list[str]]:
        """Render scenes ``start .. stop - 1``."""
        scenes = [
            self.world.sample_scenes(1, np.random.default_rng([self.world.seed, 6, self.seed, i]))[0]
            for i in range(start, stop)
        ]
        pixels = torch.from_numpy(self.world.render(scenes).astype(np.float32) / 255.0)
        return pixels.permute(0, 3, 1, 2).contiguous(), [
            f"world{self.seed}-{i:07d}" for i in range(start, stop)
        ]

    def __len__(self) -> int:
        return 2**62

    def description(self) -> dict:
        """World seed, image size and the scene seed."""
        return {
            "kind": "world",
            "world_seed": self.world.seed,
            "image_size": self.world.image_size,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class FolderImages:
    """The images of a folder (recursively, sorted by relative path: e.g. ImageNet), resized to ``size``.

    Reads them with the same code as ``python -m geomlib describe --images`` (ids are relative paths).
    """

    folder: Path
    size: tuple[int, int]

    def _paths(self) -> list[Path]:
        return image_files(self.folder)

    def __call__(self, start: int, stop: int) -> tuple[torch.Tensor, list[str]]:
        """Load items ``start .. stop - 1`` (bicubic resize to ``size``)."""
        paths = self._paths()[start:stop]
        ids = [p.relative_to(self.folder).as_posix() for p in paths]
        return torch.stack([read_image(path, self.size) for path in paths]), ids

    def __len__(self) -> int:
        return len(self._paths())

    def description(self) -> dict:
        """Folder and target size."""
        return {"kind": "folder", "folder": str(Path(self.folder).resolve()), "size": list(self.size)}


# --------------------------------------------------------------------------------- forward noise


def add_forward_noise(
    clean: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """``x_t = sqrt(ᾱ_t) z0 + sqrt(1 - ᾱ_t) ε`` for ``clean, noise: (N, *shape)`` and ``timesteps: (N,)``."""
    alpha_bar = alphas_cumprod.to(clean.device, torch.float64)[timesteps.to(clean.device)]
    return forward_noise(clean.double(), alpha_bar, noise.to(clean.device).double()).to(clean.dtype)


def item_noise(
    indices: Sequence[int], shape: Sequence[int], num_train_timesteps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timestep ``(N,)`` uniform in ``[0, T)`` and noise ``(N, *shape)`` of each item, from ``(seed, i)``."""
    steps, noises = [], []
    for index in indices:
        generator = generator_for(seed, 8, int(index))
        steps.append(torch.randint(0, num_train_timesteps, (1,), generator=generator))
        noises.append(torch.randn(tuple(shape), generator=generator))
    return torch.cat(steps), torch.stack(noises)


# ------------------------------------------------------------------------------------ level sets


def bin_edges(psi: np.ndarray | torch.Tensor, n_bins: int = 5) -> np.ndarray:
    """``(n_bins - 1,)`` inner edges: the ``1/n_bins, ..., (n_bins-1)/n_bins`` quantiles of ``psi``."""
    values = np.asarray(psi, dtype=np.float64)
    if n_bins < 2 or values.ndim != 1 or len(values) < n_bins:
        raise ValueError(
            f"need n_bins >= 2 and at least n_bins values in a 1-D array; got {n_bins}, {values.shape}"
        )
    return np.quantile(values, np.arange(1, n_bins) / n_bins)


def bin_labels(psi: np.ndarray | torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """Level set of each ψ: ``i`` where ``edges[i-1] <= ψ < edges[i]`` (0 below the first edge)."""
    return np.digitize(np.asarray(psi, dtype=np.float64), np.asarray(edges, dtype=np.float64))


# ------------------------------------------------------------------------------------ the shards


@dataclass
class RewardData:
    """Reward data, item ``i`` at row ``i`` (all on the CPU).

    Attributes
    ----------
    clean : ``(N, 4, h, w)`` clean latents ``z0``.
    psi : ``(N,)`` float64, ψ of the decoder at ``z0``.
    noisy : ``(N, 4, h, w)`` ``x_t`` of ``z0`` at ``timesteps``.
    timesteps : ``(N,)`` int64 in ``[0, T)``.
    ids : ``N`` item ids (image paths for folders).
    """

    clean: torch.Tensor
    psi: torch.Tensor
    noisy: torch.Tensor
    timesteps: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.psi)

    def subset(self, index: slice | Sequence[int]) -> RewardData:
        """The items at ``index`` (a slice or a list of rows)."""
        if isinstance(index, slice):
            rows: slice | torch.Tensor = index
            ids = self.ids[index]
        else:
            rows = torch.as_tensor(list(index), dtype=torch.long)
            ids = [self.ids[int(i)] for i in index]
        return RewardData(self.clean[rows], self.psi[rows], self.noisy[rows], self.timesteps[rows], ids)


def _check_manifest(folder: Path, settings: dict) -> None:
    path = folder / MANIFEST
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != settings:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ValueError(
                f"{folder} holds reward data made with other settings ({', '.join(changed)} differ):"
                " use another folder, or delete it to start again"
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1, sort_keys=True))


PsiLookup = Callable[[list[str]], torch.Tensor]


def _compute_shard(
    pipe: SDPipeline,
    source: ImageSource,
    start: int,
    stop: int,
    psi: DescriptorSettings,
    noise_seed: int,
    psi_lookup: PsiLookup | None,
) -> dict:
    images, ids = source(start, stop)
    clean = encode_images(pipe, images, batch_size=1).float().cpu()  # a latent must not depend on its batch
    values = psi_lookup(ids) if psi_lookup is not None else decoder_psi(pipe, clean, psi)
    steps, noise = item_noise(
        range(start, stop), clean.shape[1:], len(pipe.scheduler.alphas_cumprod), noise_seed
    )
    noisy = add_forward_noise(clean, steps, noise, pipe.scheduler.alphas_cumprod)
    return {"clean": clean, "psi": values.double().cpu(), "noisy": noisy, "timesteps": steps, "ids": ids}


def prepare_reward_data(
    pipe: SDPipeline,
    source: ImageSource,
    folder: str | os.PathLike,
    n: int,
    *,
    psi: DescriptorSettings | None = None,
    shard_size: int = 256,
    noise_seed: int = 0,
    psi_lookup: PsiLookup | None = None,
    progress: bool = True,
) -> RewardData:
    """Encode ``n`` images of ``source``, compute ψ at their clean latents, noise them; shard by shard.

    Parameters
    ----------
    pipe
        the pipeline whose VAE encodes and whose decoder's ψ labels the items.
    source
        :class:`WorldImages` (the mini model's domain) or :class:`FolderImages` (e.g. ImageNet).
    folder
        where the shards and ``manifest.json`` go; finished shards are kept and skipped on a rerun
        (a larger ``n`` adds shards; a different setting raises ``ValueError``).
    psi
        how ψ is computed (ignored with ``psi_lookup``, except that it is recorded).
    psi_lookup
        ``ids -> (n,) ψ`` from elsewhere, e.g. :func:`psi_from_describe_cli` (the ``paper`` profile).

    Returns
    -------
    The first ``n`` items, :class:`RewardData`.
    """
    psi = psi or DescriptorSettings()
    if n < 1 or shard_size < 1:
        raise ValueError(f"n and shard_size must be positive, got {n}, {shard_size}")
    if n > len(source):
        raise ValueError(f"the source has {len(source)} images, {n} were asked for")
    folder = Path(folder)
    settings = {
        "source": source.description(),
        "vae": model_fingerprint(pipe, ["vae"]),
        "psi": {**psi.key(), "via": "lookup" if psi_lookup is not None else "decoder_descriptors"},
        "noise_seed": noise_seed,
        "shard_size": shard_size,
        "num_train_timesteps": len(pipe.scheduler.alphas_cumprod),
    }
    _check_manifest(folder, settings)
    n_shards = math.ceil(n / shard_size)
    with tqdm(total=n, desc="reward data (ψ at clean latents)", unit="image", disable=not progress) as bar:
        for shard in range(n_shards):
            start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
            path = folder / f"shard-{shard:05d}.pt"
            if not path.exists() or len(torch.load(path, weights_only=True)["ids"]) < stop - start:
                save_atomic(_compute_shard(pipe, source, start, stop, psi, noise_seed, psi_lookup), path)
            bar.update(stop - start)
    return load_reward_data(folder, n)


def load_reward_data(folder: str | os.PathLike, n: int | None = None) -> RewardData:
    """The first ``n`` items (default: all) of the shards in ``folder``, in item order."""
    paths = sorted(Path(folder).glob("shard-*.pt"))
    if not paths:
        raise ValueError(f"no reward data shards in {folder}: run prepare_reward_data first")
    shards = [torch.load(path, weights_only=True) for path in paths]
    merged = RewardData(
        clean=torch.cat([s["clean"] for s in shards]),
        psi=torch.cat([s["psi"] for s in shards]),
        noisy=torch.cat([s["noisy"] for s in shards]),
        timesteps=torch.cat([s["timesteps"] for s in shards]),
        ids=[i for s in shards for i in s["ids"]],
    )
    if n is not None and n > len(merged):
        raise ValueError(f"{folder} holds {len(merged)} items, {n} were asked for")
    return merged if n is None else merged.subset(slice(0, n))


def psi_from_describe_cli(
    model: str,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    psi: DescriptorSettings,
    *,
    size: tuple[int, int],
    batch_size: int = 8,
    device: str | None = None,
    limit: int | None = None,
) -> PsiLookup:
    """ψ of every image of ``folder`` through the describe runs of ``python -m geomlib describe``
    (resumable parquet parts in ``out``, shardable with ``accelerate launch``; ``batch_size`` images
    per part); ``limit``: only the first images (sorted by path). Returns ``ids -> (n,) ψ`` for
    :func:`prepare_reward_data`; ``ValueError`` (an :class:`~geomlib.sd.images.InputError`) if the
    run cannot start."""
    run = DescribeRun(
        model=model,
        out=Path(out),
        source=ImageInput(Path(folder), resize=True, height=size[0], width=size[1]),
        descriptors=dataclasses.replace(psi, radius=None),
        batch_size=batch_size,
        device=device,
        limit=limit,
    )
    rows = describe_to_table(run)
    if not len(rows):
        raise ValueError(f"python -m geomlib describe wrote no rows to {out}")
    values = dict(zip(rows["id"], rows["local_scaling"], strict=True))

    def lookup(ids: list[str]) -> torch.Tensor:
        missing = [i for i in ids if i not in values]
        if missing:
            raise ValueError(f"no ψ for {len(missing)} images in {out}, e.g. {missing[:3]}")
        return torch.tensor([values[i] for i in ids], dtype=torch.float64)

    return lookup
