"""Figures of chapter 2 (the toy DDPM): samples and loss, descriptor maps over the plane across
timesteps, on/off-manifold gap curves across training, and the explorable versions of the maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from geomlib.runtime.plotting import DESCRIPTOR_CMAPS, DESCRIPTOR_LABELS, slider_animation
from geomlib.runtime.widgets import live_controls


def _overlay(ax, data: np.ndarray | None) -> None:
    if data is not None:
        ax.scatter(data[:, 0], data[:, 1], s=3, c="white", edgecolors="black", linewidths=0.25)


def _extent(extent: Sequence[float]) -> tuple[float, float, float, float]:
    xmin, xmax, ymin, ymax = (float(v) for v in extent)
    return xmin, xmax, ymin, ymax


def _robust_limits(values: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile: a few extreme cells at kinks must not wash out the colour scale."""
    low, high = np.nanpercentile(values, [1, 99])
    return (float(low), float(high)) if high > low else (float(low) - 0.5, float(high) + 0.5)


def plot_samples_and_loss(
    samples: np.ndarray, data: np.ndarray, losses: np.ndarray, *, window: int = 100
) -> Figure:
    """Left: ``samples: (n, 2)`` over the training ``data: (M, 2)``. Right: the loss per iteration
    and its running mean over ``window`` iterations."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label=f"{len(samples)} samples")
    left.scatter(data[:, 0], data[:, 1], s=6, c="crimson", label=f"{len(data)} training points")
    left.set_aspect("equal")
    left.legend(loc="lower left", fontsize=8, markerscale=2)
    left.set_title("samples vs data (normalised units)")
    losses = np.asarray(losses)
    right.plot(np.arange(1, len(losses) + 1), losses, lw=0.3, alpha=0.4, color="grey")
    window = max(1, min(window, len(losses)))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    right.plot(np.arange(window, len(losses) + 1), smooth, color="black", label=f"mean of {window}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("iteration")
    right.set_title(r"loss $\|\epsilon - \epsilon_\theta(x_t, t)\|^2$")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_descriptor_maps(
    maps: Mapping[str, np.ndarray],
    timesteps: Sequence[int],
    n_steps: int,
    extent: Sequence[float],
    *,
    data: np.ndarray | None = None,
    panel_size: float = 2.4,
) -> Figure:
    """A grid of heatmaps: one row per descriptor, one column per timestep.

    ``maps[name]: (n_t, H, W)``; every row shares one colour scale so that columns compare.
    """
    names, n_cols = list(maps), len(timesteps)
    fig, axes = plt.subplots(
        len(names),
        n_cols,
        figsize=(panel_size * n_cols + 1, panel_size * len(names)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for row, name in enumerate(names):
        low, high = _robust_limits(maps[name])
        for col, t in enumerate(timesteps):
            ax = axes[row, col]
            image = ax.imshow(
                maps[name][col],
                origin="lower",
                extent=_extent(extent),
                vmin=low,
                vmax=high,
                cmap=DESCRIPTOR_CMAPS.get(name, "viridis"),
            )
            _overlay(ax, data)
            if row == 0:
                ax.set_title(f"t/T = {(t + 1) / n_steps:.2f}", fontsize=9)
        axes[row, 0].set_ylabel(DESCRIPTOR_LABELS.get(name, name), fontsize=9)
        fig.colorbar(image, ax=axes[row, :].tolist(), fraction=0.02, pad=0.01)
    return fig


def plot_gap_curves(
    gaps: Mapping[str, np.ndarray], iterations: Sequence[int], timesteps: Sequence[int], n_steps: int
) -> Figure:
    """``E_M[Φ] - E_off[Φ]`` against ``t / T``, one line per checkpoint; ``gaps[name]: (C, n_t)``."""
    fractions = (np.asarray(timesteps) + 1) / n_steps
    colours = plt.cm.viridis(np.linspace(0.1, 0.9, len(iterations)))
    fig, axes = plt.subplots(1, len(gaps), figsize=(4.2 * len(gaps), 3.6), squeeze=False)
    for ax, (name, gap) in zip(axes[0], gaps.items(), strict=True):
        for colour, iteration, curve in zip(colours, iterations, np.asarray(gap), strict=True):
            ax.plot(fractions, curve, color=colour, marker=".", ms=3, label=f"{iteration} it")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("t / T")
        ax.set_title(DESCRIPTOR_LABELS.get(name, name), fontsize=10)
    axes[0, 0].set_ylabel(r"$E_M[\Phi] - E_{off}[\Phi]$")
    axes[0, -1].legend(fontsize=7, title="training", title_fontsize=7)
    fig.tight_layout()
    return fig


def descriptor_slider(
    maps: Mapping[str, np.ndarray],
    timesteps: Sequence[int],
    n_steps: int,
    extent: Sequence[float],
    *,
    data: np.ndarray | None = None,
    panel_size: float = 3.2,
    max_frames: int = 12,
    dpi: int = 72,
) -> str:
    """HTML with a slider over ``t`` (matplotlib ``to_jshtml``): one panel per descriptor.

    ``maps[name]: (n_t, H, W)``; colour scales are fixed across frames, so changes are visible.
    At most ``max_frames`` evenly spaced timesteps are embedded (each frame is a PNG in the page).
    """
    names = list(maps)
    frames = sorted(
        {int(round(i)) for i in np.linspace(0, len(timesteps) - 1, min(max_frames, len(timesteps)))}
    )
    fig, axes = plt.subplots(
        1, len(names), figsize=(panel_size * len(names), panel_size + 0.4), squeeze=False, dpi=dpi
    )
    images = []
    for ax, name in zip(axes[0], names, strict=True):
        low, high = _robust_limits(maps[name])
        images.append(
            ax.imshow(
                maps[name][0],
                origin="lower",
                extent=_extent(extent),
                vmin=low,
                vmax=high,
                cmap=DESCRIPTOR_CMAPS.get(name, "viridis"),
            )
        )
        fig.colorbar(images[-1], ax=ax, fraction=0.046, pad=0.04)
        _overlay(ax, data)
        ax.set_title(DESCRIPTOR_LABELS.get(name, name), fontsize=10)
    title = fig.suptitle("")
    fig.tight_layout()

    def update(frame: int) -> None:
        index = frames[frame]
        for image, name in zip(images, names, strict=True):
            image.set_data(maps[name][index])
        title.set_text(f"t = {timesteps[index]}  (t/T = {(timesteps[index] + 1) / n_steps:.2f})")

    update(0)
    return slider_animation(fig, update, len(frames))


def descriptor_explorer(
    maps: Mapping[str, np.ndarray],
    iterations: Sequence[int],
    timesteps: Sequence[int],
    n_steps: int,
    extent: Sequence[float],
    *,
    data: np.ndarray | None = None,
) -> None:
    """Live ``ipywidgets`` controls for timestep, descriptor and checkpoint over precomputed maps,
    displayed (they redraw only in a running kernel). ``maps[name]: (C, n_t, H, W)``.
    """
    import ipywidgets as widgets

    def show(t_index: int, name: str, checkpoint: int):
        fig, ax = plt.subplots(figsize=(4.6, 4))
        values = maps[name][checkpoint]
        low, high = _robust_limits(values)
        image = ax.imshow(
            values[t_index],
            origin="lower",
            extent=_extent(extent),
            vmin=low,
            vmax=high,
            cmap=DESCRIPTOR_CMAPS.get(name, "viridis"),
        )
        fig.colorbar(image, ax=ax)
        _overlay(ax, data)
        t = timesteps[t_index]
        ax.set_title(
            f"{DESCRIPTOR_LABELS.get(name, name)}, t/T = {(t + 1) / n_steps:.2f},"
            f" {iterations[checkpoint]} it",
            fontsize=9,
        )
        return fig

    controls = {
        "t_index": widgets.IntSlider(value=0, min=0, max=len(timesteps) - 1, description="t index"),
        "name": widgets.Dropdown(options=[(DESCRIPTOR_LABELS.get(n, n), n) for n in maps], description="Φ"),
        "checkpoint": widgets.Dropdown(
            options=[(f"{it} it", i) for i, it in enumerate(iterations)],
            value=len(iterations) - 1,
            description="checkpoint",
        ),
    }
    live_controls(show, controls)
