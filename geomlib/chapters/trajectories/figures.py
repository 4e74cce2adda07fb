"""The figures of chapter 05: Fig. 6's mean curves, the per-step AUC, a step slider for the static
page and live controls that generate new trajectories on demand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from geomlib.chapters.trajectories.store import TrajectoryStore, decoded_steps, trajectory_descriptors
from geomlib.core.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_SYMBOLS
from geomlib.runtime.plotting import DESCRIPTOR_LABELS, plot_band, slider_animation


def plot_mean_curves(
    curves: pd.DataFrame,
    by: str,
    *,
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    labels: dict | None = None,
    palette: str = "viridis",
    title: str | None = None,
):
    """Fig. 6: one panel per descriptor, the mean curve over steps per value of ``by`` with its
    confidence band (from :func:`mean_curves`). ``labels`` renames the groups in the legend."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(curves[by]))
    colours = plt.get_cmap(palette)(np.linspace(0.1, 0.85, len(groups)))
    present = [d for d in descriptors if d in set(curves["descriptor"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.8 * len(present), 3.1), squeeze=False)
    for ax, name in zip(axes[0], present, strict=True):
        for group, colour in zip(groups, colours, strict=True):
            part = curves[(curves[by] == group) & (curves["descriptor"] == name)].sort_values("step")
            plot_band(
                ax,
                part["step"].to_numpy(),
                part["mean"].to_numpy(),
                part["low"].to_numpy(),
                part["high"].to_numpy(),
                label=str((labels or {}).get(group, group)),
                color=colour,
            )
        ax.set_xlabel("denoising step")
        ax.set_ylabel(DESCRIPTOR_LABELS.get(name, name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, -1].legend(fontsize=8, title=by.replace("_", " "), title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_step_auc(auc_per_step: np.ndarray, descriptor: str = "local_scaling"):
    """The AUC of memorised vs normal from the descriptor at each step (0.5: no separation)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    steps = np.arange(1, len(auc_per_step) + 1)
    ax.plot(steps, auc_per_step, marker="o", ms=3)
    ax.axhline(0.5, color="black", lw=0.7, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("denoising step")
    ax.set_ylabel(f"AUC from {DESCRIPTOR_LABELS.get(descriptor, descriptor)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


@dataclass
class TrajectoryView:
    """One trajectory shown by :func:`trajectory_slider`: its images per step and its table rows."""

    label: str
    images: dict[str, np.ndarray]  # {"latent": (T, H, W, 3), "predicted_x0": (T, H, W, 3)}
    rows: pd.DataFrame  # one row per step, sorted


def trajectory_view(
    pipe,
    store: TrajectoryStore,
    table: pd.DataFrame,
    prompt: str,
    seed: int,
    scale: float,
    label: str | None = None,
) -> TrajectoryView:
    """The images and descriptor rows of one cached trajectory, for :func:`trajectory_slider`."""
    rows = table[(table["prompt"] == prompt) & (table["seed"] == seed) & (table["guidance_scale"] == scale)]
    if rows.empty:
        raise ValueError(f"no rows for {(prompt, seed, scale)} in the table")
    return TrajectoryView(
        label or f"{prompt} (w={scale:g})",
        decoded_steps(pipe, store, prompt, seed, scale),
        rows.sort_values("step").reset_index(drop=True),
    )


def _draw_view(axes, view: TrajectoryView, descriptors: Sequence[str]) -> list:
    """Static parts of one row: returns the artists that :func:`_show_step` updates."""
    steps = view.rows["step"].to_numpy()
    images = [
        axes[i].imshow(view.images[k][0], interpolation="nearest")
        for i, k in enumerate(("latent", "predicted_x0"))
    ]
    axes[0].set_title("decoder at $x_t$", fontsize=8)
    axes[1].set_title(r"decoder at $\hat x_0$", fontsize=8)
    axes[0].set_ylabel(view.label if len(view.label) < 40 else view.label[:37] + "...", fontsize=7)
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    markers = []
    for ax, name in zip(axes[2:], descriptors, strict=True):
        ax.plot(steps, view.rows[name], lw=1.2)
        markers.append((ax, name, ax.axvline(steps[0], color="tab:red", lw=1)))
        ax.tick_params(labelsize=7)
    return [images, markers]


def _show_step(view: TrajectoryView, artists: list, frame: int) -> None:
    """Move one row of the figure to step ``frame + 1``."""
    images, markers = artists
    images[0].set_data(view.images["latent"][frame])
    images[1].set_data(view.images["predicted_x0"][frame])
    for ax, name, marker in markers:
        marker.set_xdata([frame + 1, frame + 1])
        ax.set_title(f"{DESCRIPTOR_SYMBOLS.get(name, name)} = {view.rows[name].iloc[frame]:.4g}", fontsize=8)


def _view_figure(views: Sequence[TrajectoryView], descriptors: Sequence[str]):
    import matplotlib.pyplot as plt

    columns = 2 + len(descriptors)
    fig, axes = plt.subplots(
        len(views),
        columns,
        figsize=(2.1 * columns + 1, 2.2 * len(views)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1] + [1.5] * len(descriptors)},
    )
    artists = [_draw_view(row_axes, view, descriptors) for row_axes, view in zip(axes, views, strict=True)]
    return fig, artists


def trajectory_slider(views: Sequence[TrajectoryView], descriptors: Sequence[str] = DESCRIPTOR_NAMES) -> str:
    """A step slider for a static page: per trajectory (one row each) the decoded ``x_t``, the
    decoded predicted ``x0`` and the descriptor curves with the current step marked and its value
    in the panel's title. Returns the ``to_jshtml`` HTML."""
    descriptors = [d for d in descriptors if d in views[0].rows]
    n_steps = len(views[0].rows)
    fig, artists = _view_figure(views, descriptors)
    fig.set_dpi(80)  # every frame is embedded as a PNG: keep the page light
    title = fig.suptitle("", fontsize=9)

    def update(frame: int) -> None:
        for view, row_artists in zip(views, artists, strict=True):
            _show_step(view, row_artists, frame)
        title.set_text(
            f"step {frame + 1} of {n_steps} (timestep {int(views[0].rows['timestep'].iloc[frame])})"
        )

    update(0)
    fig.tight_layout()
    return slider_animation(fig, update, n_steps)


def _explorer_controls(
    prompts: Sequence[str], seed: int, guidance_scale: float, max_scale: float, steps: int
) -> dict:
    import ipywidgets as widgets

    return {
        "prompt": widgets.Combobox(value=prompts[0], options=list(prompts), description="prompt",
                                   ensure_option=False, continuous_update=False, layout={"width": "520px"}),
        "scale": widgets.FloatSlider(value=guidance_scale, min=1.0, max=max_scale, step=0.5,
                                     description="guidance", continuous_update=False),
        "seed": widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed"),
        "step": widgets.IntSlider(value=steps, min=1, max=steps, description="step"),
    }  # fmt: skip


def trajectory_explorer(
    pipe,
    store: TrajectoryStore,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    guidance_scale: float = 7.5,
    max_scale: float = 12.0,
):
    """Live controls (for readers running the notebook): type or pick a prompt, set the guidance
    scale and seed, and step through the trajectory. New (prompt, seed, scale) trajectories are
    generated, described and cached on first use (seconds to minutes), then instant."""
    from geomlib.runtime.widgets import live_controls

    views: dict[tuple, TrajectoryView] = {}
    controls = _explorer_controls(prompts, seed, guidance_scale, max_scale, store.steps)

    def show(prompt: str, scale: float, seed: int, step: int):
        key = (prompt.strip(), int(seed), float(scale))
        if not key[0]:
            return "Type a prompt."
        if key not in views:
            table = trajectory_descriptors(pipe, store, [key[0]], [key[1]], [key[2]], progress=False)
            views[key] = trajectory_view(pipe, store, table, *key, label=key[0])
        descriptors = [d for d in DESCRIPTOR_NAMES if d in views[key].rows]
        fig, artists = _view_figure([views[key]], descriptors)
        _show_step(views[key], artists[0], step - 1)
        fig.tight_layout()
        return fig

    live_controls(show, controls, rows=[("prompt", "seed"), ("scale", "step")])
