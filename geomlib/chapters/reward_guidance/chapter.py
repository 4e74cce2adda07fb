"""Chapter 06's workflow: budgets, prompts, and the steps that tie the reward parts to a cache
folder so that a rerun reuses the data and the reward models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geomlib.chapters.reward_guidance.data import (
    FolderImages,
    ImageSource,
    RewardData,
    WorldImages,
    bin_labels,
    decoder_psi,
    prepare_reward_data,
    psi_from_describe_cli,
)
from geomlib.chapters.reward_guidance.evaluation import SampleSet, image_statistics
from geomlib.chapters.reward_guidance.guidance import GuidedSamples, guided_generate
from geomlib.chapters.reward_guidance.model import (
    RewardNetConfig,
    RewardTrainConfig,
    TrainedReward,
    train_reward_model,
)
from geomlib.core.diversity import pixel_features
from geomlib.core.stats import mean_interval
from geomlib.runtime.cache import model_fingerprint, settings_key
from geomlib.runtime.profiles import count
from geomlib.sd.decoder import DescriptorSettings, decode_latents
from geomlib.sd.hub import SDPipeline
from geomlib.sd.mini.world import World, caption
from geomlib.sd.pipelines import pipeline_resolution, world_for_model


@dataclass(frozen=True)
class RewardBudget:
    """A profile of chapter 06.

    Attributes
    ----------
    n_train, n_val, shard_size : reward-data images for the largest reward model (the paper: 50K..800K
        ImageNet images), validation images, images per saved shard.
    psi : how the labels' ψ is computed (the projected sketch, no δ).
    psi_part_size : images per part file when ψ comes from the command line's describe runs.
    net_width, net_depth, train_steps, train_batch, eval_every : the reward model and its training.
    n_sweep : the smaller training sizes compared.
    n_samples, n_baseline_bins : seeds (with prompts) of the unguided samples, and their ψ bins.
    steps, guidance_scale : the DDIM sampler and its classifier-free guidance.
    rhos, grid_rhos, n_grid, sweep_rhos, sweep_samples : the guidance weights of each experiment.
    sample_batch : samples per sampler call; widget_steps : the live widget's sampler steps.
    examples_per_level_set : images shown per ψ level set.
    cpu_threads : torch threads on a CPU (small convolutions: two threads' spin-waits cost 3-16x on
        a busy 2-core CPU; measured).
    """

    n_train: int = field(metadata=count(12))
    n_val: int = field(metadata=count(4))
    shard_size: int = field(metadata=count(8))
    psi: DescriptorSettings
    psi_part_size: int = field(metadata=count(8))
    net_width: int
    net_depth: int
    train_steps: int = field(metadata=count(10))
    train_batch: int = field(metadata=count(8))
    eval_every: int = field(metadata=count(5))
    n_sweep: tuple[int, ...] = field(metadata=count((6,)))
    n_samples: int = field(metadata=count(8))
    n_baseline_bins: int = field(metadata=count(2))
    steps: int = field(metadata=count(3))
    guidance_scale: float
    rhos: tuple[float, ...]
    grid_rhos: tuple[float, ...]
    n_grid: int = field(metadata=count(2))
    sweep_rhos: tuple[float, ...]
    sweep_samples: int = field(metadata=count(4))
    sample_batch: int = field(metadata=count(4))
    widget_steps: int = field(metadata=count(2))
    cpu_threads: int | None = 1
    examples_per_level_set: int = field(default=6, metadata=count(1))


# fmt: off
REWARD_BUDGETS: dict[str, RewardBudget] = {
    "smoke": RewardBudget(
        n_train=48, n_val=16, shard_size=32, psi=DescriptorSettings(k=8), psi_part_size=32,
        net_width=16, net_depth=2, train_steps=40, train_batch=32, eval_every=20,
        n_sweep=(24,), n_samples=20, n_baseline_bins=10, steps=3, guidance_scale=7.5,
        rhos=(-1.0, 1.0), grid_rhos=(-2.0, -1.0, 0.0, 1.0, 2.0), n_grid=3, sweep_rhos=(-1.0, 1.0),
        sweep_samples=8, sample_batch=20, widget_steps=3,
    ),
    # k = 8: 0.05 s per image on one CPU thread (k = 120: 0.9 s); Spearman 0.92 with k = 120's ψ
    "book": RewardBudget(
        n_train=640, n_val=160, shard_size=80, psi=DescriptorSettings(k=8), psi_part_size=64,
        net_width=32, net_depth=2, train_steps=400, train_batch=64, eval_every=50,
        n_sweep=(80, 240), n_samples=80, n_baseline_bins=10, steps=10, guidance_scale=7.5,
        rhos=(-64.0, -32.0, 32.0, 64.0), grid_rhos=(-64.0, -32.0, 0.0, 32.0, 64.0), n_grid=6,
        sweep_rhos=(-64.0, 64.0), sweep_samples=40, sample_batch=40, widget_steps=10,
    ),
    # SD 1.4 on a GPU with ImageNet images: the paper's smallest reward model and its k = 120 sketch;
    # untested here (no weights, no GPU): rho must be re-tuned for SD's reward model
    "paper": RewardBudget(
        n_train=50_000, n_val=2_000, shard_size=512, psi=DescriptorSettings(k=120, chunk_size=40),
        psi_part_size=8, net_width=128, net_depth=4, train_steps=20_000, train_batch=256,
        eval_every=500, n_sweep=(6_250, 12_500, 25_000), n_samples=1_000, n_baseline_bins=10,
        steps=50, guidance_scale=7.5, rhos=(-64.0, -32.0, 32.0, 64.0),
        grid_rhos=(-64.0, -32.0, 0.0, 32.0, 64.0), n_grid=6, sweep_rhos=(-64.0, 64.0),
        sweep_samples=200, sample_batch=8, widget_steps=50, cpu_threads=None,
    ),
}

#: DreamBooth's live-subject prompt templates (Ruiz et al. 2023, google/dreambooth
#: ``dataset/prompts_and_classes.txt``), without the unique identifier token.
DREAMBOOTH_LIVE_TEMPLATES: tuple[str, ...] = (
    "a {} in the jungle", "a {} in the snow", "a {} on the beach", "a {} on a cobblestone street",
    "a {} on top of pink fabric", "a {} on top of a wooden floor", "a {} with a city in the background",
    "a {} with a mountain in the background", "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest", "a {} wearing a red hat", "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf", "a {} wearing a black top hat and a monocle", "a {} in a chef outfit",
    "a {} in a firefighter outfit", "a {} in a police outfit", "a {} wearing pink glasses",
    "a {} wearing a yellow shirt", "a {} in a purple wizard outfit", "a red {}", "a purple {}",
    "a shiny {}", "a wet {}", "a cube shaped {}",
)
DREAMBOOTH_LIVE_SUBJECTS: tuple[str, ...] = ("dog", "cat")
# fmt: on


def world_for(pipe: SDPipeline, model: str) -> World:
    """The procedural world of ``model`` (:func:`geomlib.sd.pipelines.world_for_model`), or a default one
    at the pipeline's size for a model without one (Stable Diffusion)."""
    size = pipeline_resolution(pipe)
    return world_for_model(model, size) or World(seed=0, image_size=size)


def guidance_prompts(model: str, n: int, seed: int = 0, world: World | None = None) -> list[str]:
    """``n`` prompts: DreamBooth's live-subject templates for SD (templates, then subjects, cycled);
    otherwise full captions of random scenes of the mini world's grammar (training combinations)."""
    if world_for_model(model) is None:  # Stable Diffusion, or any model of real captions
        return [
            DREAMBOOTH_LIVE_TEMPLATES[i % len(DREAMBOOTH_LIVE_TEMPLATES)].format(
                DREAMBOOTH_LIVE_SUBJECTS[
                    (i // len(DREAMBOOTH_LIVE_TEMPLATES)) % len(DREAMBOOTH_LIVE_SUBJECTS)
                ]
            )
            for i in range(n)
        ]
    world = world or World(seed=0)
    scenes = world.sample_scenes(n, np.random.default_rng([seed, 11]))
    return [caption(scene.attributes) for scene in scenes]


def use_ddim(pipe: SDPipeline) -> SDPipeline:
    """Give ``pipe`` a DDIM scheduler (same betas; no sample clipping) if it has another one, e.g. SD
    1.4's PNDM: the guidance formula is DDIM's. Returns ``pipe``."""
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False
        )
    return pipe


def chapter_reward_data(
    pipe: SDPipeline,
    model: str,
    budget: RewardBudget,
    cache_dir: str | Path,
    *,
    imagenet_folder: str | None = None,
    progress: bool = True,
) -> RewardData:
    """The chapter's ``n_train + n_val`` reward items, prepared in (or reloaded from) ``cache_dir``.

    Without ``imagenet_folder``: scenes of the model's procedural world, ψ by
    :func:`decoder_psi`. With it: that folder's images (sorted), ψ by ``python -m geomlib
    describe`` (resumable parquet parts in the cache), latents by the same encoder.
    """
    n, psi, cache_dir = budget.n_train + budget.n_val, budget.psi, Path(cache_dir)
    lookup = None
    source: ImageSource
    if imagenet_folder is not None:
        size = (pipeline_resolution(pipe), pipeline_resolution(pipe))
        source = FolderImages(Path(imagenet_folder), size)
        out = cache_dir / f"describe-{settings_key(source=source.description(), psi=psi.key())}.parquet"
        lookup = psi_from_describe_cli(
            model,
            imagenet_folder,
            out,
            psi,
            size=size,
            batch_size=budget.psi_part_size,
            device=str(pipe.vae.device),
            limit=n,
        )
    else:
        source = WorldImages(world_for(pipe, model), seed=1)
    key = settings_key(
        source=source.description(),
        vae=model_fingerprint(pipe, ["vae"]),
        psi=psi.key(),
        shards=budget.shard_size,
    )
    return prepare_reward_data(
        pipe,
        source,
        cache_dir / f"reward-data-{key}",
        n,
        psi=psi,
        shard_size=budget.shard_size,
        psi_lookup=lookup,
        progress=progress,
    )


def split_train_val(data: RewardData, n_val: int) -> tuple[RewardData, RewardData]:
    """``(first len - n_val items, last n_val items)``: smaller training sets are prefixes of the first."""
    if not 0 < n_val < len(data):
        raise ValueError(f"n_val must be between 1 and {len(data) - 1}, got {n_val}")
    return data.subset(slice(0, len(data) - n_val)), data.subset(slice(len(data) - n_val, len(data)))


def chapter_reward_model(
    pipe: SDPipeline,
    train: RewardData,
    val: RewardData,
    n: int,
    budget: RewardBudget,
    cache_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
) -> TrainedReward:
    """A reward model trained on the first ``n`` items of ``train`` (checkpointed in ``cache_dir``)."""
    net_config = RewardNetConfig(width=budget.net_width, depth=budget.net_depth)
    config = RewardTrainConfig(
        steps=budget.train_steps,
        batch_size=budget.train_batch,
        eval_every=budget.eval_every,
        checkpoint_every=budget.eval_every,
        seed=seed,
    )
    key = settings_key(
        net=net_config, train=config, ids=train.ids[:n] + val.ids, vae=model_fingerprint(pipe, ["vae"])
    )
    return train_reward_model(
        train.subset(slice(0, n)),
        val,
        pipe.scheduler.alphas_cumprod,
        net_config=net_config,
        config=config,
        checkpoint=Path(cache_dir) / f"reward-model-N{n}-{key}.pt",
        device=pipe.unet.device,
        progress=progress,
    )


def describe_samples(pipe: SDPipeline, samples: GuidedSamples, psi: DescriptorSettings) -> SampleSet:
    """ψ at the final latents, image statistics, and two diversity feature sets: ``pixels``
    (:func:`pixel_features`) and ``latents`` (the final diffusion latents, flattened)."""
    features = {"pixels": pixel_features(samples.images), "latents": samples.latents.flatten(1).numpy()}
    return SampleSet(
        psi=decoder_psi(pipe, samples.latents, psi).numpy(),
        images=samples.images,
        features=features,
        statistics=image_statistics(samples.images),
        rho=samples.rho,
    )


def sample_rhos(
    pipe: SDPipeline,
    net: torch.nn.Module | None,
    prompts: list[str],
    rhos,
    budget: RewardBudget,
    *,
    seed: int = 0,
    objective: str = "expected_bin",
    progress: bool = True,
) -> dict[float, SampleSet]:
    """For each ``ρ``: the same seeds and prompts sampled with reward guidance ``ρ`` and described."""
    results = {}
    for rho in tqdm(list(rhos), desc="sampling per ρ", disable=not progress):
        samples = guided_generate(
            pipe,
            net,
            prompts,
            rho,
            seed=seed,
            guidance_scale=budget.guidance_scale,
            num_inference_steps=budget.steps,
            objective=objective,
            batch_size=budget.sample_batch,
        )
        results[float(rho)] = describe_samples(pipe, samples, budget.psi)
    return results


def n_sweep(
    pipe: SDPipeline,
    train: RewardData,
    val: RewardData,
    prompts: list[str],
    baseline: SampleSet,
    budget: RewardBudget,
    cache_dir: str | Path,
    *,
    models: dict[int, TrainedReward] | None = None,
    reuse: dict[int, dict[float, SampleSet]] | None = None,
    seed: int = 0,
    objective: str = "expected_bin",
    progress: bool = True,
) -> pd.DataFrame:
    """Δψ (95 % CI) of reward models trained on each ``N`` of ``budget.n_sweep`` and on all of
    ``train``, at ``budget.sweep_rhos``, on the first ``budget.sweep_samples`` prompts and seeds.

    ``models``: already trained reward models by ``N`` (e.g. the chapter's main one), reused;
    ``reuse``: samples already drawn, by ``N`` and ``ρ`` (same prompts and seeds; the first
    ``sweep_samples`` are used); the other ``ρ`` are sampled.
    Returns rows ``n_train, rho, dpsi, dpsi_low, dpsi_high, val_accuracy, n_val``.
    """
    models, reuse = dict(models or {}), dict(reuse or {})
    count = budget.sweep_samples
    rows = []
    for n in tqdm(sorted({*budget.n_sweep, len(train)}), desc="training sizes", disable=not progress):
        if n not in models:
            models[n] = chapter_reward_model(
                pipe, train, val, n, budget, cache_dir, seed=seed, progress=progress
            )
        have = reuse.get(n, {})
        missing = [float(r) for r in budget.sweep_rhos if float(r) not in have]
        fresh = sample_rhos(pipe, models[n].net, prompts[:count], missing, budget, seed=seed,
                            objective=objective, progress=False) if missing else {}  # fmt: skip
        guided = {float(r): {**fresh, **have}[float(r)] for r in budget.sweep_rhos}
        for rho, samples in guided.items():
            change = mean_interval(samples.psi[:count] - baseline.psi[:count])
            mean, low, high = change["mean"], change["low"], change["high"]
            rows.append(
                dict(
                    n_train=n,
                    rho=rho,
                    dpsi=mean,
                    dpsi_low=low,
                    dpsi_high=high,
                    val_accuracy=models[n].val_accuracy,
                    n_val=len(val),
                )
            )
    return pd.DataFrame(rows)


def rho_grid_samples(
    pipe: SDPipeline,
    net: torch.nn.Module,
    prompts: list[str],
    budget: RewardBudget,
    *,
    seed: int = 0,
    reuse: dict[float, SampleSet] | None = None,
    objective: str = "expected_bin",
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The first ``budget.n_grid`` seeds at every ``ρ`` of ``budget.grid_rhos`` (ascending),
    reusing ``reuse``'s samples where a ``ρ`` was already sampled with the same prompts and seeds.

    Returns ``(images (R, S, H, W, 3), psi (R, S), rhos)``.
    """
    count, reuse = budget.n_grid, dict(reuse or {})
    rhos = sorted(float(r) for r in budget.grid_rhos)
    missing = [r for r in rhos if r not in reuse]
    fresh = sample_rhos(
        pipe, net, prompts[:count], missing, budget, seed=seed, objective=objective, progress=False
    )
    sets = [reuse[r] if r in reuse else fresh[r] for r in rhos]
    return np.stack([s.images[:count] for s in sets]), np.stack([s.psi[:count] for s in sets]), rhos


def level_set_examples(pipe: SDPipeline, data: RewardData, edges: np.ndarray, per_bin: int = 6) -> np.ndarray:
    """``(K, per_bin, H, W, 3)``: decoded clean latents of the first ``per_bin`` items of each level set."""
    labels = bin_labels(data.psi.numpy(), edges)
    picks = [np.flatnonzero(labels == b)[:per_bin] for b in range(len(edges) + 1)]
    if any(len(p) < per_bin for p in picks):
        raise ValueError(f"some level set has fewer than {per_bin} items")
    images = decode_latents(pipe, data.clean[torch.from_numpy(np.concatenate(picks))])
    return images.reshape(len(picks), per_bin, *images.shape[1:])


def guidance_widget(
    pipe: SDPipeline,
    net: torch.nn.Module,
    prompt: str,
    budget: RewardBudget,
    *,
    seed: int = 0,
    rho: float | None = None,
    objective: str = "expected_bin",
) -> None:
    """Live controls (displayed): prompt, seed and ρ (up to twice the largest of
    ``budget.grid_rhos``); *Run* samples the seed with and without reward guidance and shows both
    with their ψ (nothing runs until pressed)."""
    import ipywidgets as widgets

    from geomlib.runtime.plotting import image_grid
    from geomlib.runtime.widgets import live_controls

    rho_max = 2 * max(abs(float(r)) for r in budget.grid_rhos)

    def redraw(prompt: str, seed: int, rho: float):
        sets = sample_rhos(
            pipe,
            net,
            [prompt],
            (0.0, rho),
            dataclasses.replace(budget, steps=budget.widget_steps),
            seed=seed,
            objective=objective,
            progress=False,
        )
        images = np.concatenate([s.images for s in sets.values()])
        titles = [f"ρ = {r:+g}: ψ = {s.psi[0]:.1f}" for r, s in sets.items()]
        return image_grid(images, nrows=1, titles=titles, size=2.6)

    controls = dict(
        prompt=widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="520px")),
        seed=widgets.IntText(value=seed, description="seed"),
        rho=widgets.FloatSlider(
            value=rho_max / 2 if rho is None else rho,
            min=-rho_max,
            max=rho_max,
            step=rho_max / 48,
            description="ρ",
        ),
    )
    live_controls(redraw, controls, rows=[["prompt"], ["seed", "rho"]], manual=True)
