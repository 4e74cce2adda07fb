"""The effect of a corruption on a descriptor, and the paper's claim per group of corruptions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from geomlib.chapters.corruptions.corrupt import EXPECTED_SIGN, corruption_group
from geomlib.core.stats import paired_change


def severity_effects(
    table: pd.DataFrame,
    descriptor: str = "local_scaling",
    *,
    low: int = 0,
    high: int = 5,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per corruption, the paired change of ``descriptor`` from severity ``low`` to ``high``.

    Returns one row per corruption: ``group``, ``change``, ``low``/``high`` (the ``confidence``
    t interval over images), ``p_value``, ``n``, and ``direction`` (``"up"``, ``"down"``, or
    ``"n.s."`` when the interval contains 0).
    """
    if descriptor not in table:
        raise ValueError(f"{descriptor!r} is not a column of the table ({list(table.columns)})")
    missing = {low, high} - set(table["severity"])
    if missing:
        raise ValueError(f"the table has no rows at severities {sorted(missing)}")
    rows = []
    for name, frame in table.groupby("corruption", observed=True, sort=True):
        wide = frame.pivot_table(index="image", columns="severity", values=descriptor)
        effect = paired_change(wide[low].to_numpy(), wide[high].to_numpy(), confidence)
        rows.append({"corruption": name, "group": corruption_group(str(name)), **effect})
    effects = pd.DataFrame(rows)
    effects = effects.rename(columns={"low": "ci_low", "high": "ci_high"})
    effects["direction"] = np.where(
        effects["ci_low"] > 0, "up", np.where(effects["ci_high"] < 0, "down", "n.s.")
    )
    return effects


def group_claims(effects: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim per group next to the measured changes.

    Returns one row per group of :data:`CORRUPTION_GROUPS`: the expected direction, the mean of
    the per-corruption changes, how many corruptions moved as expected (interval excluding 0 on the
    expected side), how many the other way, and a sign test p-value over the group's corruptions
    (do the changes' signs agree with the claim more often than chance?).
    """
    rows = []
    for group, sign in EXPECTED_SIGN.items():
        part = effects[effects["group"] == group]
        if part.empty:
            continue
        expected = (part["ci_low"] > 0) if sign > 0 else (part["ci_high"] < 0)
        opposite = (part["ci_high"] < 0) if sign > 0 else (part["ci_low"] > 0)
        agreeing_signs = int((np.sign(part["change"]) == sign).sum())
        sign_test = stats.binomtest(agreeing_signs, len(part), 0.5, alternative="greater").pvalue
        rows.append(
            {
                "group": group,
                "paper": "raises ψ" if sign > 0 else "lowers ψ",
                "corruptions": len(part),
                "mean change": float(part["change"].mean()),
                "as claimed (CI excludes 0)": int(expected.sum()),
                "opposite (CI excludes 0)": int(opposite.sum()),
                "sign agrees": agreeing_signs,
                "sign-test p": float(sign_test),
            }
        )
    return pd.DataFrame(rows)
