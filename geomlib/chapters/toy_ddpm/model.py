"""A small, readable DDPM (Ho, Jain & Abbeel 2020) for 2-D points.

* :class:`LinearSchedule`: linear betas, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``, the forward
  marginal ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` and the ancestral reverse step.
* :class:`Denoiser`: the noise predictor ``eps_theta(x, t)``, an MLP on ``[x, emb(t)]`` with a
  sinusoidal time embedding. With ReLU (the default) the map ``x -> eps_theta(x, t)`` at a fixed
  ``t`` is continuous piecewise-linear (CPWL), the setting of the paper's theory; GELU is an option.
* :func:`train_ddpm`: the epsilon-prediction loss, with a progress bar and checkpoints. Training
  is resumable: run it again with the same ``checkpoint_dir`` and it continues from the last
  checkpoint, bit for bit as if it had never stopped (the RNG state is saved with the weights).
* :func:`sample_ddpm`: ancestral sampling with the posterior variance ``beta_tilde_t``.

Timesteps are integers ``0 .. T-1`` (``t = 0`` is the least noisy); the paper's ``t / T`` is
``(t + 1) / T`` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from geomlib.core.diffusion import forward_noise, linear_alpha_bar
from geomlib.runtime.cache import content_key, save_atomic, settings_key
from geomlib.runtime.profiles import count, torch_threads


@dataclass(frozen=True)
class ToyDdpmBudget:
    """A profile of chapter 02: the schedule (``n_steps``), the denoiser (``hidden``, ``depth``,
    ``time_dim``), its training (``batch_size``, ``lr``, ``n_iters``; ``checkpoints``: the iterations
    whose weights are kept and analysed, the last one ``n_iters``), ``n_samples`` drawn, and the
    descriptor maps (a ``grid x grid`` plane, ``n_timesteps`` timesteps, δ's ``radius``); the claim
    checks train ``n_seeds`` runs (the chapter's seed and the next ones) and measure their gaps on a
    ``seed_grid x seed_grid`` plane."""

    n_steps: int
    hidden: int
    depth: int
    time_dim: int
    batch_size: int
    lr: float
    n_iters: int = field(metadata=count(30))
    checkpoints: tuple[int, ...] = field(metadata=count((10, 30)))
    n_samples: int = field(metadata=count(100))
    grid: int = field(metadata=count(12))
    n_timesteps: int = field(metadata=count(3))
    radius: float
    n_seeds: int = field(default=1, metadata=count(2))
    seed_grid: int = field(default=60, metadata=count(12))


TOY_DDPM_BUDGETS: dict[str, ToyDdpmBudget] = {
    "smoke": ToyDdpmBudget(
        n_steps=50,
        hidden=64,
        depth=3,
        time_dim=16,
        batch_size=128,
        lr=3e-3,
        n_iters=300,
        checkpoints=(100, 300),
        n_samples=500,
        grid=48,
        n_timesteps=6,
        radius=0.1,
        n_seeds=2,
        seed_grid=24,
    ),
    "book": ToyDdpmBudget(
        n_steps=100,
        hidden=128,
        depth=3,
        time_dim=32,
        batch_size=256,
        lr=1e-3,
        n_iters=10_000,
        checkpoints=(250, 1000, 3000, 10_000),
        n_samples=2000,
        grid=120,
        n_timesteps=20,
        radius=0.1,
        n_seeds=4,
        seed_grid=80,
    ),
    "paper": ToyDdpmBudget(
        n_steps=1000,
        hidden=256,
        depth=4,
        time_dim=64,
        batch_size=1024,
        lr=1e-3,
        n_iters=200_000,
        checkpoints=(1000, 5000, 20_000, 50_000, 100_000, 200_000),
        n_samples=10_000,
        grid=500,
        n_timesteps=100,
        radius=0.05,
        n_seeds=8,
        seed_grid=250,
    ),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class LinearSchedule:
    """Linear noise schedule ``beta_t``, ``t = 0 .. n_steps - 1`` (float64, on the CPU).

    Attributes ``betas`` and ``alpha_bars`` are ``(T,)`` tensors, ``alphas`` = ``1 - betas``.

    ``beta_start``/``beta_end`` default to Ho et al.'s ``1e-4``/``0.02`` for ``T = 1000``, scaled
    by ``1000 / T`` (Nichol & Dhariwal 2021) so that a short chain still ends near pure noise.
    """

    n_steps: int = 100
    beta_start: float | None = None
    beta_end: float | None = None
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alpha_bars: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be >= 2, got {self.n_steps}")
        scale = 1000.0 / self.n_steps
        start = 1e-4 * scale if self.beta_start is None else self.beta_start
        end = min(0.02 * scale, 0.999) if self.beta_end is None else self.beta_end
        if not 0 < start <= end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {start}, {end}")
        object.__setattr__(self, "beta_start", start)
        object.__setattr__(self, "beta_end", end)
        object.__setattr__(self, "betas", torch.linspace(start, end, self.n_steps, dtype=torch.float64))
        # alpha_bar_t = prod_{s <= t} (1 - beta_s): the signal fraction of x_t
        object.__setattr__(self, "alpha_bars", linear_alpha_bar(self.n_steps, start, end))

    @property
    def alphas(self) -> torch.Tensor:
        """``(T,)`` ``1 - beta_t``."""
        return 1.0 - self.betas

    def config(self) -> dict:
        """Constructor arguments, to store in a checkpoint."""
        return {"n_steps": self.n_steps, "beta_start": self.beta_start, "beta_end": self.beta_end}

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward marginal ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``.

        ``x0, noise: (B, D)``, ``t: (B,)`` integer timesteps; returns ``(B, D)``.
        """
        return forward_noise(x0, self.alpha_bars.to(x0.device)[t].to(x0.dtype), noise)

    def reverse_step(
        self, x_t: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """One ancestral step ``x_t -> x_{t-1}`` given the predicted noise ``eps: (B, D)``.

        Mean ``(x_t - beta_t / sqrt(1 - a_t) eps) / sqrt(alpha_t)``, variance
        ``beta_t (1 - a_{t-1}) / (1 - a_t)``; the last step (``t = 0``) adds no noise.
        """
        beta, alpha, a_bar = (float(v[t]) for v in (self.betas, self.alphas, self.alpha_bars))
        mean = (x_t - beta / math.sqrt(1.0 - a_bar) * eps) / math.sqrt(alpha)
        if t == 0 or noise is None:
            return mean
        variance = beta * (1.0 - float(self.alpha_bars[t - 1])) / (1.0 - a_bar)
        return mean + math.sqrt(variance) * noise


class SinusoidalTimeEmbedding(nn.Module):
    """``t: (B,) -> (B, dim)``: ``[sin(t w_k), cos(t w_k)]``, ``w_k = max_period^(-k / (dim/2))``."""

    def __init__(self, dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be even and >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.freqs: torch.Tensor
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``(B,)`` timesteps (integer or float) to ``(B, dim)`` embeddings."""
        angles = t.to(self.freqs.dtype).unsqueeze(-1) * self.freqs
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Denoiser(nn.Module):
    """Noise predictor ``eps_theta(x, t)``: ``x: (B, D)``, ``t: (B,)`` or an int -> ``(B, D)``.

    An MLP of ``depth`` hidden layers of width ``hidden`` on ``[x, emb(t)]``. For a fixed ``t`` the
    embedding is a constant, so the first layer is affine in ``x`` and, with ReLU, the whole map
    ``x -> eps_theta(x, t)`` is CPWL. Weights are drawn from a local generator seeded by ``seed``.
    """

    def __init__(
        self,
        data_dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 32,
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if min(data_dim, hidden, depth) < 1:
            raise ValueError("data_dim, hidden and depth must be positive")
        self.config = dict(
            data_dim=data_dim, hidden=hidden, depth=depth, time_dim=time_dim, activation=activation, seed=seed
        )
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        widths = [data_dim + time_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(hidden, data_dim))
        self.trunk = nn.Sequential(*layers)
        self._initialise(torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def _initialise(self, generator: torch.Generator) -> None:
        """PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, from a local generator."""
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                for param in (layer.weight, layer.bias):
                    param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Predicted noise ``(B, D)`` for ``x: (B, D)`` at timesteps ``t: (B,)`` (or one int for all)."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        embedding = self.time_embedding(t).to(x.dtype)
        return self.trunk(torch.cat([x, embedding], dim=-1))


class DenoiserAtTime(nn.Module):
    """The map ``x -> eps_theta(x, t)`` at a fixed timestep: ``(B, D) -> (B, D)``.

    A module, so that :func:`geomlib.describe` can hook its non-linearities for δ.
    """

    def __init__(self, denoiser: Denoiser, timestep: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.timestep = int(timestep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``eps_theta(x, t)`` for ``x: (B, D)``."""
        return self.denoiser(x, self.timestep)


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_ddpm(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: LinearSchedule,
    n_samples: int,
    *,
    generator: torch.Generator,
    data_dim: int = 2,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    threads: int | None = 1,
) -> torch.Tensor:
    """Ancestral sampling from ``x_{T-1} ~ N(0, I)`` down to ``x_0``: returns ``(n_samples, data_dim)``.

    ``denoiser(x: (B, D), t: (B,) int64) -> (B, D)`` predicts the noise. The Gaussian draws come
    from ``generator`` (a CPU generator), so a seed gives the same samples on every device.
    ``threads``: CPU threads meanwhile (see :func:`geomlib.runtime.profiles.torch_threads`).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")

    def gaussian() -> torch.Tensor:
        return torch.randn(n_samples, data_dim, generator=generator, dtype=dtype).to(device)

    x = gaussian()
    steps = range(schedule.n_steps - 1, -1, -1)
    with torch_threads(threads):
        for t in tqdm(steps, desc="sampling", disable=not progress, leave=False):
            timesteps = torch.full((n_samples,), t, dtype=torch.long, device=x.device)
            eps = denoiser(x, timesteps)
            x = schedule.reverse_step(x, eps, t, gaussian() if t > 0 else None)
    return x


# ----------------------------------------------------------------------------- training


@dataclass
class TrainingRun:
    """Result of :func:`train_ddpm`.

    Attributes
    ----------
    losses : ``(n_iters,)`` loss of every iteration (including those before a resume).
    checkpoints : ``{iteration: path}`` of the kept checkpoints (those in ``checkpoint_at``).
    resumed_from : the iteration training continued from (0 for a fresh run).
    """

    losses: np.ndarray
    checkpoints: dict[int, Path]
    resumed_from: int = 0


def checkpoint_directory(name: str, settings: dict, root: str | Path | None = None) -> Path:
    """``<root>/<name>-<hash>``: one folder per distinct run, so a rerun resumes the same run and a
    changed setting starts a new one instead of clashing with old checkpoints.

    ``root`` defaults to ``<repo>/_build/checkpoints`` (ignored by git).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[3] / "_build" / "checkpoints"
    return root / f"{name}-{settings_key(**settings)}"


def _data_fingerprint(data: torch.Tensor) -> str:
    return content_key(data.detach().cpu().double().numpy().tobytes())


def _checkpoint_files(directory: Path) -> dict[int, Path]:
    """``{iteration: path}`` of ``step_*.pt`` (kept) and ``resume_*.pt`` (rolling) files."""
    found: dict[int, Path] = {}
    for path in sorted(directory.glob("*.pt")):
        kind, _, number = path.stem.partition("_")
        if kind in ("step", "resume") and number.isdigit():
            found.setdefault(int(number), path)
    return found


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> tuple[Denoiser, dict]:
    """Rebuild the denoiser saved at ``path``; returns ``(model in eval mode, checkpoint dict)``.

    The dict holds ``iteration``, ``losses``, ``schedule`` (arguments of :class:`LinearSchedule`),
    ``model_config`` and ``settings`` (batch size, learning rate, seed, data fingerprint).
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = Denoiser(**state["model_config"])
    model.load_state_dict(state["model_state"])
    return model.to(device or "cpu").eval(), state


def _resume(
    directory: Path, n_iters: int, expected: dict, model: Denoiser, optimizer, generator
) -> tuple[int, list[float]]:
    """Load the latest checkpoint at or before ``n_iters`` into the live objects, if any."""
    candidates = [i for i in _checkpoint_files(directory) if i <= n_iters]
    if not candidates:
        return 0, []
    start = max(candidates)
    state = torch.load(_checkpoint_files(directory)[start], map_location="cpu", weights_only=True)
    for key, value in expected.items():
        if state[key] != value:
            raise ValueError(
                f"{directory} holds a run with different {key}: {state[key]} != {value};"
                " use another checkpoint_dir"
            )
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    generator.set_state(state["generator_state"])
    return start, list(state["losses"])


def _training_step(model, optimizer, data, schedule, batch_size, generator) -> float:
    """One step of the epsilon-prediction loss ``|| eps - eps_theta(x_t, t) ||^2``."""
    index = torch.randint(len(data), (batch_size,), generator=generator)
    t = torch.randint(schedule.n_steps, (batch_size,), generator=generator)
    noise = torch.randn(batch_size, data.shape[1], generator=generator, dtype=data.dtype)
    device = next(model.parameters()).device
    x0, t, noise = data[index].to(device), t.to(device), noise.to(device)
    loss = torch.nn.functional.mse_loss(model(schedule.add_noise(x0, noise, t), t), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def train_ddpm(
    model: Denoiser,
    data: torch.Tensor | np.ndarray,
    schedule: LinearSchedule,
    *,
    n_iters: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_at: Sequence[int] = (),
    save_every: int = 1000,
    progress: bool = True,
    threads: int | None = 1,
) -> TrainingRun:
    """Train ``model`` in place with Adam on the epsilon-prediction loss.

    Parameters
    ----------
    model
        the denoiser, on the device to train on.
    data
        ``(N, D)`` training points; batches are drawn with replacement.
    schedule
        the noise schedule; ``t`` is drawn uniformly from ``0 .. T-1``.
    n_iters
        total number of optimiser steps (counting those of a resumed run).
    seed
        seed of the local generator behind batches, timesteps and noise.
    checkpoint_dir
        where checkpoints go; a run already there is resumed from its latest checkpoint at or
        before ``n_iters`` (its settings must match). ``None``: no checkpoints, no resume.
    checkpoint_at
        iterations whose checkpoints are kept (``step_XXXXXXX.pt``), e.g. for analysis.
    save_every
        also save a rolling ``resume_XXXXXXX.pt`` this often, so an interruption loses little.
    threads
        CPU threads while training (see :func:`geomlib.runtime.profiles.torch_threads`).
    """
    data = torch.as_tensor(data, dtype=torch.float32)
    if data.ndim != 2 or len(data) == 0:
        raise ValueError(f"data must have shape (N, D) with N > 0, got {tuple(data.shape)}")
    if n_iters < 1 or batch_size < 1 or save_every < 1:
        raise ValueError("n_iters, batch_size and save_every must be positive")
    keep = sorted({int(i) for i in checkpoint_at})
    if keep and not 1 <= keep[0] <= keep[-1] <= n_iters:
        raise ValueError(f"checkpoint_at must lie in [1, n_iters={n_iters}], got {keep}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    settings = {"batch_size": batch_size, "lr": lr, "seed": seed, "data": _data_fingerprint(data)}
    run_id = {"model_config": model.config, "schedule": schedule.config(), "settings": settings}
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, losses = 0, list[float]()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        start, losses = _resume(directory, n_iters, run_id, model, optimizer, generator)
    model.train()
    bar = tqdm(range(start, n_iters), desc="training", initial=start, total=n_iters, disable=not progress)
    with torch_threads(threads):
        for done in (i + 1 for i in bar):
            losses.append(_training_step(model, optimizer, data, schedule, batch_size, generator))
            if directory is not None and (done in keep or done % save_every == 0 or done == n_iters):
                state = {
                    **run_id,
                    "iteration": done,
                    "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "generator_state": generator.get_state(),
                    "losses": losses,
                }
                _save_checkpoint(directory, state, kept=done in keep)
            if done % 100 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
    model.eval()
    kept = {i: p for i, p in _checkpoint_files(directory).items() if i in keep} if directory else {}
    return TrainingRun(np.asarray(losses[:n_iters]), kept, start)


def _save_checkpoint(directory: Path, state: dict, kept: bool) -> None:
    """Kept checkpoints stay; a rolling one replaces the previous rolling one."""
    iteration = state["iteration"]
    name = f"{'step' if kept else 'resume'}_{iteration:07d}.pt"
    save_atomic(state, directory / name)
    for old in directory.glob("resume_*.pt"):
        if old.name != name:
            old.unlink()
