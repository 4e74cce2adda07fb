"""Claim checks: a claimed sign of an effect against a sample, in one of four verdicts (*as
claimed*, *opposite*, *no effect larger than* the effect of interest, *undecided at this sample
size*), with the effect the sample detects at the stated power and the sample that would detect
the effect of interest. One helper per kind of estimate: an interval given
(:func:`claim_check`), a mean paired change, a contrast of set statistics, a rank correlation.
The intervals are :mod:`geomlib.core.stats`' (and SciPy's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from geomlib.core.stats import check_confidence, paired_change

#: The four verdicts of a claim check, in the order :func:`claim_check` tries them.
VERDICTS: tuple[str, ...] = (
    "as claimed",
    "opposite",
    "no effect larger than",
    "undecided at this sample size",
)


@dataclass(frozen=True)
class ClaimCheck:
    """A claim about the sign of an effect, checked against a sample.

    Attributes
    ----------
    effect, low, high : the estimate and its confidence interval.
    n : the sample size.
    claimed_sign : ``+1`` (the claim: the effect is positive) or ``-1``.
    smallest_effect : the smallest effect of interest (e.g. the size the paper shows), > 0.
    detectable : the smallest effect a two-sided test at ``alpha`` finds with ``power`` at this
        sample's standard error.
    verdict : one of :data:`VERDICTS`. *as claimed* and *opposite*: the interval lies on one side
        of 0. *no effect larger than* ``bound``: the interval contains 0 and excludes an effect of
        ``smallest_effect`` in the claimed direction (the sample could have seen one). *undecided
        at this sample size*: the interval contains both 0 and the effect of interest.
    bound : the largest effect in the claimed direction that the interval allows (its bound on
        that side, in the claim's units; 0 or less when the interval excludes it).
    n_to_detect : the sample that would detect ``smallest_effect``, where the estimate's own
        formula gives it (e.g. a correlation's); ``None``: from the 1/sqrt(n) rule.
    """

    effect: float
    low: float
    high: float
    n: int
    claimed_sign: int
    smallest_effect: float
    detectable: float
    verdict: str
    bound: float
    n_to_detect: float | None = None

    @property
    def sample_to_detect(self) -> float:
        """About how many samples would detect ``smallest_effect`` with the same power:
        ``n_to_detect`` where given, else (the standard error falling as 1/sqrt(n))
        ``n * (detectable / smallest_effect)^2`` (NaN when the power is unknown)."""
        if self.n_to_detect is not None:
            return float(self.n_to_detect)
        if not np.isfinite(self.detectable) or self.n < 2:
            return float("nan")
        return float(np.ceil(self.n * (self.detectable / self.smallest_effect) ** 2))

    def text(self, digits: int = 2, unit: str = "samples") -> str:
        """One line for the book: the verdict, the effect, its interval, ``n`` and the power;
        ``unit`` names what ``n`` counts (images, prompt-seed blocks, training seeds)."""
        f = f"+.{digits}f"
        measured = f"{self.effect:{f}} [{self.low:{f}}, {self.high:{f}}], n = {self.n}"
        power = f"detectable at 80 % power: ±{self.detectable:.{digits}f}"
        interest = f"effect of interest {self.claimed_sign * self.smallest_effect:{f}}"
        verdict = self.verdict
        if verdict == "no effect larger than":
            direction = "rise" if self.claimed_sign > 0 else "fall"
            verdict = f"no {direction} larger than {max(self.bound, 0):.{digits}f}"
        line = f"{verdict}: {measured}; {power}; {interest}"
        if self.verdict == VERDICTS[3] and np.isfinite(self.sample_to_detect):
            line += f"; about {self.sample_to_detect:.0f} {unit} would detect it"
        return line


def claim_check(
    effect: float,
    low: float,
    high: float,
    standard_error: float | None,
    n: int,
    *,
    claimed_sign: int,
    smallest_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    dof: float | None = None,
) -> ClaimCheck:
    """The four-way verdict of a claimed sign (see :class:`ClaimCheck`) from an estimate, its
    ``1 - alpha`` interval ``[low, high]`` and ``standard_error``. ``detectable`` is
    ``(q(1 - alpha/2) + q(power)) * standard_error`` with normal quantiles, or Student t with
    ``dof`` degrees of freedom; ``standard_error=None`` reads it off the interval's half-width
    (a symmetric interval of those quantiles). NaN bounds (too small a sample) are *undecided*."""
    if claimed_sign not in (-1, 1):
        raise ValueError(f"claimed_sign must be +1 or -1, got {claimed_sign!r}")
    if not smallest_effect > 0:
        raise ValueError(f"smallest_effect must be positive, got {smallest_effect!r}")
    distribution = stats.norm if dof is None else stats.t(dof)
    if standard_error is None:
        standard_error = (high - low) / (2 * distribution.ppf(1 - alpha / 2))
    detectable = float((distribution.ppf(1 - alpha / 2) + distribution.ppf(power)) * standard_error)
    claimed_low, claimed_high = sorted((claimed_sign * low, claimed_sign * high))  # the claim's units
    if np.isnan(claimed_low) or np.isnan(claimed_high):
        verdict = VERDICTS[3]
    elif claimed_low > 0:
        verdict = VERDICTS[0]
    elif claimed_high < 0:
        verdict = VERDICTS[1]
    elif claimed_high < smallest_effect:
        verdict = VERDICTS[2]
    else:
        verdict = VERDICTS[3]
    return ClaimCheck(
        float(effect),
        float(low),
        float(high),
        int(n),
        claimed_sign,
        float(smallest_effect),
        detectable,
        verdict,
        float(claimed_high),
    )


def paired_claim_check(
    before: np.ndarray,
    after: np.ndarray,
    *,
    claimed_sign: int,
    smallest_effect: float,
    confidence: float = 0.95,
    power: float = 0.8,
) -> ClaimCheck:
    """:func:`claim_check` of the mean paired change ``after - before`` (the t interval of
    :func:`paired_change`, ``n - 1`` degrees of freedom)."""
    change = paired_change(before, after, confidence)
    differences = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    n = len(differences)
    standard_error = float(differences.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return claim_check(
        change["change"],
        change["low"],
        change["high"],
        standard_error,
        n,
        claimed_sign=claimed_sign,
        smallest_effect=smallest_effect,
        alpha=1 - confidence,
        power=power,
        dof=max(n - 1, 1),
    )


#: The fewest units per sample that :func:`half_sample_claim_check` splits: halves of 2 or more.
MIN_HALF_SAMPLE = 4


def half_sample_claim_check(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., float],
    *,
    claimed_sign: int,
    smallest_effect: float,
    confidence: float = 0.95,
    power: float = 0.8,
    n_splits: int = 200,
    seed: int = 0,
) -> ClaimCheck:
    """:func:`claim_check` of ``statistic(*samples)``, a contrast of set-level statistics (e.g. a
    diversity score per group), its standard error from the delete-d jackknife with half the
    units deleted (Shao & Wu 1989): ``statistic`` on ``n_splits`` random halves of every sample at
    once (drawn without replacement), ``se² = (r / d) · var`` of those values with ``r`` units kept
    and ``d`` deleted; normal interval ``estimate ± q · se``. ``n`` is the number of units over all
    samples (arrays whose first axis indexes units).

    Why not the bootstrap: a resample repeats units, and a statistic that counts distinct units (a
    diversity score) falls by an amount that depends on the set, so the bootstrap's interval shifts
    away from the estimate. Halves hold distinct units only; their own shift in level does not enter
    the standard error. A sample of fewer than :data:`MIN_HALF_SAMPLE` units has halves of one unit,
    whose set statistic (one image's diversity) cannot vary: the check is then *undecided*, with
    NaN bounds."""
    check_confidence(confidence)
    samples = [np.asarray(sample) for sample in samples]
    if not samples or any(len(sample) == 0 for sample in samples):
        raise ValueError("every sample needs at least one unit")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    estimate = float(statistic(*samples))
    total = sum(len(sample) for sample in samples)
    if any(len(sample) < MIN_HALF_SAMPLE for sample in samples):  # no spread to read: undecided
        nan = float("nan")
        return claim_check(
            estimate,
            nan,
            nan,
            nan,
            total,
            claimed_sign=claimed_sign,
            smallest_effect=smallest_effect,
            alpha=1 - confidence,
            power=power,
        )
    rng = np.random.default_rng(seed)
    kept = [len(sample) // 2 for sample in samples]
    values = np.array(
        [
            statistic(
                *[sample[rng.permutation(len(sample))[:r]] for sample, r in zip(samples, kept, strict=True)]
            )
            for _ in range(n_splits)
        ]
    )
    total_kept = sum(kept)
    standard_error = float(np.sqrt(total_kept / (total - total_kept) * values.var(ddof=1)))
    half_width = float(stats.norm.ppf(0.5 + confidence / 2)) * standard_error
    return claim_check(
        estimate,
        estimate - half_width,
        estimate + half_width,
        standard_error,
        total,
        claimed_sign=claimed_sign,
        smallest_effect=smallest_effect,
        alpha=1 - confidence,
        power=power,
    )


def spearman_claim_check(
    x: np.ndarray,
    y: np.ndarray,
    *,
    claimed_sign: int,
    smallest_effect: float,
    confidence: float = 0.95,
    power: float = 0.8,
) -> ClaimCheck:
    """:func:`claim_check` of Spearman's rank correlation of ``x`` and ``y`` (``(n,)`` each).

    The interval is Fisher's ``z = atanh(rho)`` with the variance ``1.06 / (n - 3)`` of Fieller,
    Hartley & Pearson (1957), mapped back; ``detectable`` is the correlation found with ``power``,
    ``tanh((q(1 - alpha/2) + q(power)) * sqrt(1.06 / (n - 3)))``, and ``smallest_effect`` is a
    correlation too (e.g. 0.1), found by ``3 + 1.06 ((q(1 - alpha/2) + q(power)) / atanh(it))^2``
    pairs. Fewer than 5 pairs give NaN bounds (*undecided*)."""
    check_confidence(confidence)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    n = len(x)
    rho = float(stats.spearmanr(x, y)[0]) if n >= 3 else float("nan")
    if not 0 < smallest_effect < 1:
        raise ValueError(f"smallest_effect must be a correlation in (0, 1), got {smallest_effect!r}")
    low = high = detectable = float("nan")
    q, q_power = float(stats.norm.ppf(0.5 + confidence / 2)), float(stats.norm.ppf(power))
    if n >= 5 and np.isfinite(rho):
        spread = np.sqrt(1.06 / (n - 3))
        centre = np.arctanh(np.clip(rho, -1 + 1e-12, 1 - 1e-12))
        low, high = float(np.tanh(centre - q * spread)), float(np.tanh(centre + q * spread))
        detectable = float(np.tanh((q + q_power) * spread))
    check = claim_check(
        rho, low, high, float("nan"), n, claimed_sign=claimed_sign, smallest_effect=smallest_effect
    )
    needed = float(np.ceil(3 + 1.06 * ((q + q_power) / np.arctanh(smallest_effect)) ** 2))
    return dataclasses.replace(check, detectable=detectable, n_to_detect=needed)
