"""Measuring what reward guidance changes: ψ, diversity (Vendi score, :mod:`geomlib.core.diversity`)
and named image statistics, per ψ level set of the unguided samples, with confidence intervals;
and the chapter's figures.

The paper rates aesthetics with RAHF, which is not public; instead of an invented score we report
three standard statistics of each image, each with its definition:

* **sharpness**: variance of the discrete Laplacian of the luminance (a focus measure, Pech-Pacheco
  et al. 2000), luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` in ``[0, 1]``;
* **contrast**: RMS contrast, the standard deviation of ``Y``;
* **colourfulness**: Hasler & Süsstrunk (2003), ``sqrt(σ_rg² + σ_yb²) + 0.3 sqrt(μ_rg² + μ_yb²)``
  with ``rg = R - G``, ``yb = (R + G) / 2 - B`` on the 0..255 scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import ndimage

from geomlib.core.claims import claim_check
from geomlib.core.diversity import vendi_diversity
from geomlib.core.stats import mean_interval
from geomlib.runtime.plotting import image_grid, plot_band

STATISTICS: tuple[str, ...] = ("sharpness", "contrast", "colourfulness")


def luminance(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` Rec. 601 luminance of ``(N, H, W, 3)`` images in ``[0, 1]``."""
    return np.asarray(images, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """``{sharpness, contrast, colourfulness: (N,)}`` of ``(N, H, W, 3)`` images in ``[0, 1]``."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    grey = luminance(images)
    laplacian = np.stack([ndimage.laplace(g, mode="reflect") for g in grey])
    rgb = images * 255.0
    rg = rgb[..., 0] - rgb[..., 1]
    yb = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
    spread = np.sqrt(rg.reshape(len(rg), -1).var(1) + yb.reshape(len(yb), -1).var(1))
    centre = np.sqrt(rg.reshape(len(rg), -1).mean(1) ** 2 + yb.reshape(len(yb), -1).mean(1) ** 2)
    return {
        "sharpness": laplacian.reshape(len(grey), -1).var(1),
        "contrast": grey.reshape(len(grey), -1).std(1),
        "colourfulness": spread + 0.3 * centre,
    }


@dataclass
class SampleSet:
    """Samples with what is measured on them (rows aligned with seeds and prompts).

    Attributes
    ----------
    psi : ``(S,)`` ψ of the decoder at the final latents.
    images : ``(S, H, W, 3)`` in ``[0, 1]``.
    features : ``{name: (S, F)}`` diversity features (e.g. ``pixels``, ``latents``).
    statistics : ``{name: (S,)}`` from :func:`image_statistics`.
    rho : the guidance weight they were sampled with.
    """

    psi: np.ndarray
    images: np.ndarray
    features: dict[str, np.ndarray]
    statistics: dict[str, np.ndarray]
    rho: float


def compare_by_bin(baseline: SampleSet, guided: Sequence[SampleSet], bins: np.ndarray) -> pd.DataFrame:
    """Paired changes (guided minus baseline, same seed and prompt) per baseline ψ level set.

    Returns one row per ``(rho, bin)``, and per ``rho`` a row with ``bin = "all"``: ``n``,
    ``psi_baseline`` (mean), ``dpsi`` with ``dpsi_low``/``dpsi_high`` (95 % CI); per feature set
    ``f`` the Vendi scores ``vendi_<f>_baseline``, ``vendi_<f>_guided`` and ``dvendi_<f>``; and for
    each statistic ``d<name>`` with its CI.
    """
    bins = np.asarray(bins)
    rows = []
    for samples in guided:
        for label in [*np.unique(bins), "all"]:
            mask = np.ones(len(bins), bool) if label == "all" else bins == label
            dpsi = mean_interval(samples.psi[mask] - baseline.psi[mask])
            row = dict(
                rho=samples.rho,
                bin=label if label == "all" else int(label),
                n=int(mask.sum()),
                psi_baseline=float(baseline.psi[mask].mean()),
                dpsi=dpsi["mean"],
                dpsi_low=dpsi["low"],
                dpsi_high=dpsi["high"],
            )
            for name, features in baseline.features.items():
                before, after = vendi_diversity(features[mask]), vendi_diversity(samples.features[name][mask])
                row.update({f"vendi_{name}_baseline": before, f"vendi_{name}_guided": after})
                row[f"dvendi_{name}"] = after - before
            for name in STATISTICS:
                change = mean_interval(samples.statistics[name][mask] - baseline.statistics[name][mask])
                row.update(
                    {
                        f"d{name}": change["mean"],
                        f"d{name}_low": change["low"],
                        f"d{name}_high": change["high"],
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows)


def claim_table(table: pd.DataFrame, smallest_effect: float) -> pd.DataFrame:
    """Per ``(rho, bin)``: Δψ with its CI, the four-way verdict of the claim that Δψ has the sign of
    ``rho`` (:func:`geomlib.core.claims.claim_check`, with ``smallest_effect`` as the effect of
    interest, in ψ's units) and the change its sample detects at 80 % power."""
    out = table[["rho", "bin", "n", "psi_baseline", "dpsi", "dpsi_low", "dpsi_high"]].copy()
    checks = [
        claim_check(
            r.dpsi,
            r.dpsi_low,
            r.dpsi_high,
            None,
            r.n,
            claimed_sign=1 if r.rho > 0 else -1,
            smallest_effect=smallest_effect,
            dof=max(r.n - 1, 1),
        )
        for r in out.itertuples()
    ]
    out["moves as claimed"] = [check.verdict for check in checks]
    out["detectable"] = [check.detectable for check in checks]
    out["checks"] = checks
    return out


# ------------------------------------------------------------------------------------ figures


def plot_bin_effects(table: pd.DataFrame, psi_unit: str = "nats") -> Figure:
    """Fig. 7-like panels over the baseline level sets: Δψ (95 % CI), Δ Vendi per feature set, Δ of
    each statistic (95 % CI)."""
    per_bin = table[table["bin"] != "all"]
    vendis = [c for c in table.columns if c.startswith("dvendi_")]
    names = ["psi", *vendis, *STATISTICS]
    ncols = (len(names) + 1) // 2
    fig, grid = plt.subplots(2, ncols, figsize=(3.4 * ncols, 5.6), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(names) :]:
        ax.axis("off")
    for rho, group in per_bin.groupby("rho"):
        x = group["bin"].astype(int).to_numpy() + 1
        for ax, name in zip(axes, names, strict=False):
            if name.startswith("dvendi_"):
                ax.plot(x, group[name], marker="o", ms=3, label=f"ρ = {rho:+g}")
            else:
                plot_band(
                    ax,
                    x,
                    group[f"d{name}"].to_numpy(),
                    group[f"d{name}_low"].to_numpy(),
                    group[f"d{name}_high"].to_numpy(),
                    label=f"ρ = {rho:+g}",
                )
    titles = [
        f"Δψ ({psi_unit}), 95% CI",
        *[f"Δ Vendi score ({c.removeprefix('dvendi_')} features)" for c in vendis],
        *[f"Δ {n}, 95% CI" for n in STATISTICS],
    ]
    for ax, title in zip(axes, titles, strict=False):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ψ level set of the unguided sample (low → high)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def rho_grid(images: np.ndarray, psi: np.ndarray, rhos: Sequence[float], size: float = 1.3) -> Figure:
    """Fig. 1/8-like grid: row ``s`` is one seed and prompt, column ``r`` is ``rhos[r]`` (ascending).

    ``images``: ``(R, S, H, W, 3)``; ``psi``: ``(R, S)``, printed under each image's ``ρ``.
    """
    n_rho, n_seeds = len(rhos), images.shape[1]
    ordered = np.asarray(images).transpose(1, 0, 2, 3, 4).reshape(n_rho * n_seeds, *images.shape[2:])
    titles = [
        (f"ρ={rhos[r]:+g}\n" if s == 0 else "") + f"ψ={psi[r, s]:.1f}"
        for s in range(n_seeds)
        for r in range(n_rho)
    ]
    return image_grid(ordered, nrows=n_seeds, titles=titles, size=size)


def plot_training(history: list[dict], t_centres: np.ndarray, accuracy_t: np.ndarray, n_bins: int) -> Figure:
    """Reward model training: losses and validation accuracy by step, and accuracy by timestep."""
    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.0))
    axes[0].plot(frame["step"], frame["train_loss"], label="train loss")
    axes[0].plot(frame["step"], frame["val_loss"], label="validation loss")
    axes[0].plot(frame["step"], frame["val_accuracy"], label="validation accuracy")
    axes[0].axhline(1 / n_bins, color="grey", ls=":", label="chance accuracy")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=7)
    axes[1].bar(
        t_centres, accuracy_t, width=0.8 * (t_centres[1] - t_centres[0]) if len(t_centres) > 1 else 100
    )
    axes[1].axhline(1 / n_bins, color="grey", ls=":")
    axes[1].set_xlabel("timestep t of the noisy latent")
    axes[1].set_ylabel("validation accuracy")
    fig.tight_layout()
    return fig


def plot_level_sets(psi: np.ndarray, edges: np.ndarray, examples: np.ndarray, size: float = 1.1) -> Figure:
    """Histogram of ψ with the level sets' edges, and ``examples: (K, m, H, W, 3)`` images per level set."""
    n_bins, per_bin = examples.shape[:2]
    fig = plt.figure(figsize=(max(7.0, size * per_bin * n_bins / 2), 2.6 + size * 2))
    grid = fig.add_gridspec(2, n_bins, height_ratios=[2.2, size * 2])
    hist = fig.add_subplot(grid[0, :])
    hist.hist(psi, bins=40, color="tab:blue", alpha=0.7)
    for edge in edges:
        hist.axvline(edge, color="black", lw=1, ls="--")
    hist.set_xlabel("ψ of the decoder at the clean latent")
    hist.set_title("training distribution of ψ and the level-set edges (quantiles)", fontsize=9)
    for b in range(n_bins):
        ax = fig.add_subplot(grid[1, b])
        ax.imshow(
            np.concatenate([np.concatenate(list(examples[b, i::2]), 1) for i in range(2)], 0)
            if per_bin % 2 == 0
            else np.concatenate(list(examples[b]), 1)
        )
        ax.set_title(f"level set {b}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_n_sweep(frame: pd.DataFrame, n_bins: int = 5) -> Figure:
    """Δψ (95 % CI) against the reward model's training size ``N`` per ``rho``, and the validation
    accuracy with its 95 % interval (``frame`` from :func:`geomlib.chapters.reward_guidance.n_sweep`)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.0))
    for rho, group in frame.groupby("rho"):
        group = group.sort_values("n_train")
        plot_band(
            axes[0],
            group["n_train"].to_numpy(),
            group["dpsi"].to_numpy(),
            group["dpsi_low"].to_numpy(),
            group["dpsi_high"].to_numpy(),
            label=f"ρ = {rho:+g}",
        )
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("reward model training images N")
    axes[0].set_ylabel("Δψ (guided − unguided)")
    axes[0].legend(fontsize=7)
    accuracy = frame.drop_duplicates("n_train").sort_values("n_train")
    p = accuracy["val_accuracy"].to_numpy()
    half = 1.96 * np.sqrt(p * (1 - p) / accuracy["n_val"].to_numpy())  # normal approximation, 95 %
    axes[1].errorbar(accuracy["n_train"], p, yerr=half, marker="o", capsize=3)
    axes[1].axhline(1 / n_bins, color="grey", ls=":", label="chance")
    axes[1].legend(fontsize=7)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("reward model training images N")
    axes[1].set_ylabel("validation accuracy")
    fig.tight_layout()
    return fig
