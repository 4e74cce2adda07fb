"""The Datasaurus Dozen, shipped as ``data/datasaurus.csv`` (provenance in ``data/datasaurus.md``).

Thirteen 2-D point sets of 142 points each on a 0-100 canvas. The toy DDPM works in *normalised
units*, the convention of tiny-diffusion (Tanel Pärnamaa's minimal 2-D DDPM):
``x' = 4 (x / 54 - 1)``, ``y' = 4 (y / 48 - 1)``. Every set has mean ``(54.26, 47.83)``, so this
centres all of them, and the dino then spans about ``[-2.4, 3.3] x [-3.8, 4.3]``, inside the
``[-6, 6]^2`` window of the paper's figures.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

#: The 13 sets, in the order of the CSV.
DATASAURUS_SETS: tuple[str, ...] = (
    "dino",
    "away",
    "h_lines",
    "v_lines",
    "x_shape",
    "star",
    "high_lines",
    "dots",
    "circle",
    "bullseye",
    "slant_up",
    "slant_down",
    "wide_lines",
)
#: Canvas point mapped to the origin, and the factor applied after dividing by it.
NORMALISATION_CENTRE: tuple[float, float] = (54.0, 48.0)
NORMALISATION_SCALE: float = 4.0

_CSV = Path(__file__).resolve().parents[3] / "data" / "datasaurus.csv"


def datasaurus_path() -> Path:
    """Path of the shipped CSV (``<repo>/data/datasaurus.csv``); needs an editable install."""
    if not _CSV.exists():
        raise FileNotFoundError(
            f"{_CSV} not found: geomlib reads the Datasaurus from the repository's data/ folder;"
            " install it from a clone with `pip install -e .`"
        )
    return _CSV


def normalise(points: np.ndarray) -> np.ndarray:
    """Canvas units to normalised units, ``(N, 2) -> (N, 2)``: ``4 (p / centre - 1)``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    return NORMALISATION_SCALE * (points / np.asarray(NORMALISATION_CENTRE) - 1.0)


def denormalise(points: np.ndarray) -> np.ndarray:
    """Normalised units back to canvas units, ``(N, 2) -> (N, 2)``; inverse of :func:`normalise`."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    return (points / NORMALISATION_SCALE + 1.0) * np.asarray(NORMALISATION_CENTRE)


def load_datasaurus(name: str = "dino", *, normalised: bool = True) -> np.ndarray:
    """One set of the Datasaurus Dozen as ``(142, 2)`` float64 points, in the CSV's row order.

    Parameters
    ----------
    name
        one of :data:`DATASAURUS_SETS`.
    normalised
        return normalised units (see the module docstring) instead of canvas units.
    """
    if name not in DATASAURUS_SETS:
        raise ValueError(f"unknown Datasaurus set {name!r}; choose from {DATASAURUS_SETS}")
    with datasaurus_path().open(newline="") as handle:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle) if r["dataset"] == name]
    points = np.array(rows, dtype=np.float64)
    return normalise(points) if normalised else points
