"""The statistics of the claim checks: intervals of means and of proportions, paired changes, areas
under ROC curves (the four-way checks of a claimed sign built on them: :mod:`geomlib.core.claims`).

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


def check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """The mean of ``values: (n,)`` and its Student-t ``confidence`` interval.

    Returns ``{"mean", "low", "high", "n"}``. With ``n < 2`` the bounds are NaN (and the mean too
    when ``n = 0``); identical values give a zero-width interval.
    """
    check_confidence(confidence)
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
    check_confidence(confidence)
    hits = np.asarray(hits, dtype=bool).ravel()
    n = len(hits)
    if n == 0:
        return {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    count = int(hits.sum())
    interval = stats.binomtest(count, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {"estimate": count / n, "low": float(interval.low), "high": float(interval.high), "n": n}


def proportion_difference_interval(
    first: np.ndarray, second: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """The difference of two independent proportions, ``share(first) - share(second)``, and its
    interval by Newcombe's hybrid score method (1998, method 10), built from each share's Wilson
    interval (:func:`proportion_interval`): inside ``[-1, 1]``, defined at 0 or ``n`` hits.
    Returns ``{"difference", "low", "high", "n"}`` (``n``: both samples' sizes together)."""
    a, b = proportion_interval(first, confidence), proportion_interval(second, confidence)
    difference = a["estimate"] - b["estimate"]
    low = difference - np.hypot(a["estimate"] - a["low"], b["high"] - b["estimate"])
    high = difference + np.hypot(a["high"] - a["estimate"], b["estimate"] - b["low"])
    return {"difference": difference, "low": float(low), "high": float(high), "n": a["n"] + b["n"]}


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


def out_of_fold_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """Out-of-fold logistic-regression scores of standardised ``features: (n, f)``: each sample is
    scored by a model fitted without it (up to 5 stratified folds, shuffled with ``seed``).

    ``labels: (n,)`` bool, the positive class ``True``. ``None`` when a class has fewer than 2
    samples (no fold could hold both classes).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=bool)
    folds = min(5, int(labels.sum()), int((~labels).sum()))
    if folds < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=splitter, method="decision_function")


def cross_validated_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """AUC of :func:`out_of_fold_scores` (NaN when a class has fewer than 2 samples)."""
    labels = np.asarray(labels, dtype=bool)
    scores = out_of_fold_scores(features, labels, seed)
    return float("nan") if scores is None else roc_auc(scores[labels], scores[~labels])


def _auc_along(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC of every slice along ``axis`` (batched pairwise counting, ties 1/2): the statistic that
    :func:`auc_interval`'s bootstrap evaluates on each resample."""
    positive, negative = np.moveaxis(positive, axis, -1), np.moveaxis(negative, axis, -1)
    above = (positive[..., :, None] > negative[..., None, :]).mean(axis=(-2, -1))
    ties = (positive[..., :, None] == negative[..., None, :]).mean(axis=(-2, -1))
    return above + 0.5 * ties


def _stratified_bootstrap(
    samples: tuple[np.ndarray, np.ndarray], statistic, confidence: float, n_resamples: int, seed: int
) -> dict[str, float]:
    """SciPy's percentile bootstrap of a vectorised ``statistic(positive, negative, axis)``, each
    class resampled on its own: ``{"low", "high", "standard_error"}``."""
    result = stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return {
        "low": float(interval.low),
        "high": float(interval.high),
        "standard_error": float(result.standard_error),
    }


def auc_interval(
    positive: np.ndarray,
    negative: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """The AUC of ``positive: (n1,)`` against ``negative: (n0,)`` scores and its bootstrap interval.

    Each class is resampled on its own (a stratified bootstrap: SciPy's ``bootstrap`` with two
    independent samples), percentile interval. Returns ``{"auc", "low", "high", "standard_error",
    "n_positive", "n_negative"}``; NaN bounds with fewer than two scores in a class.
    """
    check_confidence(confidence)
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    auc = roc_auc(positive, negative)
    row = {"auc": auc, "low": float("nan"), "high": float("nan"), "standard_error": float("nan")}
    row |= {"n_positive": len(positive), "n_negative": len(negative)}
    if min(len(positive), len(negative)) < 2:
        return row
    return row | _stratified_bootstrap((positive, negative), _auc_along, confidence, n_resamples, seed)


def auc_difference_interval(
    positive: np.ndarray,
    negative: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """AUC of detector 1 minus AUC of detector 2 on the same samples, with a paired bootstrap.

    ``positive: (2, n1)`` and ``negative: (2, n0)`` hold both detectors' scores of the same samples;
    a resample draws samples (not scores), so the two AUCs move together and their correlation
    narrows the interval. Returns ``{"difference", "low", "high", "standard_error"}``.
    """
    check_confidence(confidence)
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if positive.ndim != 2 or negative.ndim != 2 or len(positive) != 2 or len(negative) != 2:
        raise ValueError("positive and negative must have shape (2, n): two detectors' scores")
    difference = roc_auc(*positive[:1], *negative[:1]) - roc_auc(*positive[1:], *negative[1:])
    row = {
        "difference": difference,
        "low": float("nan"),
        "high": float("nan"),
        "standard_error": float("nan"),
    }
    if min(positive.shape[1], negative.shape[1]) < 2:
        return row

    def statistic(pos_index: np.ndarray, neg_index: np.ndarray, axis: int = -1) -> np.ndarray:
        pos, neg = positive[:, pos_index.astype(int)], negative[:, neg_index.astype(int)]  # (2, ..., n)
        auc = _auc_along(pos, neg)
        return auc[0] - auc[1]

    indices = (np.arange(positive.shape[1]), np.arange(negative.shape[1]))
    return row | _stratified_bootstrap(indices, statistic, confidence, n_resamples, seed)


def auc_standard_error(auc: float, n_positive: int, n_negative: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC from ``n_positive`` and ``n_negative``
    independent scores (their exponential approximation of the score distributions)."""
    if n_positive < 1 or n_negative < 1:
        raise ValueError("both classes need at least one score")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (n_positive - 1) * (q1 - auc**2) + (n_negative - 1) * (q2 - auc**2)
    return float(np.sqrt(variance / (n_positive * n_negative)))


def smallest_auc_difference(
    n_positive: int, n_negative: int, *, auc: float = 0.5, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest difference between two detectors' AUCs that a two-sided test at ``alpha`` finds
    with probability ``power``, for AUCs near ``auc`` from independent samples of these sizes:
    ``(z_{1-alpha/2} + z_power) * sqrt(2) * SE(auc)`` (Hanley and McNeil's SE). Scores of the same
    samples are positively correlated, which makes the real threshold smaller; a paired bootstrap
    (:func:`auc_difference_interval`) measures it for a given pair."""
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return z * np.sqrt(2) * auc_standard_error(auc, n_positive, n_negative)


def true_positive_rate_at(positive: np.ndarray, negative: np.ndarray, false_positive_rate: float) -> float:
    """The largest share of ``positive`` scores above a threshold that lets through at most
    ``false_positive_rate`` of the ``negative`` ones (scores above the threshold are flagged; ties
    at the threshold are not). With ``n0`` negatives the attainable rates are multiples of
    ``1 / n0``: below ``1 / n0`` this is the share above every negative."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("both classes need at least one score")
    allowed = int(np.floor(false_positive_rate * len(negative) + 1e-9))  # negatives that may pass
    threshold = np.sort(negative)[::-1][allowed] if allowed < len(negative) else -np.inf
    return float((positive > threshold).mean())


def smallest_auc_offset(
    n_positive: int, n_negative: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest distance of an AUC from chance (0.5) that a two-sided test at ``alpha`` finds
    with probability ``power`` from samples of these sizes (Hanley and McNeil's SE at 0.5)."""
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return z * auc_standard_error(0.5, n_positive, n_negative)
