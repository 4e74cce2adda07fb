"""The figures of chapter 08: every detector's ROC curve per contrast, and samples of each prompt
kind next to their nearest training image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from geomlib.chapters.memorisation.benchmark import (
    DETECTORS,
    Detector,
    contrast_scores,
    oriented_scores,
    roc_points,
)
from geomlib.chapters.memorisation.budgets import KIND_SHORT_LABELS
from geomlib.runtime.plotting import image_grid

#: One colour per detector family.
FAMILY_COLOURS = {"decoder": "tab:blue", "noise_difference": "tab:red", "posterior_mean": "tab:green"}
FAMILY_COLOURS["nearest"] = "black"


def plot_roc_curves(
    table: pd.DataFrame,
    trajectories: dict[str, np.ndarray],
    contrasts: Sequence[str],
    labels: dict[str, str],
    detectors: Sequence[Detector] = DETECTORS,
    seed: int = 0,
):
    """One panel per contrast: each detector's ROC curve, memorised prompts as the positives (a
    detector without a claimed direction in its better orientation, dashed)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(contrasts), figsize=(4.2 * len(contrasts), 4.2), squeeze=False)
    for ax, other in zip(axes[0], contrasts, strict=True):
        shades: dict[str, int] = {}
        for detector in detectors:
            positive, negative = contrast_scores(table, trajectories, other, detector, seed)
            if np.isnan(positive).any() or np.isnan(negative).any():
                continue
            fpr, tpr = roc_points(*oriented_scores(detector, positive, negative))
            shade = shades[detector.family] = shades.get(detector.family, -1) + 1
            ax.step(
                fpr,
                tpr,
                where="post",
                color=FAMILY_COLOURS[detector.family],
                alpha=1.0 - 0.22 * shade,
                linestyle="--" if detector.direction == 0 else "-",
                label=detector.label,
            )
        ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
        ax.set(
            xlabel="false-positive rate", ylabel="true-positive rate", title=f"memorised vs {labels[other]}"
        )
        ax.set_aspect("equal")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def plot_samples(
    images: np.ndarray,
    keys: Sequence[tuple[str, int]],
    kinds: dict[str, list[str]],
    nearest: np.ndarray,
    labels: dict[str, str] = KIND_SHORT_LABELS,
    per_kind: int = 6,
):
    """``per_kind`` samples of each kind (first seed) in one row each, and below each row the
    nearest training image of those samples (``nearest: (N, H, W, 3)``, one per sample);
    ``labels`` name the rows (short ones fit: :data:`KIND_SHORT_LABELS`)."""
    rows, row_labels = [], []
    position = {key: i for i, key in enumerate(keys)}
    first_seed = min(seed for _, seed in keys)
    for kind, prompts in kinds.items():
        shown = [position[(prompt, first_seed)] for prompt in prompts[:per_kind]]
        shown += [shown[-1]] * (per_kind - len(shown))  # fewer prompts than columns: repeat the last
        rows += [images[shown], nearest[shown]]
        row_labels += [labels[kind], "nearest"]
    return image_grid(np.concatenate(rows), nrows=len(rows), row_labels=row_labels, size=1.1)
