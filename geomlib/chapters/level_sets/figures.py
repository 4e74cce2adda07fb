"""The chapter's figures: Fig. 5 (diversity and fidelity across level sets, one line per source)
and Fig. 16 (a grid of images per level set)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from geomlib.chapters.level_sets.analysis import grid_indices
from geomlib.chapters.level_sets.measure import REAL, LevelSetSource
from geomlib.runtime.plotting import image_grid

DESCRIPTOR_LABELS = {"local_scaling": "ψ", "local_rank": "ν"}
MEASURE_LABELS = {
    "vendi_pixels": "Vendi score (pixels)",
    "vendi_latents": "Vendi score (latents)",
    "accuracy": "prompt accuracy",
    "confidence": "classifier confidence",
}


def _colour(name: str, names: list[str]):
    """Black for the real images; the guidance scales from light to dark blue."""
    if name == REAL:
        return "black"
    generated = [n for n in names if n != REAL]
    return plt.cm.Blues(0.4 + 0.6 * generated.index(name) / max(len(generated) - 1, 1))


def plot_level_set_measures(summary: pd.DataFrame, descriptor: str = "local_scaling") -> Figure:
    """One panel per measure present in ``summary`` (:func:`level_set_summary`), the level sets of
    ``descriptor`` on the x axis (increasing), one line per source; fidelity with its 95 % interval."""
    measures = [m for m in MEASURE_LABELS if m in summary]
    figure, axes = plt.subplots(1, len(measures), figsize=(3.3 * len(measures), 3.0), squeeze=False)
    names = list(dict.fromkeys(summary["source"]))
    for axis, measure in zip(axes[0], measures, strict=True):
        for name in names:
            rows = summary[summary["source"] == name]
            colour = _colour(name, names)
            axis.plot(rows["level"], rows[measure], "o-", color=colour, label=name, ms=3)
            if f"{measure}_low" in rows:
                axis.fill_between(
                    rows["level"], rows[f"{measure}_low"], rows[f"{measure}_high"], color=colour, alpha=0.12
                )
        axis.set_xlabel(f"level set of {DESCRIPTOR_LABELS.get(descriptor, descriptor)} (increasing)")
        axis.set_title(MEASURE_LABELS[measure], fontsize=10)
        axis.set_xticks(sorted(summary["level"].unique()))
    axes[0][0].legend(fontsize=8, frameon=False)
    figure.tight_layout()
    return figure


def plot_level_set_grid(
    source: LevelSetSource,
    values: np.ndarray,
    n_levels: int,
    per_level: int,
    descriptor: str = "local_scaling",
) -> Figure:
    """Fig. 16: one column per level set of ``descriptor`` (increasing to the right), ``per_level``
    images in each at evenly spaced ranks, each titled with its value."""
    indices = grid_indices(values, n_levels, per_level)  # (per_level, n_levels)
    symbol = DESCRIPTOR_LABELS.get(descriptor, descriptor)
    titles = [f"{symbol} {values[i]:.1f}" for i in indices.ravel()]
    figure = image_grid(source.images[indices.ravel()], nrows=per_level, titles=titles, size=1.25)
    figure.suptitle(f"{source.name}: level sets of {symbol}, low to high", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title above the first row's titles
    return figure
