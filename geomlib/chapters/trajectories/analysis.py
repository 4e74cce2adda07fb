"""The claim checks of chapter 05: mean curves with intervals, the separation of memorised from
normal prompts (AUC at the last steps, per step, and from the whole trajectory), and the trend of
the descriptors with the guidance scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from geomlib.core.claims import paired_claim_check
from geomlib.core.descriptors import DESCRIPTOR_NAMES
from geomlib.core.stats import cross_validated_auc, mean_interval, paired_change, roc_auc


def mean_curves(
    table: pd.DataFrame, by: str, descriptors: Sequence[str] = DESCRIPTOR_NAMES, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean of each descriptor per (``by``, step) over trajectories, with a t confidence band.

    Returns columns ``by``, ``step``, ``descriptor``, ``mean``, ``low``, ``high``, ``n``; with a
    single trajectory the band is undefined (NaN bounds, :func:`geomlib.core.stats.mean_interval`).
    """
    rows = [
        {
            by: group,
            "step": step,
            "descriptor": name,
            **mean_interval(frame[name].to_numpy(dtype=float), confidence),
        }
        for (group, step), frame in table.groupby([by, "step"], sort=True)
        for name in descriptors
    ]
    return pd.DataFrame(rows)


def _last_steps_score(table: pd.DataFrame, descriptor: str, last_steps: int) -> pd.Series:
    """Per prompt: the descriptor averaged over the last ``last_steps`` steps and over seeds."""
    final = table[table["step"] > table["step"].max() - last_steps]
    return final.groupby("prompt")[descriptor].mean()


def separation(
    table: pd.DataFrame,
    memorised: Sequence[str],
    descriptor: str = "local_scaling",
    *,
    last_steps: int = 5,
    seed: int = 0,
) -> dict:
    """How well the descriptor's trajectory tells memorised prompts from normal ones.

    The unit is the prompt (seeds averaged). Returns a dict with

    * ``auc_last_steps``: AUC of the mean over the last ``last_steps`` steps, memorised as the
      positive class (above 0.5: memorised prompts score higher), and its Mann-Whitney ``p_value``;
    * ``auc_per_step``: ``(T,)`` the same AUC at every step;
    * ``auc_trajectory``: cross-validated AUC of a logistic regression on the whole standardised
      trajectory (out-of-fold scores, stratified folds; ``nan`` with fewer than 2 prompts a class);
    * ``n_memorised``, ``n_normal``.
    """
    per_prompt = table.groupby(["prompt", "step"])[descriptor].mean().unstack("step")  # (prompts, T)
    is_memorised = per_prompt.index.isin(list(memorised))
    if is_memorised.all() or not is_memorised.any():
        raise ValueError("the table needs both memorised and normal prompts")
    score = _last_steps_score(table, descriptor, last_steps).loc[per_prompt.index].to_numpy()
    positive, negative = score[is_memorised], score[~is_memorised]
    p_value = float(stats.mannwhitneyu(positive, negative, alternative="two-sided").pvalue)
    per_step = np.array(
        [roc_auc(per_prompt[c][is_memorised], per_prompt[c][~is_memorised]) for c in per_prompt]
    )
    return {
        "auc_last_steps": roc_auc(positive, negative),
        "p_value": p_value,
        "auc_per_step": per_step,
        "auc_trajectory": cross_validated_auc(per_prompt.to_numpy(), is_memorised, seed),
        "n_memorised": int(is_memorised.sum()),
        "n_normal": int((~is_memorised).sum()),
    }


def guidance_trend(
    table: pd.DataFrame,
    descriptor: str = "local_scaling",
    *,
    last_steps: int = 5,
    claimed_sign: int | None = None,
    smallest_effect: float | None = None,
) -> dict:
    """Does the descriptor late in denoising fall (or rise) with the guidance scale?

    Each (prompt, seed) is a block seen at every scale. Returns a dict with

    * ``per_scale``: a table of the mean over the last ``last_steps`` steps per scale with a 95 %
      t interval over blocks;
    * ``spearman``, ``spearman_p``: rank correlation of scale and the per-block score (pooled);
    * ``page_decreasing_p``: Page's trend test (blocks x ordered scales) against "no trend", for a
      decrease with the scale (``nan`` with fewer than 3 scales or 2 blocks);
    * ``change_low_to_high``: the paired change from the lowest to the highest scale, with CI;
    * ``claim``: with ``claimed_sign`` (``-1``: the paper's "higher CFG lowers it"), the four-way
      :func:`~geomlib.core.claims.paired_claim_check` of that change, the effect of interest
      ``smallest_effect`` (default 0.1 standard deviation of the blocks at the lowest scale);
      ``None`` without a claim or with fewer than 2 blocks.
    """
    final = table[table["step"] > table["step"].max() - last_steps]
    blocks = final.groupby(["prompt", "seed", "guidance_scale"])[descriptor].mean().unstack("guidance_scale")
    blocks = blocks.dropna()
    scales = blocks.columns.to_numpy(dtype=float)
    per_scale = pd.DataFrame([{"guidance_scale": s, **mean_interval(blocks[s].to_numpy())} for s in scales])
    long = blocks.stack().reset_index(name="score")
    rho, rho_p = (
        stats.spearmanr(long["guidance_scale"], long["score"]) if len(scales) > 1 else (np.nan, np.nan)
    )
    page_p = float("nan")
    if len(scales) >= 3 and len(blocks) >= 2:
        page_p = float(stats.page_trend_test(blocks.to_numpy()[:, ::-1]).pvalue)  # reversed: a decrease
    lowest, highest = blocks[scales.min()].to_numpy(), blocks[scales.max()].to_numpy()
    change = paired_change(lowest, highest)
    claim = None
    if claimed_sign is not None and len(blocks) >= 2:
        interest = 0.1 * float(lowest.std(ddof=1)) if smallest_effect is None else smallest_effect
        if interest > 0:
            claim = paired_claim_check(lowest, highest, claimed_sign=claimed_sign, smallest_effect=interest)
    return {
        "claim": claim,
        "per_scale": per_scale,
        "spearman": float(rho),
        "spearman_p": float(rho_p),
        "page_decreasing_p": page_p,
        "change_low_to_high": change,
        "n_blocks": len(blocks),
    }
