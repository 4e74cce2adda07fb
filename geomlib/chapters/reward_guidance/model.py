"""The reward model: a small time-conditioned CNN from a noisy latent ``(x_t, t)`` to the logits of
ψ's level sets (the classifier of classifier guidance), with its training loop.

The bin edges of the level sets are quantiles of ψ over the training items; they are a buffer of
the network, so they are saved and loaded with its weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from geomlib.chapters.reward_guidance.data import RewardData, add_forward_noise, bin_edges, bin_labels
from geomlib.runtime.cache import save_atomic
from geomlib.runtime.seeding import generator_for, reinitialise


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of integer timesteps ``(B,)`` (as in DDPM's UNet)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class _TimeResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a per-channel shift from the time embedding; residual."""

    def __init__(self, channels: int, time_dim: int):
        super().__init__()
        groups = min(8, channels)
        self.norm1, self.conv1 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.time = nn.Linear(time_dim, channels)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, h, w)``, ``time: (B, time_dim)``."""
        hidden = self.conv1(F.silu(self.norm1(x))) + self.time(time)[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(hidden)))


@dataclass(frozen=True)
class RewardNetConfig:
    """Architecture: ``depth`` stages of a residual block, each but the last followed by a stride-2
    convolution doubling the width; then global average pooling and a linear layer to ``n_bins``."""

    in_channels: int = 4
    width: int = 32
    depth: int = 2
    time_dim: int = 64
    n_bins: int = 5


class RewardNet(nn.Module):
    """``(x_t: (B, 4, h, w), t: (B,) or int) -> (B, n_bins)`` logits of ψ's level sets of the clean sample.

    Parameters
    ----------
    config
        the architecture.
    seed
        seed of the weight initialisation (PyTorch's default scheme, from a local generator).

    Attributes
    ----------
    bin_edges : ``(n_bins - 1,)`` float64 buffer, the level sets' inner edges (from the training data).
    """

    bin_edges: torch.Tensor

    def __init__(self, config: RewardNetConfig = RewardNetConfig(), seed: int = 0):
        super().__init__()
        self.config = config
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, config.time_dim), nn.SiLU())
        self.stem = nn.Conv2d(config.in_channels, config.width, 3, padding=1)
        widths = [config.width * 2**i for i in range(config.depth)]
        self.blocks = nn.ModuleList([_TimeResBlock(w, config.time_dim) for w in widths])
        self.downs = nn.ModuleList([nn.Conv2d(w, 2 * w, 3, stride=2, padding=1) for w in widths[:-1]])
        self.head = nn.Sequential(nn.GroupNorm(min(8, widths[-1]), widths[-1]), nn.SiLU())
        self.out = nn.Linear(widths[-1], config.n_bins)
        self.register_buffer("bin_edges", torch.zeros(config.n_bins - 1, dtype=torch.float64))
        reinitialise(self, torch.Generator().manual_seed(seed))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Logits ``(B, n_bins)``; ``t`` is one timestep for the batch or one per sample."""
        steps = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        time = self.time_mlp(timestep_embedding(steps, self.config.time_dim).to(self.stem.weight.dtype))
        hidden = self.stem(x.to(self.stem.weight.dtype))  # fp16 latents of SD meet float32 weights
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, time)
            if index < len(self.downs):
                hidden = self.downs[index](hidden)
        return self.out(self.head(hidden).mean(dim=(2, 3)))


@dataclass(frozen=True)
class RewardTrainConfig:
    """Training: AdamW with cosine decay, cross-entropy on level-set labels.

    ``fresh_noise``: each step draws new ``(t, ε)`` for its clean latents (augmentation; the
    stored noisy copies are then used only for validation). Otherwise the stored ``(x_t, t)`` are
    the training inputs.
    """

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    fresh_noise: bool = True
    eval_every: int = 100
    checkpoint_every: int = 200
    seed: int = 0


@dataclass
class TrainedReward:
    """A trained reward model and its record.

    Attributes
    ----------
    net : the :class:`RewardNet` (eval mode); ``net.bin_edges`` are the level sets' edges.
    history : one dict per evaluation: ``step``, ``train_loss``, ``val_loss``, ``val_accuracy``.
    n_train : number of training items (the first ``n_train`` of the data).
    """

    net: RewardNet
    history: list[dict]
    n_train: int

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy at the last evaluation (chance: ``1 / n_bins``)."""
        return self.history[-1]["val_accuracy"] if self.history else float("nan")


@torch.no_grad()
def evaluate_reward(
    net: RewardNet, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> tuple[float, float, torch.Tensor]:
    """``(mean cross-entropy, accuracy, (N,) predicted bins)`` on fixed noisy latents."""
    device = next(net.parameters()).device
    logits = torch.cat(
        [
            net(noisy[s : s + batch_size].to(device), timesteps[s : s + batch_size].to(device)).cpu()
            for s in range(0, len(noisy), batch_size)
        ]
    )
    predicted = logits.argmax(1)
    return float(F.cross_entropy(logits, labels)), float((predicted == labels).float().mean()), predicted


def _training_batch(
    data: RewardData, labels: torch.Tensor, alphas_cumprod: torch.Tensor, config: RewardTrainConfig, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = generator_for(config.seed, 9, step)
    rows = torch.randint(0, len(data), (config.batch_size,), generator=generator)
    if not config.fresh_noise:
        return data.noisy[rows], data.timesteps[rows], labels[rows]
    steps = torch.randint(0, len(alphas_cumprod), (config.batch_size,), generator=generator)
    noise = torch.randn(data.clean[rows].shape, generator=generator)
    return add_forward_noise(data.clean[rows], steps, noise, alphas_cumprod), steps, labels[rows]


def _train_step(
    net: RewardNet, optimiser: torch.optim.Optimizer, batch: tuple, learning_rate: float
) -> float:
    """One AdamW step of cross-entropy on ``batch = (x_t, t, labels)``; returns the loss."""
    device = next(net.parameters()).device
    x, t, y = (tensor.to(device) for tensor in batch)
    for group in optimiser.param_groups:
        group["lr"] = learning_rate
    loss = F.cross_entropy(net(x, t), y)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss.item()


def train_reward_model(
    train: RewardData,
    val: RewardData,
    alphas_cumprod: torch.Tensor,
    *,
    net_config: RewardNetConfig = RewardNetConfig(),
    config: RewardTrainConfig = RewardTrainConfig(),
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainedReward:
    """Train a :class:`RewardNet` on ``train``; validation accuracy on ``val``'s stored noisy latents.

    The bin edges are the quantiles of ``train.psi`` (equally populated level sets); ``val`` is
    labelled with the same edges. With ``checkpoint``, the state is saved every
    ``config.checkpoint_every`` steps and at the end, and a rerun resumes from it (a finished
    checkpoint is loaded without training); one written with other settings raises ``ValueError``.
    """
    edges = bin_edges(train.psi.numpy(), net_config.n_bins)
    train_labels = torch.from_numpy(bin_labels(train.psi.numpy(), edges))
    val_labels = torch.from_numpy(bin_labels(val.psi.numpy(), edges))
    net = RewardNet(net_config, seed=config.seed)
    net.bin_edges.copy_(torch.from_numpy(edges))
    net.to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    identity = {
        "net": asdict(net_config),
        "train": asdict(config),
        "n_train": len(train),
        "edges": edges.tolist(),
    }
    start, history = _resume(checkpoint, identity, net, optimiser)
    losses: list[float] = []
    net.train()
    bar = tqdm(range(start, config.steps), desc=f"reward model (N={len(train)})", initial=start,
               total=config.steps, disable=not progress)  # fmt: skip
    for step in bar:
        x, t, y = _training_batch(train, train_labels, alphas_cumprod, config, step)
        # cosine decay to 10 % of config.lr
        learning_rate = config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / config.steps)))
        losses.append(_train_step(net, optimiser, (x, t, y), learning_rate))
        done = step + 1 == config.steps
        if (step + 1) % config.eval_every == 0 or done:
            val_loss, val_accuracy, _ = evaluate_reward(net.eval(), val.noisy, val.timesteps, val_labels)
            net.train()
            history.append(dict(step=step + 1, train_loss=float(np.mean(losses)), val_loss=val_loss,
                                val_accuracy=val_accuracy))  # fmt: skip
            losses = []
        if checkpoint is not None and ((step + 1) % config.checkpoint_every == 0 or done):
            state = dict(identity=identity, state=net.state_dict(), optimiser=optimiser.state_dict(),
                         step=step + 1, history=history)  # fmt: skip
            save_atomic(state, Path(checkpoint))
    return TrainedReward(net=net.eval(), history=history, n_train=len(train))


def _resume(checkpoint, identity: dict, net: RewardNet, optimiser) -> tuple[int, list[dict]]:
    if checkpoint is None or not Path(checkpoint).exists():
        return 0, []
    state = torch.load(checkpoint, weights_only=True)
    if state["identity"] != identity:
        raise ValueError(
            f"{checkpoint} was trained with other settings or data: use another path or delete it"
        )
    net.load_state_dict(state["state"])
    optimiser.load_state_dict(state["optimiser"])
    return state["step"], state["history"]


def load_reward_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedReward:
    """A reward model saved by :func:`train_reward_model` (weights, bin edges and history)."""
    state = torch.load(checkpoint, weights_only=True)
    net = RewardNet(RewardNetConfig(**state["identity"]["net"]))
    net.load_state_dict(state["state"])
    return TrainedReward(
        net=net.to(device).eval(), history=state["history"], n_train=state["identity"]["n_train"]
    )


@torch.no_grad()
def accuracy_by_timestep(
    net: RewardNet, data: RewardData, n_groups: int = 5, num_train_timesteps: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on ``data``'s stored noisy latents in ``n_groups`` equal ranges of ``t``:
    ``((n_groups,) range centres, (n_groups,) accuracy)`` (NaN for an empty range)."""
    labels = torch.from_numpy(bin_labels(data.psi.numpy(), net.bin_edges.cpu().numpy()))
    _, _, predicted = evaluate_reward(net, data.noisy, data.timesteps, labels)
    bounds = np.linspace(0, num_train_timesteps, n_groups + 1)
    group = np.clip(np.digitize(data.timesteps.numpy(), bounds) - 1, 0, n_groups - 1)
    correct = (predicted == labels).numpy()
    accuracy = np.array(
        [correct[group == g].mean() if (group == g).any() else np.nan for g in range(n_groups)]
    )
    return (bounds[:-1] + bounds[1:]) / 2, accuracy
