"""The chapter's figures: Fig. 4's panels, the forest plot of effects, example grids, a severity
slider for the static page and live controls for readers who run it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from geomlib.chapters.corruptions.corrupt import corrupt_images
from geomlib.core.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_SYMBOLS
from geomlib.runtime.plotting import DESCRIPTOR_LABELS, image_grid, slider_animation
from geomlib.sd.decoder import decode_latents, encode_images

GROUP_COLOURS: dict[str, str] = {
    "noise-like": "tab:red",
    "blur/contrast-like": "tab:blue",
    "other": "tab:gray",
}


def plot_severity_panels(
    table: pd.DataFrame, descriptor: str = "local_scaling", *, col_wrap: int = 4, height: float = 1.9
):
    """Fig. 4: the distribution of ``descriptor`` across severities, one small panel per corruption
    (boxes over images, coloured by group, the clean median as a dashed line). Returns the
    seaborn ``FacetGrid``."""
    import seaborn as sns  # an extra of the notebooks, not of the package

    grid = sns.catplot(
        data=table,
        x="severity",
        y=descriptor,
        col="corruption",
        col_wrap=min(col_wrap, table["corruption"].nunique()),
        kind="box",
        hue="group",
        palette=GROUP_COLOURS,
        height=height,
        aspect=1.1,
        sharey=True,
        fliersize=1.5,
        linewidth=0.7,
        legend_out=True,
    )
    clean_median = table.loc[table["severity"] == 0, descriptor].median()
    for name, ax in grid.axes_dict.items():
        ax.axhline(clean_median, color="black", lw=0.6, ls="--")
        ax.set_title(str(name).replace("_", " "), fontsize=9)
    grid.set_axis_labels("severity", DESCRIPTOR_LABELS.get(descriptor, descriptor))
    return grid


def plot_effects(effects: pd.DataFrame, descriptor_label: str = r"$\Delta\psi$ (severity 0 → 5)"):
    """Forest plot: the change per corruption with its confidence interval, coloured by group."""
    import matplotlib.pyplot as plt

    ordered = effects.sort_values("change").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(ordered) + 1))
    colours = ordered["group"].map(GROUP_COLOURS)
    ax.errorbar(
        ordered["change"],
        ordered.index,
        xerr=[ordered["change"] - ordered["ci_low"], ordered["ci_high"] - ordered["change"]],
        fmt="none",
        ecolor=colours,
        elinewidth=1.2,
    )
    ax.scatter(ordered["change"], ordered.index, c=colours, zorder=3, s=18)
    ax.axvline(0, color="black", lw=0.7)
    ax.set_yticks(ordered.index, [str(c).replace("_", " ") for c in ordered["corruption"]], fontsize=8)
    ax.set_xlabel(descriptor_label)
    for group, colour in GROUP_COLOURS.items():
        ax.scatter([], [], c=colour, label=group, s=18)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def severity_slider(
    examples: np.ndarray,
    table: pd.DataFrame,
    corruptions: Sequence[str],
    severities: Sequence[int],
    image: int = 0,
    descriptor: str = "local_scaling",
) -> str:
    """A severity slider for a static page: one image under every corruption at the current
    severity, each titled with its ``descriptor`` value from ``table``.

    Parameters
    ----------
    examples
        ``(C, S, H, W, 3)`` from :func:`corruption_examples` for image ``image`` of the table.
    """
    import matplotlib.pyplot as plt

    columns = min(8, len(corruptions))
    rows = math.ceil(len(corruptions) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.95 * rows), squeeze=False)
    fig.set_dpi(80)  # every frame is embedded as a PNG: keep the page light
    lookup = table[table["image"] == image].set_index(["corruption", "severity"])[descriptor]
    shown = [
        ax.imshow(examples[i, 0], interpolation="nearest")
        for i, ax in enumerate(axes.flat[: len(corruptions)])
    ]
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(corruptions) :]:
        ax.axis("off")
    title = fig.suptitle("", fontsize=9)

    def update(frame: int) -> None:
        for i, (name, artist) in enumerate(zip(corruptions, shown, strict=False)):
            artist.set_data(examples[i, frame])
            axes.flat[i].set_title(
                f"{name.replace('_', ' ')[:17]}\nψ={lookup[(name, severities[frame])]:.1f}", fontsize=7
            )
        title.set_text(f"severity {severities[frame]}")

    update(0)
    fig.tight_layout()
    return slider_animation(fig, update, len(severities))


def corruption_explorer(
    pipe, images, table: pd.DataFrame, *, seed: int = 0, work_size: int | None = None
) -> None:
    """Live controls (displayed): pick a corruption, a severity and an image; shows the corrupted
    image, its VAE reconstruction (the decoder at its latent) and the descriptors measured there."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from geomlib.runtime.widgets import live_controls

    names = list(table["corruption"].cat.categories)
    severities = sorted(set(table["severity"]))
    controls = {
        "name": widgets.Dropdown(options=names, description="corruption"),
        "severity": widgets.SelectionSlider(options=severities, value=severities[-1], description="severity"),
        "index": widgets.IntSlider(value=0, min=0, max=int(table["image"].max()), description="image"),
    }

    def show(name: str, severity: int, index: int):
        corrupted = corrupt_images(
            np.asarray(images[index : index + 1]),
            name,
            severity,
            seed=seed,
            first_index=index,
            work_size=work_size,
        )
        pixels = torch.from_numpy(corrupted.astype(np.float32) / 255).permute(0, 3, 1, 2)
        reconstruction = decode_latents(pipe, encode_images(pipe, pixels))[0]
        row = table[
            (table["corruption"] == name) & (table["severity"] == severity) & (table["image"] == index)
        ]
        fig, axes = plt.subplots(1, 2, figsize=(4.4, 2.4))
        for ax, picture, label in zip(
            axes, (corrupted[0], reconstruction), ("corrupted", "decoder at its latent"), strict=True
        ):
            ax.imshow(picture)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
        values = ", ".join(
            f"{DESCRIPTOR_SYMBOLS[d]} = {row[d].item():.2f}" for d in DESCRIPTOR_NAMES if d in row
        )
        fig.suptitle(values, fontsize=8)
        fig.tight_layout()
        return fig

    live_controls(show, controls)


def plot_examples(
    examples: np.ndarray, corruptions: Sequence[str], severities: Sequence[int], size: float = 0.8
):
    """One row per severity, one column per corruption, from :func:`corruption_examples`."""
    n_corruptions, n_severities = examples.shape[:2]
    tiles = examples.transpose(1, 0, 2, 3, 4).reshape(-1, *examples.shape[2:]) / 255
    titles = [name.replace("_", "\n") for name in corruptions] + [""] * (n_corruptions * (n_severities - 1))
    fig = image_grid(
        tiles, nrows=n_severities, size=size, titles=titles, row_labels=[str(s) for s in severities]
    )
    fig.supylabel("severity", fontsize=9)
    return fig
