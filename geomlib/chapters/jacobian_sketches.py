"""The map of spectrum methods: what each one returns, how far from the truth, at what cost.

The book's theory chapter runs every method of :func:`geomlib.jacobian_singular_values` and
:func:`geomlib.describe` on the offline mini model's decoder (latents ``4 x 8 x 8``, images
``3 x 32 x 32``: ``J`` is ``3072 x 256``), where the exact spectrum is cheap and is the truth. For
each latent and method it records the products spent (JVPs + VJPs), the seconds, ψ and ν, and the
top singular values; :func:`frontier` turns that into errors against exact and into how well each
method ranks latents the way the exact spectrum does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from geomlib.core.descriptors import local_rank, local_scaling
from geomlib.core.jacobian import BatchFunction, randomized_svd
from geomlib.core.lanczos import lanczos_svd
from geomlib.core.slq import spectral_sums
from geomlib.core.spectrum import jacobian_singular_values
from geomlib.runtime.profiles import count
from geomlib.runtime.seeding import seeded_global_rng

#: How many top singular values the top-value error is taken over.
TOP = 8


@dataclass(frozen=True)
class SketchingBudget:
    """A profile of chapter 00: ``n_latents`` latents; the paper's sketch with each of ``ks`` rows;
    randomized SVD (two power iterations) and Lanczos for each of ``top_ks`` values; SLQ at each
    of ``slq_accuracies``."""

    n_latents: int = field(metadata=count(2))
    ks: tuple[int, ...] = field(metadata=count((8, 120)))  # a dry run keeps the extremes
    top_ks: tuple[int, ...] = field(metadata=count((8,)))
    slq_accuracies: tuple[float, ...] = field(metadata=count((5e-2,)))


SKETCHING_BUDGETS: dict[str, SketchingBudget] = {
    "smoke": SketchingBudget(n_latents=3, ks=(8, 32), top_ks=(8,), slq_accuracies=(1e-1,)),
    "book": SketchingBudget(
        n_latents=6, ks=(8, 16, 32, 64, 120, 256), top_ks=(8, 32), slq_accuracies=(5e-2, 2e-2)
    ),
    "paper": SketchingBudget(
        n_latents=64,
        ks=(8, 16, 32, 64, 120, 256),
        top_ks=(8, 32, 64),
        slq_accuracies=(5e-2, 2e-2, 1e-2),
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


@dataclass(frozen=True)
class Estimate:
    """One method's answer for one latent: ψ, ν (with standard errors where estimated), its
    singular values (``None`` for SLQ beyond the deflated ones), products and seconds."""

    psi: float
    nu: float
    sigma: np.ndarray
    products: int
    seconds: float
    psi_stderr: float | None = None
    nu_stderr: float | None = None


def _timed(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def _from_values(values: torch.Tensor, products: int, seconds: float) -> Estimate:
    return Estimate(
        psi=float(local_scaling(values)),
        nu=float(local_rank(values)),
        sigma=values[0].double().cpu().numpy(),
        products=products,
        seconds=seconds,
    )


def estimates(
    f: BatchFunction, z: torch.Tensor, budget: SketchingBudget, *, seed: int = 0
) -> dict[str, Estimate]:
    """Every method of the budget on one latent ``z: (1, *in_shape)``, keyed by a label such as
    ``"projected k=120"``; ``"exact"`` first."""
    in_dim = z[0].numel()
    out: dict[str, Estimate] = {}
    values, seconds = _timed(lambda: jacobian_singular_values(f, z, method="exact"))
    out["exact"] = _from_values(values, in_dim, seconds)
    for k in budget.ks:
        values, seconds = _timed(partial(jacobian_singular_values, f, z, method="projected", k=k, seed=seed))
        out[f"projected k={k}"] = _from_values(values, k, seconds)
    for k in budget.top_ks:
        svd, seconds = _timed(partial(randomized_svd, f, z, k, power_iters=2, seed=seed))
        width = min(k + 10, in_dim)
        out[f"randomized k={k}"] = _from_values(svd.S, 6 * width, seconds)
        result, seconds = _timed(partial(lanczos_svd, f, z, k, seed=seed))
        out[f"lanczos k={k}"] = _from_values(result.S, result.products, seconds)
    for accuracy in budget.slq_accuracies:
        sums, seconds = _timed(partial(spectral_sums, f, z, accuracy=accuracy, seed=seed))
        out[f"slq accuracy={accuracy:g}"] = Estimate(
            psi=float(sums.local_scaling),
            nu=float(sums.local_rank),
            sigma=sums.top_singular_values[0].double().cpu().numpy(),
            products=sums.products,
            seconds=seconds,
            psi_stderr=float(sums.local_scaling_stderr),
            nu_stderr=float(sums.local_rank_stderr),
        )
    return out


def method_table(
    f: BatchFunction, latents: torch.Tensor, budget: SketchingBudget, *, seed: int = 0, progress: bool = True
) -> tuple[pd.DataFrame, list[dict[str, Estimate]]]:
    """:func:`estimates` for each latent of ``latents: (N, *in_shape)``, one per call.

    Returns one row per (latent, method) with the errors against that latent's exact spectrum:
    ``psi_error`` relative to ``sum |log s_i|`` (ψ can be near 0), ``nu_error`` relative to ν,
    ``top_error`` the median relative error of the top :data:`TOP` values, ``below_exact``
    whether those lie at or below the exact ones; and the per-latent estimates themselves.
    """
    rows, per_latent = [], []
    for index in tqdm(range(len(latents)), desc="latents", disable=not progress):
        found = estimates(f, latents[index : index + 1], budget, seed=seed)
        per_latent.append(found)
        exact = found["exact"]
        magnitude = float(np.abs(np.log(exact.sigma)).sum())
        for label, estimate in found.items():
            n = min(TOP, len(estimate.sigma))
            relative = np.abs(estimate.sigma[:n] - exact.sigma[:n]) / exact.sigma[:n]
            rows.append(
                dict(
                    latent=index,
                    method=label.split()[0],
                    setting=label,
                    products=estimate.products,
                    seconds=estimate.seconds,
                    psi=estimate.psi,
                    nu=estimate.nu,
                    psi_stderr=estimate.psi_stderr,
                    psi_error=abs(estimate.psi - exact.psi) / magnitude,
                    nu_error=abs(estimate.nu - exact.nu) / exact.nu,
                    top_error=float(np.median(relative)) if n else np.nan,
                    below_exact=bool((estimate.sigma[:n] <= exact.sigma[:n] * (1 + 1e-4)).all()),
                )
            )
    return pd.DataFrame(rows), per_latent


def frontier(table: pd.DataFrame) -> pd.DataFrame:
    """Per method setting: median products, seconds and errors over latents, and the Spearman
    correlation across latents of its ψ and ν with the exact ones (does it rank latents alike)."""
    exact = table[table.setting == "exact"].set_index("latent")
    rows = []
    for setting, group in table.groupby("setting", sort=False):
        group = group.set_index("latent")
        rows.append(
            dict(
                setting=setting,
                method=group.method.iloc[0],
                products=float(group.products.median()),
                seconds=float(group.seconds.median()),
                psi_error=float(group.psi_error.median()),
                nu_error=float(group.nu_error.median()),
                top_error=float(group.top_error.median()),
                psi_spearman=_spearman(group.psi, exact.psi),
                nu_spearman=_spearman(group.nu, exact.nu),
            )
        )
    return pd.DataFrame(rows)


def _spearman(a: pd.Series, b: pd.Series) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b.loc[a.index]).statistic)


STYLES: dict[str, dict[str, Any]] = {
    "exact": dict(color="black", marker="*", ms=12, linestyle="none"),
    "projected": dict(color="tab:blue", marker="o"),
    "randomized": dict(color="tab:orange", marker="x", linestyle="--"),
    "lanczos": dict(color="tab:green", marker="s"),
    "slq": dict(color="tab:red", marker="D"),
}


def plot_frontier(summary: pd.DataFrame) -> Figure:
    """Error against products per latent, one line per method, for ψ, ν and the top values.

    Errors of exactly 0 (exact against itself) are drawn at the panel's floor.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("psi_error", r"$|\Delta\psi|\;/\;\sum_i|\log s_i|$"),
        ("nu_error", r"$|\Delta\nu|\;/\;\nu$"),
        ("top_error", f"median rel. error, top {TOP} values"),
    ]
    for ax, (column, title) in zip(axes, panels, strict=True):
        floor = 1e-8
        for method, group in summary.groupby("method", sort=False):
            ax.loglog(group.products, group[column].clip(lower=floor), label=method, **STYLES[method])
        ax.set_xlabel("JVPs + VJPs per latent")
        ax.set_title(title, fontsize=10)
        ax.axhline(1e-2, color="grey", lw=0.6, ls=":")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_spectra(found: dict[str, Estimate], labels: list[str], ax: plt.Axes | None = None) -> plt.Axes:
    """Singular values against their index on a log scale: exact and the chosen ``labels``."""
    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for label in ["exact", *labels]:
        sigma = found[label].sigma
        style = dict(STYLES[label.split()[0]])
        style.pop("linestyle", None)
        style.update(ms=3, lw=2 if label == "exact" else 1)
        ax.semilogy(np.arange(1, len(sigma) + 1), sigma, label=label, **style)
    ax.set_xlabel("index $i$")
    ax.set_ylabel(r"singular value $s_i$")
    ax.legend(fontsize=8)
    return ax


def plot_psi_against_exact(table: pd.DataFrame, settings: list[str]) -> Figure:
    """Each method's ψ against the exact ψ, one point per latent (SLQ with ±2 standard errors)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    exact = table[table.setting == "exact"].set_index("latent").psi
    for setting in settings:
        group = table[table.setting == setting].set_index("latent")
        style = dict(STYLES[group.method.iloc[0]], linestyle="none")
        errors = 2 * group.psi_stderr.astype(float) if group.psi_stderr.notna().all() else None
        ax.errorbar(exact.loc[group.index], group.psi, yerr=errors, label=setting, ms=4, **style)
    low, high = exact.min(), exact.max()
    ax.plot([low, high], [low, high], color="black", lw=0.8, label="ψ = exact ψ")
    ax.set_xlabel(r"exact $\psi$")
    ax.set_ylabel(r"method's $\psi$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
