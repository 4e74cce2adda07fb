"""Train the offline mini Stable Diffusion: ``python -m geomlib.sd.mini.train --out data/mini-sd``.

Phases, each resumable from checkpoints in ``--work`` (``--resume``):

1. the VAE (reconstruction + KL) on procedural images, then its latent ``scaling_factor``;
2. the latents of the training set (posterior mean and std, sampled afresh every step);
3. the CLIP text encoder and the UNet together (v-prediction loss on a zero-terminal-SNR schedule,
   see :func:`geomlib.sd.mini.build.scheduler`; 10 % caption dropout for
   classifier-free guidance, a fixed share of each batch from the memorised scenes), with an EMA;
4. the attribute classifier used by the quality gates;
5. assembly with the shared builder, ``save_pretrained``, reload through ``load_pipeline``, the
   quality gates, and the model card.

Every random draw of step ``s`` comes from a generator seeded by ``(seed, phase, s)``, so a
resumed run is the same as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from geomlib.runtime.cache import save_atomic
from geomlib.runtime.profiles import default_device, set_torch_threads
from geomlib.runtime.seeding import generator_for
from geomlib.sd.decoder import decode_latents
from geomlib.sd.mini import quality
from geomlib.sd.mini.build import build_pipeline, parameter_counts
from geomlib.sd.mini.card import write_model_card
from geomlib.sd.mini.world import World, load_world
from geomlib.sd.pipelines import load_pipeline, resolve_local


@dataclass
class TrainConfig:
    """Everything that determines the trained model (written into the model card)."""

    seed: int = 0
    train_size: int = 40_000
    vae_steps: int = 3000
    vae_batch: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5
    unet_steps: int = 6000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    vae_memorised_fraction: float = 0.125  # share of each VAE batch from the memorised scenes
    memorised_fraction: float = 0.2  # share of each denoiser batch: enough repetitions to memorise
    ema_decay: float = 0.998
    classifier_steps: int = 800
    # Training images the classifier also sees through the VAE, so that it reads shapes on decoded
    # images as well as on renders (trained on renders alone, it read 0.62 of the shapes in mini-sd
    # v3.1's reconstructions; with them, 0.75, and the same score on that model's samples).
    classifier_reconstructions: int = 20_000
    checkpoint_every: int = 100
    log_every: int = 25
    eval: dict = field(default_factory=lambda: asdict(quality.QualityBudget()))


def training_size(model: str) -> int:
    """How many training renders a model of the offline world saw: its ``training.json``'s record,
    else the training script's default (e.g. for the untrained tiny pipeline)."""
    try:
        folder = resolve_local(model)
    except FileNotFoundError:
        folder = None
    record = None if folder is None else folder / "training.json"
    if record is not None and record.exists():
        return int(json.loads(record.read_text())["config"]["train_size"])
    return TrainConfig.train_size


class Log:
    """Appends lines to ``train.log`` in the work folder and echoes them above the progress bars."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with self.path.open("a") as handle:
            handle.write(line + "\n")
        tqdm.write(line)


def _lr_factor(step: int, total: int, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _batch_indices(
    rng: np.random.Generator, batch: int, n_train: int, n_memorised: int, fraction: float
) -> np.ndarray:
    """Indices into ``train + memorised`` (memorised ones come after the ``n_train`` training ones)."""
    n_mem = int(round(batch * fraction)) if n_memorised else 0
    return np.concatenate(
        [rng.integers(0, n_train, batch - n_mem), n_train + rng.integers(0, max(n_memorised, 1), n_mem)]
    )


def _resume_state(path: Path, resume: bool) -> dict | None:
    return torch.load(path, weights_only=True) if resume and path.exists() else None


def train_vae(
    vae, images: torch.Tensor, n_train: int, config: TrainConfig, work: Path, log: Log, resume: bool
):
    """Phase 1. ``images``: ``(N, 3, H, W)`` in [-1, 1], the memorised scenes after ``n_train``."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    start, losses = _restore(work / "vae.pt", resume, {"model": vae}, optimiser, log)
    vae.train()
    for step in tqdm(range(start, config.vae_steps), desc="vae", initial=start, total=config.vae_steps):
        rng = np.random.default_rng([config.seed, 1, step])
        index = _batch_indices(
            rng, config.vae_batch, n_train, len(images) - n_train, config.vae_memorised_fraction
        )
        x = images[torch.from_numpy(index)]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator_for(config.seed, 1, step))
        reconstruction = vae.decode(z).sample
        mse, kl = F.mse_loss(reconstruction, x), posterior.kl().mean()
        loss = mse + config.kl_weight * kl
        for group in optimiser.param_groups:
            group["lr"] = config.vae_lr * _lr_factor(step, config.vae_steps)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append((step, mse.item(), kl.item()))
        if (step + 1) % config.log_every == 0:
            recent = np.array(losses[-config.log_every :])[:, 1:].mean(0)
            log(f"vae step {step + 1}/{config.vae_steps} mse {recent[0]:.5f} kl {recent[1]:.1f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.vae_steps:
            save_atomic(
                {
                    "model": vae.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "step": step + 1,
                    "losses": losses,
                },
                work / "vae.pt",
            )
    return vae.eval(), losses


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, ``(N, 4, h, w)`` each (unscaled)."""
    means, stds = [], []
    for start in tqdm(range(0, len(images), batch), desc="encode"):
        posterior = vae.encode(images[start : start + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, 1 - decay)


def _captions(
    world: World, scenes: list, index: np.ndarray, n_train: int, rng: np.random.Generator, dropout: float
) -> list[str]:
    """Training captions (grammar with optional words dropped; memorised ones verbatim), some emptied."""
    captions = [
        world.training_caption(scenes[i], rng) if i < n_train else world.memorised_captions[i - n_train]
        for i in index
    ]
    return ["" if rng.random() < dropout else text for text in captions]


def _noisy_batch(
    step: int, config: TrainConfig, world: World, scenes: list, latents, n_train: int, pipe, schedule
):
    """Step ``step``'s batch: ``(token ids, noisy latents, target, timesteps)``, from ``(seed, 3, step)``;
    the target is the noise or the velocity, as the pipeline's scheduler predicts."""
    rng, generator = np.random.default_rng([config.seed, 3, step]), generator_for(config.seed, 3, step)
    mean, std = latents
    index = _batch_indices(rng, config.unet_batch, n_train, len(mean) - n_train, config.memorised_fraction)
    tokenizer = pipe.tokenizer
    ids = tokenizer(
        _captions(world, scenes, index, n_train, rng, config.caption_dropout),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    picked = torch.from_numpy(index)
    scale = pipe.vae.config.scaling_factor
    z0 = (mean[picked] + std[picked] * torch.randn(mean[picked].shape, generator=generator)) * scale
    noise = torch.randn(z0.shape, generator=generator)
    t = torch.randint(0, schedule.config.num_train_timesteps, (len(z0),), generator=generator)
    target = noise if schedule.config.prediction_type == "epsilon" else schedule.get_velocity(z0, noise, t)
    return ids, schedule.add_noise(z0, noise, t), target, t


def _restore(path: Path, resume: bool, modules: dict, optimiser, log: Log) -> tuple[int, list]:
    """Load a checkpoint into ``modules`` and ``optimiser`` when resuming: ``(next step, losses so far)``."""
    state = _resume_state(path, resume)
    if not state:
        return 0, []
    for key, module in modules.items():
        module.load_state_dict(state[key])
    optimiser.load_state_dict(state["optimiser"])
    log(f"{path.stem}: resumed at step {state['step']}")
    return state["step"], state["losses"]


def train_denoiser(
    pipe,
    world: World,
    scenes: list,
    latents,
    n_train: int,
    config: TrainConfig,
    work: Path,
    log: Log,
    resume: bool,
):
    """Phase 3: text encoder + UNet on ``latents = (mean, std)`` (unscaled, memorised after ``n_train``).

    Returns the EMA UNet, the EMA text encoder and the losses ``[(step, loss)]``.
    """
    unet, text_encoder = pipe.unet, pipe.text_encoder
    modules = {"unet": unet, "text": text_encoder}
    modules |= {
        f"ema_{k}": copy.deepcopy(m).requires_grad_(False)
        for k, m in (("unet", unet), ("text", text_encoder))
    }
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimiser = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-4)
    schedule: Any = DDPMScheduler.from_config(pipe.scheduler.config)  # the shipped noise schedule
    start, losses = _restore(work / "denoiser.pt", resume, modules, optimiser, log)
    unet.train(), text_encoder.train()
    device = unet.device
    for step in tqdm(
        range(start, config.unet_steps), desc="unet+text", initial=start, total=config.unet_steps
    ):
        ids, noisy, target, t = _noisy_batch(step, config, world, scenes, latents, n_train, pipe, schedule)
        prediction = unet(noisy.to(device), t.to(device), text_encoder(ids.to(device))[0]).sample
        loss = F.mse_loss(prediction, target.to(device))
        for group in optimiser.param_groups:
            group["lr"] = config.unet_lr * _lr_factor(step, config.unet_steps)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        _ema_update(modules["ema_unet"], unet, decay)
        _ema_update(modules["ema_text"], text_encoder, decay)
        losses.append((step, loss.item()))
        if (step + 1) % config.log_every == 0:
            recent = np.mean([value for _, value in losses[-config.log_every :]])
            log(f"unet step {step + 1}/{config.unet_steps} loss {recent:.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.unet_steps:
            checkpoint = {key: module.state_dict() for key, module in modules.items()}
            save_atomic(
                checkpoint | {"optimiser": optimiser.state_dict(), "step": step + 1, "losses": losses},
                work / "denoiser.pt",
            )
    return modules["ema_unet"].eval(), modules["ema_text"].eval(), losses


def _prepare_data(world: World, config: TrainConfig, log: Log):
    """Training renders then memorised renders: ``(scenes, images (N, 3, H, W) in [-1, 1], n_train)``."""
    started = time.time()
    images, scenes = world.dataset(config.train_size, seed=0)
    images = np.concatenate([images, world.render(world.memorised)])
    seconds = time.time() - started
    log(f"data: {config.train_size} training + {len(world.memorised)} memorised images in {seconds:.0f} s")
    return scenes, quality.to_tensor(images) * 2 - 1, config.train_size


def _vae_phase(pipe, images, n_train, config, work, log, resume, device):
    vae, losses = train_vae(pipe.vae.to(device), images.to(device), n_train, config, work, log, resume)
    cache = work / "latents.pt"
    if resume and cache.exists():
        mean, std = torch.load(cache, weights_only=True)
    else:
        mean, std = (t.cpu() for t in encode_dataset(vae, images.to(device)))
        save_atomic((mean, std), cache)
    sample = mean + std * torch.randn(mean.shape, generator=generator_for(config.seed, 2))
    scale = float(1 / sample[:n_train].std())
    vae.register_to_config(scaling_factor=scale)
    log(f"vae: latent std {1 / scale:.4f}, scaling_factor {scale:.5f}")
    return (mean, std), losses


def _classifier_phase(pipe, images, latents, scenes, n_train, config, work, log, resume):
    """Phase 4: the attribute classifier, on the training renders and the VAE's reconstructions of
    the first ``config.classifier_reconstructions`` of them (decoded posterior means)."""
    path = work / "classifier.pt"
    if resume and path.exists():
        classifier = quality.AttributeClassifier()
        classifier.load_state_dict(torch.load(path, weights_only=True))
        return classifier.eval()
    labels = quality.attribute_labels(scenes[:n_train])
    n_rebuilt = min(config.classifier_reconstructions, n_train)
    scaled = latents[0][:n_rebuilt] * pipe.vae.config.scaling_factor
    rebuilt = quality.to_tensor(decode_latents(pipe, scaled, batch_size=500)) if n_rebuilt else images[:0]
    classifier = quality.train_classifier(
        torch.cat([(images[:n_train] + 1) / 2, rebuilt]),
        torch.cat([labels, labels[:n_rebuilt]]),
        steps=config.classifier_steps,
        seed=config.seed,
    )
    save_atomic(classifier.state_dict(), path)
    log(f"classifier: trained on {n_train} renders and {n_rebuilt} reconstructions")
    return classifier


def software_record() -> dict[str, str]:
    """The versions and platform this process runs on, recorded in ``training.json`` so that the
    model card states what trained the model (not what renders the card)."""
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def _ship(pipe, classifier, world: World, out: Path) -> None:
    """Write the pipeline (float32 safetensors), the classifier and the world's description."""
    out.mkdir(parents=True, exist_ok=True)
    pipe.to("cpu").save_pretrained(out, safe_serialization=True)
    save_file(classifier.state_dict(), str(out / "classifier.safetensors"))
    (out / "world.json").write_text(json.dumps(world.description(), indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m geomlib.sd.mini.train`` (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m geomlib.sd.mini.train", description=__doc__.split("\n\n")[0]
    )
    defaults = TrainConfig()
    parser.add_argument("--out", default="data/mini-sd", help="pipeline folder to write")
    parser.add_argument("--work", default="_build/mini-sd-train", help="checkpoints and logs")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.unet_steps, help="UNet + text encoder steps")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--classifier-steps", type=int, default=defaults.classifier_steps)
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=quality.QualityBudget().n_novel,
        help="novel prompts per guidance scale",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="train nothing: measure the quality gates of the model in --out again (with the config"
        " recorded in its training.json), rewrite quality.json and the model card",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> TrainConfig:
    budget = quality.QualityBudget(n_novel=args.eval_samples)
    return TrainConfig(
        seed=args.seed,
        train_size=args.train_size,
        vae_steps=args.vae_steps,
        unet_steps=args.steps,
        classifier_steps=args.classifier_steps,
        eval=asdict(budget),
    )


def main(argv: list[str] | None = None) -> dict:
    """Train every phase (resuming with ``--resume``), ship the pipeline to ``--out``, measure the
    quality gates and write the model card; returns the quality results."""
    args = parse_args(argv)
    if args.evaluate_only:
        return evaluate_shipped(Path(args.out), args.threads)
    out, work = Path(args.out), Path(args.work)
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    set_torch_threads(args.threads)
    log, device, started, config = (
        Log(work / "train.log"),
        default_device(args.device),
        time.time(),
        _config(args),
    )
    command = "python -m geomlib.sd.mini.train " + " ".join(sys.argv[1:] if argv is None else argv)
    commit, software = _git_commit(), software_record()
    log(f"start: {command} | device {device} | threads {torch.get_num_threads()} | commit {commit}")
    log("software: " + ", ".join(f"{name} {version}" for name, version in software.items()))
    world = World(seed=config.seed)
    scenes, images, n_train = _prepare_data(world, config, log)
    pipe = build_pipeline(world.vocabulary, "mini", seed=config.seed)
    latents, vae_losses = _vae_phase(pipe, images, n_train, config, work, log, args.resume, device)
    timings = {"vae_and_latents_s": time.time() - started}
    ema_unet, ema_text, unet_losses = train_denoiser(
        pipe.to(device), world, scenes, latents, n_train, config, work, log, args.resume
    )
    timings["denoiser_s"] = time.time() - started - timings["vae_and_latents_s"]
    classifier = _classifier_phase(
        pipe, images.cpu(), latents, scenes, n_train, config, work, log, args.resume
    )
    pipe.unet.load_state_dict(ema_unet.state_dict())
    pipe.text_encoder.load_state_dict(ema_text.state_dict())
    _ship(pipe, classifier, world, out)
    timings["training_total_s"] = time.time() - started
    loaded = load_pipeline(out, device=device)
    log(f"shipped to {out}; reloaded through load_pipeline; evaluating the quality gates")
    train_images = (images[:n_train].cpu() + 1) / 2
    results = quality.evaluate(
        loaded, classifier, world, train_images, config_budget(config), seed=config.seed
    )
    timings["evaluation_s"] = time.time() - started - timings["training_total_s"]
    info: dict[str, Any] = dict(config=asdict(config), command=command, commit=commit, device=str(device))
    info |= dict(software=software)
    info |= dict(threads=torch.get_num_threads(), counts=parameter_counts(loaded), timings=timings)
    info |= dict(scheduler=dict(loaded.scheduler.config))
    info |= dict(
        final_losses=_final_losses(vae_losses, unet_losses), scaling_factor=loaded.vae.config.scaling_factor
    )
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    (out / "training.json").write_text(json.dumps(info, indent=1))  # everything the card is written from
    log(f"done in {time.time() - started:.0f} s")
    shutil.copy(work / "train.log", out / "train_log.txt")
    write_model_card(out, info, results, world)
    return results


def evaluate_shipped(out: Path, threads: int | None = None) -> dict:
    """Measure the quality gates of the shipped model in ``out`` again, with the training config and
    seed recorded in its ``training.json``; rewrite ``quality.json`` and the model card (whose
    training section keeps the recorded numbers). Returns the quality results."""
    set_torch_threads(threads)
    info = json.loads((out / "training.json").read_text())
    config = TrainConfig(**info["config"])
    world = load_world(out)
    images, _ = world.dataset(config.train_size, seed=0)  # the training renders, as in _prepare_data
    loaded = load_pipeline(out, device=default_device(None))
    results = quality.evaluate(
        loaded,
        quality.load_classifier(out),
        world,
        quality.to_tensor(images),
        config_budget(config),
        seed=config.seed,
    )
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    write_model_card(out, info, results, world)
    return results


def config_budget(config: TrainConfig) -> quality.QualityBudget:
    """The evaluation budget recorded in ``config``."""
    budget = dict(config.eval)
    budget["guidance_scales"] = tuple(budget["guidance_scales"])
    return quality.QualityBudget(**budget)


def _final_losses(vae_losses: list, unet_losses: list, window: int = 100) -> dict[str, float]:
    """Means over the last ``window`` steps of each phase."""
    vae = np.array(vae_losses[-window:])
    return {
        "vae_mse": float(vae[:, 1].mean()),
        "vae_kl": float(vae[:, 2].mean()),
        "unet_epsilon_mse": float(np.mean([loss for _, loss in unet_losses[-window:]])),
    }


if __name__ == "__main__":
    main()
