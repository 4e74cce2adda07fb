"""Claim checks against known cases: effects of a known size detected at the stated rate,
intervals that cover a known value at their level, and the four verdicts told apart."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from geomlib.core import claims


def test_claim_check_detects_an_effect_of_the_detectable_size_at_the_stated_rate():
    rng = np.random.default_rng(6)
    n, sd = 30, 1.0
    # the detectable change of a paired t test with n pairs of this spread
    detectable = claims.paired_claim_check(
        np.zeros(n), rng.normal(0, sd, n), claimed_sign=1, smallest_effect=0.1
    ).detectable
    expected = (scipy_stats.t(n - 1).ppf(0.975) + scipy_stats.t(n - 1).ppf(0.8)) * sd / np.sqrt(n)
    assert detectable == pytest.approx(expected, rel=0.35)  # one sample's sd
    verdicts = [
        claims.paired_claim_check(
            np.zeros(n), rng.normal(expected, sd, n), claimed_sign=1, smallest_effect=0.1
        ).verdict
        for _ in range(1000)
    ]
    assert 0.74 <= np.mean([v == "as claimed" for v in verdicts]) <= 0.86  # 80 % power
    assert np.mean([v == "opposite" for v in verdicts]) < 0.01


def test_claim_check_tells_no_effect_from_undecided_and_opposite():
    rng = np.random.default_rng(7)

    def centred(n):  # no effect at all: the mean change is exactly 0
        values = rng.normal(0, 1, n)
        return values - values.mean()

    big = claims.paired_claim_check(np.zeros(400), centred(400), claimed_sign=-1, smallest_effect=0.3)
    assert big.verdict == "no effect larger than" and big.bound < 0.3  # the sample rules 0.3 out
    assert "no fall larger than" in big.text()
    small = claims.paired_claim_check(np.zeros(5), centred(5), claimed_sign=-1, smallest_effect=0.3)
    assert small.verdict == "undecided at this sample size" and small.detectable > 0.3
    # the sample that would detect 0.3: the detectable change of that many samples is about 0.3
    grown = claims.paired_claim_check(
        np.zeros(int(small.sample_to_detect)),
        centred(int(small.sample_to_detect)),
        claimed_sign=-1,
        smallest_effect=0.3,
    )
    assert 0.15 < grown.detectable < 0.6 and "samples would detect it" in small.text()
    wrong = claims.paired_claim_check(
        np.zeros(50), rng.normal(1, 1, 50), claimed_sign=-1, smallest_effect=0.3
    )
    assert wrong.verdict == "opposite"
    one = claims.paired_claim_check(np.zeros(1), np.ones(1), claimed_sign=1, smallest_effect=0.3)
    assert one.verdict == "undecided at this sample size"  # no interval from one pair
    # an interval's standard error read off its half-width equals the one given
    given = claims.claim_check(1.0, 0.0, 2.0, 1 / 1.959964, 10, claimed_sign=1, smallest_effect=0.5)
    derived = claims.claim_check(1.0, 0.0, 2.0, None, 10, claimed_sign=1, smallest_effect=0.5)
    assert derived.detectable == pytest.approx(given.detectable)
    with pytest.raises(ValueError, match="claimed_sign"):
        claims.claim_check(1.0, 0.5, 1.5, 0.2, 10, claimed_sign=0, smallest_effect=0.5)
    with pytest.raises(ValueError, match="smallest_effect"):
        claims.claim_check(1.0, 0.5, 1.5, 0.2, 10, claimed_sign=1, smallest_effect=0.0)


def test_half_sample_claim_check_covers_a_known_difference_at_its_level():
    rng = np.random.default_rng(8)
    n, shift = 40, 0.5

    def difference(a, b):
        return float(b.mean() - a.mean())

    checks = [
        claims.half_sample_claim_check(
            [rng.normal(0, 1, n), rng.normal(shift, 1, n)],
            difference,
            claimed_sign=1,
            smallest_effect=0.1,
            n_splits=100,
            seed=i,
        )
        for i in range(300)
    ]
    covered = np.mean([c.low <= shift <= c.high for c in checks])
    assert 0.9 <= covered <= 0.99  # a 95 % interval
    # its standard error is the difference's, sqrt(2 / n), so detectable is 2.8 of those
    expected = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * np.sqrt(2 / n)
    assert np.median([c.detectable for c in checks]) == pytest.approx(expected, rel=0.15)
    assert checks[0].n == 2 * n


def test_half_sample_claim_check_of_a_diversity_contrast_is_centred_on_it():
    from geomlib.core.diversity import vendi_diversity

    rng = np.random.default_rng(9)
    alike = np.ones((30, 8)) + 0.3 * rng.normal(size=(30, 8))
    spread = rng.normal(size=(30, 8))

    def gain(first, second):
        return vendi_diversity(second) - vendi_diversity(first)

    check = claims.half_sample_claim_check([alike, spread], gain, claimed_sign=1, smallest_effect=1.0)
    assert check.verdict == "as claimed" and check.effect == pytest.approx(gain(alike, spread))
    assert check.low < check.effect < check.high  # a resample with repeats would shift it
    opposite = claims.half_sample_claim_check([spread, alike], gain, claimed_sign=1, smallest_effect=1.0)
    assert opposite.verdict == "opposite"
    # halves of one image have one diversity whatever the images: no spread to read, undecided
    few = claims.half_sample_claim_check([alike[:3], spread[:3]], gain, claimed_sign=1, smallest_effect=1.0)
    assert few.verdict == "undecided at this sample size" and np.isnan(few.low)
    with pytest.raises(ValueError, match="at least one"):
        claims.half_sample_claim_check([alike[:0], spread], gain, claimed_sign=1, smallest_effect=1.0)


def test_spearman_claim_check_covers_the_rank_correlation_and_detects_at_its_power():
    rng = np.random.default_rng(10)
    n, r = 60, 0.35
    population = 6 / np.pi * np.arcsin(r / 2)  # Spearman's rho of a bivariate normal
    cov = [[1, r], [r, 1]]
    checks = []
    for _ in range(400):
        x, y = rng.multivariate_normal([0, 0], cov, n).T
        checks.append(claims.spearman_claim_check(x, y, claimed_sign=1, smallest_effect=0.1))
    assert 0.92 <= np.mean([c.low <= population <= c.high for c in checks]) <= 0.98
    detectable = checks[0].detectable
    hits = []
    for _ in range(400):  # a correlation of the detectable size is found about 80 % of the time
        x, y = rng.multivariate_normal([0, 0], [[1, detectable], [detectable, 1]], n).T
        hits.append(
            claims.spearman_claim_check(x, y, claimed_sign=1, smallest_effect=0.1).verdict == "as claimed"
        )
    assert 0.7 <= np.mean(hits) <= 0.9
    # the pairs that detect 0.1: their own detectable correlation is 0.1
    needed = int(checks[0].sample_to_detect)
    x, y = rng.normal(size=(2, needed))
    assert claims.spearman_claim_check(x, y, claimed_sign=1, smallest_effect=0.1).detectable == pytest.approx(
        0.1, abs=0.002
    )
    few = claims.spearman_claim_check(np.arange(4.0), np.arange(4.0), claimed_sign=1, smallest_effect=0.5)
    assert few.verdict == "undecided at this sample size" and few.sample_to_detect > 25
    assert "samples would detect it" in few.text()
    with pytest.raises(ValueError, match="correlation"):
        claims.spearman_claim_check(np.arange(9.0), np.arange(9.0), claimed_sign=1, smallest_effect=1.5)
