"""The effect of a corruption on a descriptor, and the paper's claim per group of corruptions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from geomlib.chapters.corruptions.corrupt import EXPECTED_SIGN, corruption_group
from geomlib.core.claims import VERDICTS, paired_claim_check
from geomlib.core.stats import paired_change


def severity_effects(
    table: pd.DataFrame,
    descriptor: str = "local_scaling",
    *,
    low: int = 0,
    high: int = 5,
    confidence: float = 0.95,
    smallest_effect: float | None = None,
) -> pd.DataFrame:
    """Per corruption, the paired change of ``descriptor`` from severity ``low`` to ``high``.

    Returns one row per corruption: ``group``, ``change``, ``low``/``high`` (the ``confidence``
    t interval over images), ``p_value``, ``n``, ``direction`` (``"up"``, ``"down"``, or
    ``"n.s."`` when the interval contains 0), and for the groups the paper makes a claim about,
    ``verdict`` (:func:`geomlib.core.claims.paired_claim_check` of the group's sign, with
    ``smallest_effect`` as the effect of interest; default 0.1 standard deviation of the
    descriptor at severity ``low``), ``detectable`` (the change found with 80 % power) and
    ``images_to_detect`` (about how many images would detect the effect of interest).
    """
    if descriptor not in table:
        raise ValueError(f"{descriptor!r} is not a column of the table ({list(table.columns)})")
    missing = {low, high} - set(table["severity"])
    if missing:
        raise ValueError(f"the table has no rows at severities {sorted(missing)}")
    if smallest_effect is None:
        smallest_effect = 0.1 * float(table.loc[table["severity"] == low, descriptor].std())
    rows = []
    for name, frame in table.groupby("corruption", observed=True, sort=True):
        wide = frame.pivot_table(index="image", columns="severity", values=descriptor)
        before, after = wide[low].to_numpy(), wide[high].to_numpy()
        group = corruption_group(str(name))
        row = {"corruption": name, "group": group, **paired_change(before, after, confidence)}
        if group in EXPECTED_SIGN:
            check = paired_claim_check(
                before,
                after,
                claimed_sign=EXPECTED_SIGN[group],
                smallest_effect=smallest_effect,
                confidence=confidence,
            )
            row |= {
                "verdict": check.verdict,
                "detectable": check.detectable,
                "images_to_detect": check.sample_to_detect,
            }
        rows.append(row)
    effects = pd.DataFrame(rows)
    effects = effects.rename(columns={"low": "ci_low", "high": "ci_high"})
    effects["direction"] = np.where(
        effects["ci_low"] > 0, "up", np.where(effects["ci_high"] < 0, "down", "n.s.")
    )
    return effects


def group_claims(effects: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim per group next to the measured changes.

    Returns one row per group of :data:`CORRUPTION_GROUPS`: the expected direction, the mean of
    the per-corruption changes, how many corruptions got each of the four verdicts of
    :func:`severity_effects`, the median change detectable with 80 % power and the median number of
    images that would detect the effect of interest, and a sign test p-value
    over the group's corruptions (do the changes' signs agree with the claim more often than chance?).
    """
    rows = []
    for group, sign in EXPECTED_SIGN.items():
        part = effects[effects["group"] == group]
        if part.empty:
            continue
        agreeing_signs = int((np.sign(part["change"]) == sign).sum())
        sign_test = stats.binomtest(agreeing_signs, len(part), 0.5, alternative="greater").pvalue
        rows.append(
            {
                "group": group,
                "paper": "raises ψ" if sign > 0 else "lowers ψ",
                "corruptions": len(part),
                "mean change": float(part["change"].mean()),
                **{verdict: int((part["verdict"] == verdict).sum()) for verdict in VERDICTS},
                "median detectable": float(part["detectable"].median()),
                "median images to detect": float(part["images_to_detect"].median()),
                "sign agrees": agreeing_signs,
                "sign-test p": float(sign_test),
            }
        )
    return pd.DataFrame(rows)
