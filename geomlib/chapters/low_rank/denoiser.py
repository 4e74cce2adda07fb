"""The small learned denoisers of chapter 07: posterior-mean predictors of two architectures (an MLP
and a residual network) trained on samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from geomlib.chapters.low_rank.molrg import MoLRG, add_noise
from geomlib.runtime.profiles import torch_threads
from geomlib.runtime.seeding import reinitialise, seed_from, seeded_global_rng


class Denoiser(nn.Module):
    """What every denoiser ``(x_t, t) -> x0_hat`` of this chapter shares: the input scaled to unit
    variance, ``x_t / sqrt(abar_t v + 1 - abar_t)`` with ``v`` the data's per-coordinate second
    moment, the output scaled by ``sqrt(v)`` (EDM's ``c_in``/``c_out``, without a skip connection,
    so the Jacobian is the network's own), and time features ``[sin, cos](2^j pi t / T)`` and
    ``log SNR / 10``. Subclasses build their layers in :meth:`build` and map
    ``(scaled x_t, time features)`` to the unscaled output in :meth:`body`.

    Parameters
    ----------
    dim
        data dimension ``d``.
    alpha_bar
        ``(T,)`` the noise schedule (:func:`geomlib.core.diffusion.linear_alpha_bar`).
    data_second_moment
        ``v = E ||x_0||^2 / d``.
    hidden, depth
        width and number of hidden layers or blocks.
    n_frequencies
        sinusoidal time features, ``2 * n_frequencies`` of them.
    """

    alpha_bar: torch.Tensor
    frequencies: torch.Tensor

    def __init__(
        self,
        dim: int,
        alpha_bar: torch.Tensor,
        data_second_moment: float = 1.0,
        hidden: int = 128,
        depth: int = 3,
        n_frequencies: int = 4,
    ) -> None:
        super().__init__()
        if min(dim, hidden, depth, n_frequencies) < 1 or data_second_moment <= 0:
            raise ValueError("dim, hidden, depth, n_frequencies and data_second_moment must be positive")
        self.register_buffer("alpha_bar", alpha_bar.detach().float().clone())
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))
        self.data_second_moment = float(data_second_moment)
        self.n_time = 2 * n_frequencies + 1
        self.build(dim, hidden, depth)

    def build(self, dim: int, hidden: int, depth: int) -> None:
        """Create the layers (``self.n_time`` time features join the inputs)."""
        raise NotImplementedError

    def body(self, scaled: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """``(B, d), (B, n_time) -> (B, d)``: the network between the two scalings."""
        raise NotImplementedError

    def time_features(self, t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """``(batch, 2 n_frequencies + 1)`` features of the integer timesteps ``t`` (scalar or ``(B,)``)."""
        abar = self.alpha_bar[t].reshape(-1, 1).to(dtype)
        phase = (t.to(dtype) / len(self.alpha_bar)).reshape(-1, 1) * self.frequencies.to(dtype)
        log_snr = torch.log(abar / (1 - abar)) / 10
        return torch.cat([torch.sin(phase), torch.cos(phase), log_snr], dim=-1).expand(batch, -1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x_t: (B, d)``, ``t``: int or ``(B,)`` integer timesteps -> ``x0_hat: (B, d)``."""
        t = torch.as_tensor(t, device=x_t.device).long()
        abar = self.alpha_bar[t].reshape(-1, 1).to(x_t.dtype)
        time = self.time_features(t, x_t.shape[0], x_t.dtype)
        scaled = x_t / torch.sqrt(abar * self.data_second_moment + 1 - abar)
        return self.body(scaled, time) * math.sqrt(self.data_second_moment)


class MLPDenoiser(Denoiser):
    """An MLP: ``depth`` SiLU layers of width ``hidden``, the time features entering every layer.
    The learned PMP of a low-dimensional data set; parameters and scalings are :class:`Denoiser`'s."""

    def build(self, dim: int, hidden: int, depth: int) -> None:
        self.first = nn.Linear(dim + self.n_time, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden + self.n_time, hidden) for _ in range(depth - 1)])
        self.last = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def body(self, scaled: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.act(self.first(torch.cat([scaled, time], dim=-1)))
        for layer in self.hidden:
            h = self.act(layer(torch.cat([h, time], dim=-1)))
        return self.last(h)


class ResidualDenoiser(Denoiser):
    """A residual network: a second architecture for the same PMP.

    It differs from :class:`MLPDenoiser` where architectures usually differ: an embedding of
    width ``hidden``, ``depth`` pre-norm residual blocks ``h + W2 GELU(W1 [LayerNorm(h), time])``
    (both of width ``hidden``), a final LayerNorm, GELU instead of SiLU. Parameters, scalings and
    time features are :class:`Denoiser`'s (the data's scale is part of the data, not of the
    architecture).
    """

    def build(self, dim: int, hidden: int, depth: int) -> None:
        self.embed = nn.Linear(dim + self.n_time, hidden)
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(depth)])
        self.w1 = nn.ModuleList([nn.Linear(hidden + self.n_time, hidden) for _ in range(depth)])
        self.w2 = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(hidden)
        self.last = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def body(self, scaled: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.embed(torch.cat([scaled, time], dim=-1))
        for norm, w1, w2 in zip(self.norms, self.w1, self.w2, strict=True):
            h = h + w2(self.act(w1(torch.cat([norm(h), time], dim=-1))))
        return self.last(self.final_norm(h))


ARCHITECTURES: dict[str, type[Denoiser]] = {"mlp": MLPDenoiser, "residual": ResidualDenoiser}
"""The denoiser architectures :func:`train_denoiser` builds, by name."""


def train_denoiser(
    x0_train: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    hidden: int = 128,
    depth: int = 3,
    lr: float = 2e-3,
    snr_cap: float = 20.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_threads: int | None = 1,
    architecture: str = "mlp",
    progress: bool = True,
) -> Denoiser:
    """Train a denoiser of ``architecture`` (a key of :data:`ARCHITECTURES`) to predict ``x_0`` from
    ``x_t`` on the ``N`` samples ``x0_train``.

    Each step draws ``batch_size`` training samples (with replacement), timesteps uniform in
    ``[0, T)`` and fresh noise, and takes an Adam step (cosine-decayed learning rate) on
    ``(1 + min(SNR_t, snr_cap)) ||x0_hat - x0||^2``: the weight stresses small noise, where the
    predictor must project exactly onto the data. With few samples the minimiser is the posterior
    mean of the *empirical* distribution, which recalls training points (memorisation); with many
    it approaches the population's.

    Parameters
    ----------
    x0_train
        ``(N, d)`` training samples.
    alpha_bar
        ``(T,)`` the noise schedule (:func:`geomlib.core.diffusion.linear_alpha_bar`).
    steps
        optimiser steps.
    seed
        seeds the initialisation, batches, timesteps and noise (a local generator).
    num_threads
        PyTorch CPU threads while training (see :func:`geomlib.runtime.profiles.torch_threads`).
    architecture
        ``"mlp"`` (:class:`MLPDenoiser`) or ``"residual"`` (:class:`ResidualDenoiser`), both built
        with ``hidden`` and ``depth``.

    Returns
    -------
    the trained denoiser, in eval mode, on ``device``.
    """
    if x0_train.ndim != 2 or len(x0_train) == 0:
        raise ValueError(f"x0_train must be (N, d) with N >= 1, got {tuple(x0_train.shape)}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    if steps < 1 or batch_size < 1 or snr_cap < 0:
        raise ValueError(
            f"steps, batch_size must be positive and snr_cap >= 0, got {steps}, {batch_size}, {snr_cap}"
        )
    generator = torch.Generator().manual_seed(seed)
    data, abar = x0_train.float(), alpha_bar.float()
    second_moment = float(data.pow(2).mean())
    with seeded_global_rng(seed):  # nn.Linear draws a throw-away init from the global RNG
        model = ARCHITECTURES[architecture](data.shape[1], abar, second_moment, hidden, depth)
    model = reinitialise(model, generator).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    with torch_threads(num_threads):
        for _ in tqdm(
            range(steps), desc=f"{architecture} denoiser N={len(data)}", disable=not progress, leave=False
        ):
            index = torch.randint(len(data), (batch_size,), generator=generator)
            t = torch.randint(len(abar), (batch_size,), generator=generator)
            x0, abar_t = data[index], abar[t]
            x_t = add_noise(x0, abar_t, generator)
            weight = 1 + torch.clamp(abar_t / (1 - abar_t), max=snr_cap)
            error = (model(x_t.to(device), t.to(device)) - x0.to(device)).pow(2).sum(-1)
            loss = (weight.to(device) * error).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@dataclass(frozen=True)
class TrainedSet:
    """Denoisers of several architectures trained on one training set.

    Attributes
    ----------
    train
        ``(N, d)`` the training samples.
    denoisers
        ``{architecture: denoiser}``.
    """

    train: torch.Tensor
    denoisers: dict[str, Denoiser]


def training_set(model: MoLRG, n_train: int, seed: int) -> torch.Tensor:
    """The training set of size ``n_train`` of a sweep: ``(n_train, d)`` samples of ``model`` drawn from
    seed ``seed + n_train`` (so every sweep with the same ``seed`` trains on the same points)."""
    train, _ = model.sample(int(n_train), torch.Generator().manual_seed(seed + int(n_train)))
    return train


def train_on_sizes(
    model: MoLRG,
    sizes: Sequence[int],
    alpha_bar: torch.Tensor,
    *,
    architectures: Sequence[str] = ("mlp",),
    steps: int,
    seed: int = 0,
    progress: bool = True,
    **train_kwargs,
) -> dict[int, TrainedSet]:
    """For each size ``N``, one denoiser per architecture on :func:`training_set` ``(model, N, seed)``.

    Architecture ``i`` trains with seed ``seed`` for the first and ``seed_from(seed, i)`` for the
    others, so two architectures share the data but neither initial weights nor batches. ``train_kwargs``
    go to :func:`~geomlib.chapters.low_rank.denoiser.train_denoiser`. Returns ``{N: TrainedSet}``.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive training-set sizes, got {sizes}")
    if not architectures or len(set(architectures)) != len(architectures):
        raise ValueError(f"architectures must be distinct names, got {architectures}")
    trained = {}
    for n_train in tqdm([int(n) for n in sizes], desc="training-set sizes", disable=not progress):
        train = training_set(model, n_train, seed)
        trained[n_train] = TrainedSet(
            train=train,
            denoisers={
                name: train_denoiser(
                    train,
                    alpha_bar,
                    steps=steps,
                    seed=seed if index == 0 else seed_from(seed, index),
                    architecture=name,
                    progress=progress,
                    **train_kwargs,
                )
                for index, name in enumerate(architectures)
            },
        )
    return trained
