"""How good are the Jacobian sketches? Exact, projected and randomized spectra side by side.

The book's theory chapter uses this to measure, on a real decoder, what each method of
:func:`geomlib.jacobian_singular_values` returns: the error of the top singular values, how well
the sketched ψ and ν rank latents compared with the exact ones, and what each costs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from torch import nn

from geomlib.core.descriptors import local_rank, local_scaling
from geomlib.core.jacobian import BatchFunction, jacobian_singular_values
from geomlib.runtime.profiles import count
from geomlib.runtime.seeding import seeded_global_rng


@dataclass(frozen=True)
class SketchingBudget:
    """A profile of chapter 00: ``n_latents`` latents of a random VAE decoder (latents
    ``4 x latent_size x latent_size``, decoder ``widths``), sketches of sizes ``ks``, randomized
    SVD with each of ``power_iters``."""

    n_latents: int = field(metadata=count(2))
    ks: tuple[int, ...] = field(metadata=count((8, 120)))  # a dry run keeps the extremes
    power_iters: tuple[int, ...] = field(metadata=count((1,)))
    latent_size: int
    widths: tuple[int, ...]


SKETCHING_BUDGETS: dict[str, SketchingBudget] = {
    "smoke": SketchingBudget(n_latents=3, ks=(4,), power_iters=(1,), latent_size=2, widths=(32, 32)),
    "book": SketchingBudget(
        n_latents=8, ks=(4, 8, 16, 32), power_iters=(0, 1), latent_size=4, widths=(32, 32, 64)
    ),
    "paper": SketchingBudget(
        n_latents=64,
        ks=(8, 16, 32, 64, 120),
        power_iters=(0, 1, 2, 4),
        latent_size=8,
        widths=(32, 32, 64, 64),
    ),
}


def random_vae_decoder(
    latent_size: int, widths: list[int], *, seed: int = 0
) -> tuple[BatchFunction, tuple[int, int, int]]:
    """A Stable-Diffusion-architecture decoder (diffusers ``AutoencoderKL``) with random weights.

    Returns the function ``(B, 4, s, s) -> (B, 3, s * 2^(len(widths)-1), ...)`` and the latent shape.
    Random weights are enough to compare numerical methods on a realistic architecture.
    """
    from diffusers import AutoencoderKL

    # diffusers initialises weights from the global RNG: seed a fork of it, leave the caller's alone
    with seeded_global_rng(seed):
        vae: Any = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * len(widths),
            up_block_types=["UpDecoderBlock2D"] * len(widths),
            block_out_channels=widths,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=min(32, min(widths)),
            sample_size=latent_size * 2 ** (len(widths) - 1),
        )
    return _Decode(vae).eval(), (4, latent_size, latent_size)


class _Decode(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae: Any = vae  # diffusers' AutoencoderKL (its stubs hide decode's return type)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def sketch_accuracy(
    f: BatchFunction,
    z: torch.Tensor,
    ks: list[int],
    power_iters: list[int],
    *,
    top: int = 10,
    seed: int = 0,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """Compare the projected and randomized methods with the exact spectrum at ``z: (B, *in)``.

    For every ``k`` (and every number of power iterations for ``randomized``) it records the
    median relative error of the top ``min(top, k)`` singular values, whether they all lie below
    the exact ones (``below_exact``, which interlacing guarantees for ``projected``), the Spearman correlation
    across latents of the method's ψ and ν with the exact ones, and the wall time.

    Returns
    -------
    ``(table, exact_sigma)``: one row per (method, k, power_iters); ``exact_sigma: (B, m)``.
    """
    exact, exact_seconds = _timed(lambda: jacobian_singular_values(f, z, method="exact"))
    exact_psi, exact_nu = local_scaling(exact).numpy(), local_rank(exact).numpy()
    rows = [_row("exact", exact.shape[1], 0, exact, exact, exact_psi, exact_nu, exact_seconds, top)]
    for k in ks:
        sigma, seconds = _timed(
            lambda k=k: jacobian_singular_values(f, z, method="projected", k=k, seed=seed)
        )
        rows.append(_row("projected", k, 0, sigma, exact, exact_psi, exact_nu, seconds, top))
        for q in power_iters:
            sigma, seconds = _timed(
                lambda k=k, q=q: jacobian_singular_values(
                    f, z, method="randomized", k=k, power_iters=q, seed=seed
                )
            )
            rows.append(_row("randomized", k, q, sigma, exact, exact_psi, exact_nu, seconds, top))
    return pd.DataFrame(rows), exact


def _row(method, k, q, sigma, exact, exact_psi, exact_nu, seconds, top) -> dict:
    n = min(top, sigma.shape[1])
    relative = ((sigma[:, :n] - exact[:, :n]).abs() / exact[:, :n]).numpy()
    psi, nu = local_scaling(sigma).numpy(), local_rank(sigma).numpy()
    return dict(
        method=method,
        k=k,
        power_iters=q,
        # Cauchy interlacing: sigma_i(W J) <= sigma_i(J) for W with orthonormal rows
        below_exact=bool((sigma[:, :n] <= exact[:, :n] * (1 + 1e-4)).all()),
        top_sigma_rel_error=float(np.median(relative)),
        psi_spearman=_spearman(psi, exact_psi),
        nu_spearman=_spearman(nu, exact_nu),
        seconds=seconds,
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def spectra(
    f: BatchFunction,
    z: torch.Tensor,
    k: int,
    power_iters: int = 1,
    *,
    seed: int = 0,
    exact: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Exact, projected and randomized singular values of one latent ``z: (1, *in)``, as arrays.

    ``exact: (1, m)`` reuses an exact spectrum computed before.
    """
    if exact is None:
        exact = jacobian_singular_values(f, z, method="exact")
    return {
        "exact": exact[0].cpu().numpy(),
        f"projected k={k}": jacobian_singular_values(f, z, method="projected", k=k, seed=seed)[0].numpy(),
        f"randomized k={k}, q={power_iters}": jacobian_singular_values(
            f, z, method="randomized", k=k, power_iters=power_iters, seed=seed
        )[0].numpy(),
    }


def plot_spectra(values: dict[str, np.ndarray], ax: plt.Axes | None = None) -> plt.Axes:
    """Singular values against their index on a log scale, one line per method."""
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    styles: dict[str, dict[str, Any]] = {
        "exact": dict(color="black", lw=2),
        "projected": dict(marker="o", ms=3),
        "randomized": dict(marker="x"),
    }
    for name, sigma in values.items():
        ax.semilogy(np.arange(1, len(sigma) + 1), sigma, label=name, **styles[name.split()[0]])
    ax.set_xlabel("index $i$")
    ax.set_ylabel(r"singular value $s_i$")
    ax.legend(fontsize=8)
    return ax


def plot_accuracy(table: pd.DataFrame) -> Figure:
    """Three panels against k: top-singular-value error, and rank agreement of ψ and of ν."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    sketches = table[table.method != "exact"]
    for (method, q), group in sketches.groupby(["method", "power_iters"]):
        label = method if method == "projected" else f"randomized, q={q}"
        style = dict(marker="o") if method == "projected" else dict(marker="x", linestyle="--")
        axes[0].semilogy(group.k, group.top_sigma_rel_error, label=label, **style)
        axes[1].plot(group.k, group.psi_spearman, label=label, **style)
        axes[2].plot(group.k, group.nu_spearman, label=label, **style)
    titles = [
        "median rel. error of top singular values",
        r"Spearman with exact $\psi$",
        r"Spearman with exact $\nu$",
    ]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sketch size $k$")
        ax.set_title(title, fontsize=10)
    axes[1].set_ylim(-1.05, 1.05)
    axes[2].set_ylim(-1.05, 1.05)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
