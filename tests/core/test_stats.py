"""geomlib.core.stats: proportion_interval against Wilson's score interval written out by hand; the AUC
intervals, standard errors and detectable effects against simulations of known size; the TPR at a
false-positive rate against brute force over thresholds."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from geomlib.core import stats


def _wilson_by_hand(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927): centre (p + z^2 / 2n) / (1 + z^2 / n),
    half-width z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)."""
    p = hits / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return centre - half, centre + half


@pytest.mark.parametrize(("hits", "n"), [(7, 20), (0, 12), (12, 12), (480, 512)])
def test_proportion_interval_is_wilsons(hits, n):
    sample = np.zeros(n, dtype=bool)
    sample[:hits] = True
    row = stats.proportion_interval(np.random.default_rng(0).permutation(sample))
    low, high = _wilson_by_hand(hits, n)
    assert row["estimate"] == hits / n and row["n"] == n
    assert row["low"] == pytest.approx(low, abs=1e-12) and row["high"] == pytest.approx(high, abs=1e-12)
    assert 0.0 <= row["low"] <= row["estimate"] <= row["high"] <= 1.0
    assert row["high"] - row["low"] > 0  # never a point, even at 0 or n hits


def test_proportion_interval_covers_a_known_rate_at_its_level():
    """Wilson's interval at 95 % covers the true rate in about 95 % of repeated samples."""
    rng = np.random.default_rng(1)
    covered = [
        (row := stats.proportion_interval(rng.random(200) < 0.1))["low"] <= 0.1 <= row["high"]
        for _ in range(400)
    ]
    assert 0.91 <= np.mean(covered) <= 0.99


def test_proportion_interval_of_nothing_and_bad_confidence():
    row = stats.proportion_interval(np.array([], dtype=bool))
    assert row["n"] == 0 and all(math.isnan(row[key]) for key in ("estimate", "low", "high"))
    with pytest.raises(ValueError, match="confidence"):
        stats.proportion_interval(np.array([True]), confidence=1.0)


def _shifted_normals(rng, shift, n_positive, n_negative):
    """Scores with a known AUC: N(shift, 1) against N(0, 1) has AUC Phi(shift / sqrt 2)."""
    return rng.normal(shift, 1, n_positive), rng.normal(0, 1, n_negative)


def test_auc_interval_covers_the_true_auc_at_about_its_level():
    rng = np.random.default_rng(0)
    shift = 1.0
    truth = scipy_stats.norm.cdf(shift / np.sqrt(2))
    covered = []
    for repeat in range(120):
        positive, negative = _shifted_normals(rng, shift, 30, 30)
        interval = stats.auc_interval(positive, negative, n_resamples=400, seed=repeat)
        assert interval["low"] <= interval["auc"] <= interval["high"]
        covered.append(interval["low"] <= truth <= interval["high"])
    assert 0.85 <= np.mean(covered) <= 0.99  # 95 % nominal; the percentile bootstrap runs a bit short


def test_auc_interval_is_undefined_below_two_scores_a_class():
    row = stats.auc_interval(np.array([1.0]), np.array([0.0, 0.5]))
    assert row["auc"] == 1.0 and np.isnan(row["low"]) and np.isnan(row["high"])


def test_auc_standard_error_matches_the_spread_of_simulated_aucs():
    rng = np.random.default_rng(1)
    # exponential scores: Hanley and McNeil's model; rate 1 against rate 1/3 gives AUC 3/4
    aucs = [stats.roc_auc(rng.exponential(3, 40), rng.exponential(1, 50)) for _ in range(2000)]
    predicted = stats.auc_standard_error(0.75, 40, 50)
    assert np.mean(aucs) == pytest.approx(0.75, abs=0.01)
    assert 0.9 <= np.std(aucs) / predicted <= 1.1


def test_smallest_auc_offset_is_detected_at_the_stated_power():
    rng = np.random.default_rng(2)
    n = 40
    offset = stats.smallest_auc_offset(n, n)
    shift = np.sqrt(2) * scipy_stats.norm.ppf(0.5 + offset)  # normals whose AUC is 0.5 + offset
    found = [scipy_stats.mannwhitneyu(*_shifted_normals(rng, shift, n, n)).pvalue < 0.05 for _ in range(1000)]
    assert 0.74 <= np.mean(found) <= 0.86  # 80 % asked
    assert stats.smallest_auc_difference(n, n) == pytest.approx(np.sqrt(2) * offset)


def test_auc_difference_interval_pairs_the_samples():
    rng = np.random.default_rng(3)
    positive, negative = _shifted_normals(rng, 1.0, 40, 40)
    same = stats.auc_difference_interval(np.stack([positive, positive]), np.stack([negative, negative]))
    assert same["difference"] == same["low"] == same["high"] == 0  # one detector against itself
    noisy_p, noisy_n = positive + rng.normal(0, 0.3, 40), negative + rng.normal(0, 0.3, 40)
    pair = stats.auc_difference_interval(np.stack([positive, noisy_p]), np.stack([negative, noisy_n]))
    expected = stats.roc_auc(positive, negative) - stats.roc_auc(noisy_p, noisy_n)
    assert pair["difference"] == pytest.approx(expected)
    # correlated detectors: the paired interval is far narrower than two independent AUCs' would be
    assert pair["high"] - pair["low"] < 0.5 * 2 * 1.96 * np.sqrt(2) * stats.auc_standard_error(0.76, 40, 40)
    with pytest.raises(ValueError, match="two detectors"):
        stats.auc_difference_interval(positive, negative)


def test_true_positive_rate_at_matches_brute_force_over_thresholds():
    rng = np.random.default_rng(4)
    for _ in range(50):
        positive, negative = rng.integers(0, 8, 15).astype(float), rng.integers(0, 8, 20).astype(float)
        for rate in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0):
            thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([positive, negative]))])
            feasible = [(positive > t).mean() for t in thresholds if (negative > t).mean() <= rate + 1e-12]
            assert stats.true_positive_rate_at(positive, negative, rate) == max(feasible)


def test_proportion_difference_interval_is_newcombes():
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80 = 0.2, method 10: [0.0524, 0.3339]
    first, second = np.arange(70) < 56, np.arange(80) < 48
    interval = stats.proportion_difference_interval(first, second)
    assert interval["difference"] == pytest.approx(0.2)
    assert interval["low"] == pytest.approx(0.0524, abs=1e-4) and interval["high"] == pytest.approx(
        0.3339, abs=1e-4
    )
    assert interval["n"] == 150
    # at the edges it stays defined and inside [-1, 1]
    edge = stats.proportion_difference_interval(np.ones(10, bool), np.zeros(10, bool))
    assert edge["difference"] == 1.0 and 0 < edge["low"] < 1 and edge["high"] <= 1
