"""Diversity of a set of samples: the Vendi score (Friedman & Dieng 2023) of feature vectors, and
the pixel features that chapters compare images by."""

from __future__ import annotations

import warnings

import numpy as np
from vendi_score import vendi


def vendi_diversity(features: np.ndarray) -> float:
    """Vendi score of ``(N, F)`` features with the cosine-similarity kernel: the exponential of the
    entropy of ``K / N``'s eigenvalues, between 1 (all alike) and ``N``."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if len(features) == 0 or (norms == 0).any():
        raise ValueError("Vendi needs at least one sample and no all-zero feature vector")
    unit = features / norms
    with warnings.catch_warnings():  # vendi-score 0.0.3 names a deprecated scipy.sparse path
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(vendi.score_K(unit @ unit.T))


def pixel_features(images: np.ndarray, size: int = 32) -> np.ndarray:
    """``(N, 3 s²)``: images mapped to ``[-1, 1]`` (the VAE's input range), box-downsampled to at
    most ``size x size`` (``s``), flattened. Grey 0.5 is the zero vector."""
    images = np.asarray(images, dtype=np.float64) * 2 - 1
    factor = max(1, images.shape[1] // size)
    height, width = images.shape[1] // factor * factor, images.shape[2] // factor * factor
    small = images[:, :height, :width].reshape(
        len(images), height // factor, factor, width // factor, factor, 3
    )
    return small.mean(axis=(2, 4)).reshape(len(images), -1)
