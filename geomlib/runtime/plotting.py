"""Figures shared by the notebooks: descriptor heatmaps, image grids and explorable sliders.

Chapter-specific figures live next to the chapter's code; what several chapters draw lives here.
Every function returns the matplotlib object it made, so a notebook can adjust and save it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation
from matplotlib.figure import Figure

#: Colour maps per descriptor, used consistently across the book.
DESCRIPTOR_CMAPS: dict[str, str] = {
    "local_scaling": "viridis",
    "local_rank": "magma",
    "local_complexity": "cividis",
}
DESCRIPTOR_LABELS: dict[str, str] = {
    "local_scaling": r"local scaling $\psi$",
    "local_rank": r"local rank $\nu$",
    "local_complexity": r"local complexity $\delta$",
}


def heatmap_panels(
    values: dict[str, np.ndarray],
    extent: tuple[float, float, float, float],
    *,
    points: np.ndarray | None = None,
    titles: dict[str, str] | None = None,
    cmaps: dict[str, str] | None = None,
    panel_size: float = 3.6,
) -> Figure:
    """One heatmap per entry of ``values``, side by side, each with its own colour bar.

    Parameters
    ----------
    values
        ``{name: (H, W) array}``; row 0 is the bottom of the plot (``origin="lower"``).
    extent
        ``(xmin, xmax, ymin, ymax)`` of the grid in data units.
    points
        optional ``(N, 2)`` points drawn on every panel (e.g. training data, anchors).
    titles, cmaps
        per-name overrides of :data:`DESCRIPTOR_LABELS` and :data:`DESCRIPTOR_CMAPS`.
    """
    titles = {**DESCRIPTOR_LABELS, **(titles or {})}
    cmaps = {**DESCRIPTOR_CMAPS, **(cmaps or {})}
    fig, axes = plt.subplots(1, len(values), figsize=(panel_size * len(values), panel_size), squeeze=False)
    for ax, (name, grid) in zip(axes[0], values.items(), strict=True):
        image = ax.imshow(
            np.asarray(grid), origin="lower", extent=extent, cmap=cmaps.get(name, "viridis"), aspect="auto"
        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if points is not None:
            ax.scatter(points[:, 0], points[:, 1], s=4, c="white", edgecolors="black", linewidths=0.3)
        ax.set_title(titles.get(name, name))
    fig.tight_layout()
    return fig


def wrap_title(title: str, width_inches: float, fontsize: float = 8) -> str:
    """``title`` broken into lines that fit ``width_inches`` at ``fontsize`` points (about 0.6 em
    per character), keeping its own line breaks: long captions over small panels do not overlap."""
    characters = max(8, int(0.9 * width_inches * 72 / (0.6 * fontsize)))  # axes are narrower than the panel
    return "\n".join(textwrap.fill(line, characters) for line in title.split("\n"))


def image_grid(
    images: np.ndarray,
    *,
    nrows: int | None = None,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    size: float = 1.6,
) -> Figure:
    """Show ``images: (N, H, W, 3)`` in ``[0, 1]`` (or ``(N, 3, H, W)``) as a grid without axes."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    count = len(images)
    nrows = nrows or int(np.ceil(np.sqrt(count)))
    ncols = int(np.ceil(count / nrows))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= count:
            ax.axis("off")
            continue
        ax.imshow(np.clip(images[index], 0, 1))
        if titles is not None:
            ax.set_title(wrap_title(titles[index], size), fontsize=8)
    for row, label in enumerate(row_labels or []):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def slider_animation(
    fig: Figure,
    update: Callable[[int], object],
    n_frames: int,
    *,
    interval_ms: int = 400,
) -> str:
    """An explorable figure for a static page: ``to_jshtml`` of ``update(0..n_frames-1)``.

    ``update(i)`` redraws ``fig`` for frame ``i``. Returns the HTML (a slider with play buttons,
    frames embedded as images), which needs no kernel: display it with ``IPython.display.HTML``.
    The figure is closed afterwards so it is not shown twice.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")

    def draw(frame: int) -> None:
        update(frame)

    anim = animation.FuncAnimation(fig, draw, frames=n_frames, interval=interval_ms, blit=False)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return html


def plot_partition(
    ax,
    polygons: Sequence[np.ndarray],
    values: np.ndarray | None = None,
    *,
    cmap: str = "viridis",
    norm=None,
    edgecolor: str = "black",
    linewidth: float = 0.15,
):
    """Draw the convex regions of a 2-D partition (e.g. ``exact_partition(...).polygons``).

    Parameters
    ----------
    ax
        a 2-D matplotlib axes; its limits are set to the polygons' bounding box.
    polygons
        ``R`` arrays of shape ``(n_i, 2)``, the regions' vertices.
    values
        optional ``(R,)`` colour value per region (e.g. ``Partition.psi``); without it the
        regions are drawn unfilled.
    norm
        a ``matplotlib.colors.Normalize`` to share colour limits between panels or frames.

    Returns
    -------
    The ``PolyCollection`` (pass it to ``fig.colorbar``).
    """
    from matplotlib.collections import PolyCollection

    if values is not None and np.shape(values) != (len(polygons),):
        raise ValueError(f"values must have shape ({len(polygons)},), got {np.shape(values)}")
    collection = PolyCollection(
        list(polygons),
        cmap=cmap,
        norm=norm,
        edgecolors=edgecolor,
        linewidths=linewidth,
        facecolors="none" if values is None else None,
    )
    if values is not None:
        collection.set_array(np.asarray(values))
    ax.add_collection(collection)
    points = np.concatenate(list(polygons))
    ax.set_xlim(points[:, 0].min(), points[:, 0].max())
    ax.set_ylim(points[:, 1].min(), points[:, 1].max())
    ax.set_aspect("equal")
    return collection


def outline_polygon(
    fig: Figure,
    vertices: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    color: str = "white",
) -> Figure:
    """Draw the closed polygon through ``vertices: (N, 2)`` and mark its corners on every image axis
    of ``fig`` (e.g. the convex hull of anchor latents on a slice's heatmaps); ``labels`` name the
    corners."""
    vertices = np.asarray(vertices, dtype=float)
    closed = np.vstack([vertices, vertices[:1]])
    for ax in fig.axes:
        if not ax.images:  # colour bars and other non-image axes
            continue
        ax.plot(closed[:, 0], closed[:, 1], color=color, linewidth=1.2, linestyle="--")
        ax.scatter(vertices[:, 0], vertices[:, 1], s=36, c=color, edgecolors="black", zorder=3)
        for index, label in enumerate(labels or []):
            ax.annotate(
                label, vertices[index], textcoords="offset points", xytext=(4, 4), color=color, fontsize=8
            )
    return fig


def plot_band(
    ax,
    x: np.ndarray,
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    *,
    label: str | None = None,
    color=None,
    alpha: float = 0.2,
):
    """A mean curve with a shaded band (e.g. a confidence interval) on ``ax``.

    Parameters
    ----------
    x, mean, low, high
        ``(N,)`` arrays: positions, the curve, and the band's lower and upper edges.
    label, color
        of the line; the band takes the line's colour.

    Returns
    -------
    The ``Line2D`` of the mean curve.
    """
    (line,) = ax.plot(x, mean, label=label, color=color, lw=1.5)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def image_frames_slider(
    frames: np.ndarray,
    frame_titles: Sequence[str],
    *,
    nrows: int = 1,
    image_titles: Sequence[Sequence[str]] | None = None,
    size: float = 1.6,
) -> str:
    """A slider over sets of images (e.g. the same seeds under a changing parameter), as HTML.

    Parameters
    ----------
    frames
        ``(F, N, H, W, 3)`` images in ``[0, 1]``: frame ``f`` shows its ``N`` images in a grid.
    frame_titles
        ``F`` titles, one per frame (the figure's suptitle).
    image_titles
        optional ``F x N`` titles of the single images.
    """
    frames = np.asarray(frames)
    if frames.ndim != 5 or len(frame_titles) != len(frames):
        raise ValueError(f"frames must be (F, N, H, W, 3) with F titles: {frames.shape}, {len(frame_titles)}")
    first_titles = None if image_titles is None else image_titles[0]
    fig = image_grid(frames[0], nrows=nrows, titles=first_titles, size=size)
    axes = [ax for ax in fig.axes if ax.images]
    heading = fig.suptitle(frame_titles[0], fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the heading (0.3 inch)

    def update(frame: int) -> None:
        for index, ax in enumerate(axes):
            ax.images[0].set_data(np.clip(frames[frame, index], 0, 1))
            if image_titles is not None:
                ax.set_title(image_titles[frame][index], fontsize=8)
        heading.set_text(frame_titles[frame])

    return slider_animation(fig, update, len(frames))
