"""geomlib.core.stats.proportion_interval against Wilson's score interval written out by hand."""

import math

import numpy as np
import pytest

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
