"""The statistics of the claim checks: intervals of means and of proportions, paired changes, areas
under ROC curves.

Every chapter's interval comes from here, under one rule for small samples: with fewer than two
values the spread is unknown, so an interval is undefined and its bounds are NaN (never a
zero-width or an infinite interval that a reader could take for a result). Proportions are the
exception: Wilson's interval needs no estimate of spread, and is defined (and wide) from one value.
Tests and intervals are SciPy's; only their assembly into the rows the chapters print is written here.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _t_half_width(values: np.ndarray, confidence: float) -> float:
    """Half-width of the Student-t interval of the mean of ``values`` (``n >= 2``)."""
    n = len(values)
    sem = float(values.std(ddof=1) / np.sqrt(n))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """The mean of ``values: (n,)`` and its Student-t ``confidence`` interval.

    Returns ``{"mean", "low", "high", "n"}``. With ``n < 2`` the bounds are NaN (and the mean too
    when ``n = 0``); identical values give a zero-width interval.
    """
    _check_confidence(confidence)
    values = np.asarray(values, dtype=float).ravel()
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n}
    half = _t_half_width(values, confidence)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def proportion_interval(hits: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """The share of ``True`` in ``hits: (n,)`` and its Wilson score ``confidence`` interval.

    Wilson's interval (SciPy's ``binomtest(...).proportion_ci(method="wilson")``) stays inside
    ``[0, 1]`` and keeps a non-zero width at 0 or ``n`` hits, where the normal approximation
    collapses to a point. Returns ``{"estimate", "low", "high", "n"}``; all NaN but ``n`` when
    ``n = 0``.
    """
    _check_confidence(confidence)
    hits = np.asarray(hits, dtype=bool).ravel()
    n = len(hits)
    if n == 0:
        return {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    count = int(hits.sum())
    interval = stats.binomtest(count, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {"estimate": count / n, "low": float(interval.low), "high": float(interval.high), "n": n}


def paired_change(before: np.ndarray, after: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``after - before`` over paired samples, its t interval and two-sided t-test p-value.

    Returns ``{"change", "low", "high", "p_value", "n"}``. With one pair the interval and the
    p-value are NaN (the rule of :func:`mean_interval`); identical differences give a zero-width
    interval and p = 0 (or 1 when they are all 0).
    """
    differences = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if differences.ndim != 1 or len(differences) == 0:
        raise ValueError("before and after must be equal-length 1-D arrays with at least one pair")
    interval = mean_interval(differences, confidence)
    n, mean = len(differences), interval["mean"]
    row = {"change": mean, "low": interval["low"], "high": interval["high"], "p_value": float("nan"), "n": n}
    if n >= 2:
        sem = float(differences.std(ddof=1) / np.sqrt(n))
        row["p_value"] = float(2 * stats.t.sf(abs(mean) / sem, n - 1)) if sem > 0 else (0.0 if mean else 1.0)
    return row


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2): the
    area under the ROC curve, from the Mann-Whitney U statistic."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("both classes need at least one score")
    u = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u / (len(positive) * len(negative)))


def cross_validated_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """AUC of out-of-fold logistic-regression scores on standardised ``features: (n, f)``.

    Up to 5 stratified folds (shuffled with ``seed``); NaN when a class has fewer than 2 samples.
    ``labels: (n,)`` bool, the positive class ``True``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=bool)
    folds = min(5, int(labels.sum()), int((~labels).sum()))
    if folds < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, features, labels, cv=splitter, method="decision_function")
    return roc_auc(scores[labels], scores[~labels])
