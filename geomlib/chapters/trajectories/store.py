"""Trajectories of chapter 05 and the decoder's ψ, ν, δ at every step, cached per (prompt, seed,
guidance scale) with one entry per step, so an interrupted run continues where it stopped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geomlib.core.descriptors import DESCRIPTOR_NAMES
from geomlib.runtime.cache import ResultCache
from geomlib.runtime.profiles import count
from geomlib.sd.decoder import DescriptorSettings, decode_latents
from geomlib.sd.sampling import generate, initial_latents

Source = Literal["latent", "predicted_x0"]


@dataclass(frozen=True)
class TrajectoryBudget:
    """A profile of chapter 05.

    Attributes
    ----------
    steps : sampler steps per trajectory.
    n_memorised, n_normal, n_seeds : prompts of each kind and noise seeds per prompt.
    guidance : the guidance scale of the memorised-vs-normal comparison.
    guidance_scales, n_guidance_prompts : the sweep of the mean curves (every step described), on
        the first normal prompts.
    n_guidance_blocks : normal prompts of the guidance claim check, each a block (with every seed)
        seen at every scale; only their last ``last_steps`` steps are described, what the check
        reads.
    last_steps : how many final steps the summary statistics average.
    descriptors : how ψ, ν, δ of the decoder are computed at every step.
    latents_per_save : steps described between two saves of the cache.
    """

    steps: int = field(metadata=count(3))
    n_memorised: int = field(metadata=count(2))
    n_normal: int = field(metadata=count(2))
    n_seeds: int = field(metadata=count(1))
    guidance: float
    guidance_scales: tuple[float, ...]
    n_guidance_prompts: int = field(metadata=count(1))
    n_guidance_blocks: int = field(metadata=count(2))
    last_steps: int = field(metadata=count(1))
    descriptors: DescriptorSettings
    latents_per_save: int = 16


TRAJECTORY_BUDGETS: dict[str, TrajectoryBudget] = {
    "smoke": TrajectoryBudget(
        steps=3,
        n_memorised=2,
        n_normal=2,
        n_seeds=1,
        guidance=7.5,
        guidance_scales=(1.0, 7.5),
        n_guidance_prompts=1,
        n_guidance_blocks=2,
        last_steps=1,
        descriptors=DescriptorSettings(k=8, n_dirs=2, radius=0.05),
    ),
    "book": TrajectoryBudget(
        steps=15,
        n_memorised=6,
        n_normal=6,
        n_seeds=1,
        guidance=7.5,
        guidance_scales=(1.0, 3.0, 5.0, 7.5, 9.0),
        n_guidance_prompts=3,
        n_guidance_blocks=24,
        last_steps=4,
        descriptors=DescriptorSettings(k=16, n_dirs=4, radius=0.05),
    ),
    "paper": TrajectoryBudget(
        steps=50,
        n_memorised=100,
        n_normal=100,
        n_seeds=1,
        guidance=7.5,
        guidance_scales=(1.0, 3.0, 5.0, 7.5, 9.0),
        n_guidance_prompts=50,
        n_guidance_blocks=100,
        last_steps=10,
        # 8 VJPs per pass through SD's 512 px decoder bound the GPU memory
        descriptors=DescriptorSettings(k=120, n_dirs=16, radius=0.05, chunk_size=8),
        latents_per_save=2,
    ),
}


class TrajectoryStore:
    """Cached trajectories and their per-step descriptors for one model and sampler setting.

    Two :class:`~geomlib.runtime.cache.ResultCache` folders under ``root``: the trajectories
    (keyed by the model fingerprint and the number of steps) and the descriptors (keyed also by
    the descriptor settings and ``source``), so changing ``k`` reuses the generated trajectories.
    Keys are ``(prompt, seed, guidance_scale)``; a descriptor entry holds one record per step.
    """

    def __init__(
        self,
        root: str | Path,
        fingerprint: str,
        steps: int,
        settings: DescriptorSettings,
        source: Source = "latent",
        latents_per_save: int = 16,
    ):
        if source not in ("latent", "predicted_x0"):
            raise ValueError(f"source must be 'latent' or 'predicted_x0', got {source!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        sampler = {"model": fingerprint, "steps": steps}
        if latents_per_save < 1:
            raise ValueError(f"latents_per_save must be >= 1, got {latents_per_save}")
        self.steps, self.source, self.settings = steps, source, settings
        self.latents_per_save = latents_per_save
        self.trajectories = ResultCache(Path(root) / "trajectories", sampler)
        self.descriptors = ResultCache(
            Path(root) / "descriptors", {**sampler, **settings.key(), "source": source}
        )

    def trajectory(self, prompt: str, seed: int, scale: float) -> dict[str, torch.Tensor] | None:
        """``{"latents": (T + 1, 4, h, w), "predicted_x0": (T, 4, h, w), "timesteps": (T,)}`` or ``None``."""
        return self.trajectories.load_tensors((prompt, int(seed), float(scale)))

    def step_records(self, prompt: str, seed: int, scale: float) -> dict[str, dict]:
        """``{str(step): {descriptor: value}}`` computed so far (steps count from 1)."""
        return self.descriptors.load((prompt, int(seed), float(scale))) or {}


def _generate_missing(pipe, store: TrajectoryStore, prompts, seeds, scale: float) -> None:
    """Generate the trajectories of ``scale`` not yet cached, one prompt per sampler call (a cached
    trajectory must not depend on its batch), each saved as soon as it is done; each seed's initial
    noise is :func:`~geomlib.sd.sampling.initial_latents` of that seed, whatever the prompt."""
    for prompt, seed in [(p, s) for p in prompts for s in seeds if store.trajectory(p, s, scale) is None]:
        out = generate(
            pipe,
            [prompt],
            guidance_scale=scale,
            num_inference_steps=store.steps,
            latents=initial_latents(pipe, 1, seed=seed),
        )
        tensors = {
            "latents": out.trajectory[:, 0].clone(),
            "predicted_x0": out.predicted_x0[:, 0].clone(),
            "timesteps": out.timesteps.clone(),
        }
        store.trajectories.save_tensors((prompt, int(seed), float(scale)), tensors)


def _cached_trajectory(store: TrajectoryStore, key: tuple) -> dict[str, torch.Tensor]:
    tensors = store.trajectory(*key)
    if tensors is None:
        raise ValueError(f"no cached trajectory for {key}: generate it first")
    return tensors


def _describe_missing(
    pipe, store: TrajectoryStore, keys: Sequence[tuple], steps: Sequence[int], progress: bool
) -> None:
    """Describe the ``steps`` of ``keys``' trajectories not cached yet, in batches that may span
    trajectories; the records of a trajectory are saved after every batch that touches it, so an
    interruption loses at most one batch."""
    records = {key: store.step_records(*key) for key in keys}
    pending = [(key, t) for key in keys for t in steps if str(t) not in records[key]]
    loaded: dict[tuple, dict[str, torch.Tensor]] = {}
    size = store.latents_per_save
    for start in tqdm(
        range(0, len(pending), size),
        desc="descriptors along trajectories",
        disable=not progress or not pending,  # no empty bar when everything is cached
    ):
        batch = pending[start : start + size]
        touched = list(dict.fromkeys(key for key, _ in batch))
        loaded = {key: loaded.get(key) or _cached_trajectory(store, key) for key in touched}  # drops finished
        field = "latents" if store.source == "latent" else "predicted_x0"
        offset = 0 if store.source == "predicted_x0" else 1  # latents[0] is the initial noise
        points = torch.stack([loaded[key][field][t - 1 + offset] for key, t in batch])  # (b, 4, h, w)
        values = store.settings.describe(pipe, points).as_dict()
        for i, (key, t) in enumerate(batch):
            record = {name: column[i] for name, column in values.items()}
            records[key][str(t)] = {**record, "timestep": int(loaded[key]["timesteps"][t - 1])}
        for key in touched:
            store.descriptors.save(key, records[key])


def trajectory_descriptors(
    pipe,
    store: TrajectoryStore,
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance_scales: Sequence[float],
    *,
    steps: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """ψ, ν, δ of the decoder at every step (or at ``steps``) of every (prompt, seed, guidance
    scale) trajectory.

    Parameters
    ----------
    pipe
        the pipeline (its own sampler, ``store.steps`` steps).
    store
        the cache, which also fixes the steps, the descriptor settings and ``source``: the decoder
        at the current latent ``x_t`` (``"latent"``) or at the predicted clean latent.
    prompts, seeds, guidance_scales
        every combination is computed; seed ``s`` gives the same initial noise to every prompt
        and scale.
    steps
        the steps to describe (from 1 to ``T``); ``None``: all. Steps described before are
        returned too.

    Returns
    -------
    One row per (prompt, seed, guidance_scale, step) described: those columns, ``timestep`` and
    the descriptors; ``step`` runs from 1 to ``T``.
    """
    if isinstance(prompts, str) or not prompts or not seeds or not guidance_scales:
        raise ValueError("prompts, seeds and guidance_scales must be non-empty lists")
    steps = range(1, store.steps + 1) if steps is None else sorted({int(t) for t in steps})
    if not steps or not all(1 <= t <= store.steps for t in steps):
        raise ValueError(f"steps must lie in [1, {store.steps}], got {list(steps)}")
    keys = [(p, int(s), float(g)) for g in guidance_scales for p in prompts for s in seeds]
    for scale in tqdm(guidance_scales, desc="trajectories", disable=not progress, leave=False):
        _generate_missing(pipe, store, prompts, seeds, float(scale))
    _describe_missing(pipe, store, keys, steps, progress)
    return trajectory_table(store, keys)


def trajectory_table(store: TrajectoryStore, keys: Sequence[tuple]) -> pd.DataFrame:
    """The cached records of ``keys`` ((prompt, seed, scale) tuples) as one long table."""
    rows = [
        {"prompt": prompt, "seed": seed, "guidance_scale": scale, "step": int(step), **record}
        for prompt, seed, scale in keys
        for step, record in store.step_records(prompt, seed, scale).items()
    ]
    if not rows:
        raise ValueError("no cached descriptors for these trajectories: run trajectory_descriptors first")
    table = pd.DataFrame(rows).sort_values(["guidance_scale", "prompt", "seed", "step"], ignore_index=True)
    columns = [
        "prompt",
        "seed",
        "guidance_scale",
        "step",
        "timestep",
        *[d for d in DESCRIPTOR_NAMES if d in table],
    ]
    return table[columns]


def decoded_steps(
    pipe, store: TrajectoryStore, prompt: str, seed: int, scale: float
) -> dict[str, np.ndarray]:
    """Images of one cached trajectory: the decoder at ``x_t`` and at the predicted ``x0`` of
    every step, ``{"latent": (T, H, W, 3), "predicted_x0": (T, H, W, 3)}`` floats in [0, 1]."""
    tensors = store.trajectory(prompt, seed, scale)
    if tensors is None:
        raise ValueError(f"no cached trajectory for {(prompt, seed, scale)}")
    return {
        "latent": decode_latents(pipe, tensors["latents"][1:]),
        "predicted_x0": decode_latents(pipe, tensors["predicted_x0"]),
    }


def final_images(pipe, store: TrajectoryStore, keys: Sequence[tuple]) -> np.ndarray:
    """``(len(keys), H, W, 3)`` the generated images (decoded final latents) of cached trajectories."""
    return decode_latents(
        pipe, torch.stack([_cached_trajectory(store, tuple(key))["latents"][-1] for key in keys])
    )
