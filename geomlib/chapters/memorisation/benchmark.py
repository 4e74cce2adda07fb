"""The benchmark's statistics: per prompt, each detector's score; per contrast (memorised against
each other kind), each detector's AUC with a bootstrap interval, its true-positive rate at 1 %
false positives, its cost, its difference from the contrast's best detector, and what the sample
can resolve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geomlib.core import stats
from geomlib.core.claims import claim_check
from geomlib.core.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_SYMBOLS


@dataclass(frozen=True)
class Detector:
    """One score of the benchmark.

    Attributes
    ----------
    column : its column in the per-prompt table.
    label : its name in tables and figures.
    family : the method it belongs to (whose seconds it costs).
    direction : ``+1`` memorised prompts are claimed to score higher, ``-1`` lower, ``0`` no
        direction is claimed (the AUC is reported as measured, memorised higher; the ROC curve and
        the true-positive rate take the better orientation, chosen after seeing the data).
    """

    column: str
    label: str
    family: str
    direction: int


#: The detectors, in table order. The decoder's claim is a difference without a stated direction
#: (paper, Fig. 6a); Wen et al. flag a large text-conditional noise; a posterior mean pulled onto one
#: training image responds less to x_t (a smaller Jacobian); a copy lies near a training image.
DETECTORS: tuple[Detector, ...] = (
    *(
        Detector(f"decoder_{name}", f"decoder {DESCRIPTOR_SYMBOLS[name]}, end of trajectory", "decoder", 0)
        for name in DESCRIPTOR_NAMES
    ),
    Detector("decoder_trajectory", "decoder ψ ν δ trajectory (CV logistic)", "decoder", 1),
    Detector("noise_difference", "text-conditional noise (Wen et al.)", "noise_difference", 1),
    Detector("posterior_scaling", "posterior-mean Jacobian ψ", "posterior_mean", -1),
    Detector("posterior_rank", "posterior-mean Jacobian ν", "posterior_mean", -1),
    Detector("nearest_distance", "nearest training image (pixels)", "nearest", -1),
)


def per_prompt_scores(
    keys: Sequence[tuple[str, int]],
    kinds: dict[str, list[str]],
    detector_rows: dict[str, dict[str, np.ndarray]],
    last_steps: int,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The per-sample detector outputs averaged over seeds, one row per prompt.

    Parameters
    ----------
    keys
        the ``N`` (prompt, seed) samples.
    kinds
        ``{kind: prompts}``; every prompt of ``keys`` has one kind.
    detector_rows
        ``{family: {column: (N, ...)}}`` as the detectors return them, each with ``seconds: (N,)``;
        the ``"decoder"`` family has ``(N, S)`` descriptors at ``S`` steps.
    last_steps
        how many of the decoder's last described steps its "end of trajectory" scores average.

    Returns
    -------
    ``(table, trajectories)``: the table has ``prompt``, ``kind``, one column per detector score
    (except the cross-validated one) and ``seconds_<family>`` (summed over the prompt's seeds);
    ``trajectories`` maps each prompt to its ``(3 * S,)`` decoder features, averaged over seeds.
    """
    kind_of = {prompt: kind for kind, prompts in kinds.items() for prompt in prompts}
    missing = {p for p, _ in keys} - set(kind_of)
    if missing:
        raise ValueError(f"prompts without a kind: {sorted(missing)[:3]}")
    samples = pd.DataFrame({"prompt": [p for p, _ in keys], "seed": [s for _, s in keys]})
    features = []
    for family, rows in detector_rows.items():
        samples[f"seconds_{family}"] = rows["seconds"]
        if family == "decoder":
            for name in DESCRIPTOR_NAMES:
                samples[f"decoder_{name}"] = rows[name][:, -last_steps:].mean(axis=1)
            features = [f"feature_{i}" for i in range(3 * rows[DESCRIPTOR_NAMES[0]].shape[1])]
            stacked = np.concatenate([rows[name] for name in DESCRIPTOR_NAMES], axis=1)
            samples[features] = stacked
        else:
            for column, values in rows.items():
                if column != "seconds" and column != "nearest_index":
                    samples[column] = values
    seconds = [c for c in samples if c.startswith("seconds_")]
    grouped = samples.groupby("prompt", sort=False)
    table = grouped.mean(numeric_only=True).drop(columns=["seed", *features])
    table[seconds] = grouped[seconds].sum()
    table = table.reset_index()
    table.insert(1, "kind", table["prompt"].map(kind_of))
    trajectories = {prompt: frame[features].to_numpy().mean(axis=0) for prompt, frame in grouped}
    return table, trajectories


def oriented_scores(
    detector: Detector, positive: np.ndarray, negative: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scores oriented so that memorised is higher: by the claimed direction, or for a detector
    without one, by the direction of its measured AUC."""
    sign = detector.direction or (1 if stats.roc_auc(positive, negative) >= 0.5 else -1)
    return sign * positive, sign * negative


def contrast_scores(
    table: pd.DataFrame, trajectories: dict[str, np.ndarray], other: str, detector: Detector, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Memorised and ``other`` prompts' scores of ``detector``, as measured (not oriented); the
    trajectory classifier's are out-of-fold scores of a model fitted on this contrast's prompts."""
    rows = table[table["kind"].isin(["memorised", other])]
    is_memorised = (rows["kind"] == "memorised").to_numpy()
    if detector.column == "decoder_trajectory":
        features = np.stack([trajectories[p] for p in rows["prompt"]])
        scores = stats.out_of_fold_scores(features, is_memorised, seed)
        if scores is None:
            scores = np.full(len(rows), np.nan)
    else:
        scores = rows[detector.column].to_numpy(dtype=float)
    return scores[is_memorised], scores[~is_memorised]


def benchmark_table(
    table: pd.DataFrame,
    trajectories: dict[str, np.ndarray],
    contrasts: Sequence[str],
    detectors: Sequence[Detector] = DETECTORS,
    *,
    false_positive_rate: float = 0.01,
    auc_interest: float = 0.1,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (contrast, detector): ``auc`` with its bootstrap 95 % interval (``low``,
    ``high``; prompts resampled within each kind), ``tpr`` at ``false_positive_rate``, seconds per
    prompt of its family, and its paired-bootstrap ``difference`` from the contrast's best AUC
    (``difference_low``, ``difference_high``; 0 for the best itself). A detector with a claimed
    direction gets the four-way ``verdict`` of the claim that it detects memorisation (its AUC
    above 0.5; :func:`~geomlib.core.claims.claim_check` of ``auc - 0.5``, the effect of interest
    ``auc_interest``) and the AUC offset from 0.5 its sample finds with 80 % power (``detectable``);
    one without a claimed direction has neither.

    ``contrasts``: the kinds the memorised prompts are told apart from. Each AUC is the chance that
    a memorised prompt scores beyond another in the detector's claimed direction (higher for
    ``direction = 0``): below 0.5 the detector points the other way. The best detector is the one
    farthest above 0.5 (on either side, for one without a claimed direction); differences compare
    each detector in its better orientation with it."""
    rows = []
    for other in contrasts:
        scored = {}
        for detector in detectors:
            if f"seconds_{detector.family}" not in table:  # a family this run did not compute
                continue
            positive, negative = contrast_scores(table, trajectories, other, detector, seed)
            if np.isnan(positive).any() or np.isnan(negative).any():
                continue
            scored[detector] = (positive, negative)
        for detector, (positive, negative) in scored.items():
            claimed = detector.direction or 1  # in the claimed direction: above 0.5 detects as claimed
            interval = stats.auc_interval(
                claimed * positive, claimed * negative, n_resamples=n_resamples, seed=seed
            )
            oriented = oriented_scores(detector, positive, negative)
            seconds = table.loc[table["kind"].isin(["memorised", other]), f"seconds_{detector.family}"]
            rows.append(
                {
                    "contrast": other,
                    "detector": detector.label,
                    "family": detector.family,
                    "direction": detector.direction,
                    **interval,
                    "tpr": stats.true_positive_rate_at(*oriented, false_positive_rate),
                    "seconds_per_prompt": float(seconds.mean()),
                    **_auc_claim(detector, interval, auc_interest),
                }
            )
        _add_differences(rows, scored, other, n_resamples, seed)
    return pd.DataFrame(rows)


def _auc_claim(detector: Detector, interval: dict, interest: float) -> dict:
    """``verdict`` and ``detectable`` of "this detector separates memorised prompts in its claimed
    direction" (NaN and ``None`` without a claimed direction)."""
    if detector.direction == 0:
        return {"verdict": None, "detectable": float("nan")}
    check = claim_check(
        interval["auc"] - 0.5,
        interval["low"] - 0.5,
        interval["high"] - 0.5,
        interval["standard_error"],
        interval["n_positive"] + interval["n_negative"],
        claimed_sign=1,
        smallest_effect=interest,
    )
    return {"verdict": check.verdict, "detectable": check.detectable}


def _strength(detector: Detector, auc: float) -> float:
    """How far ``auc`` (in the claimed direction) lies above chance (either side, without a claim)."""
    return abs(auc - 0.5) if detector.direction == 0 else auc - 0.5


def _add_differences(rows: list[dict], scored: dict, other: str, n_resamples: int, seed: int) -> None:
    """Each row of contrast ``other``: its oriented AUC minus the best one's, paired bootstrap."""
    mine = [row for row in rows if row["contrast"] == other]
    by_label = {detector.label: detector for detector in scored}
    best = max(mine, key=lambda row: _strength(by_label[row["detector"]], row["auc"]))
    best_scores = oriented_scores(by_label[best["detector"]], *scored[by_label[best["detector"]]])
    for row in mine:
        scores = oriented_scores(by_label[row["detector"]], *scored[by_label[row["detector"]]])
        pair = stats.auc_difference_interval(
            np.stack([scores[0], best_scores[0]]),
            np.stack([scores[1], best_scores[1]]),
            n_resamples=n_resamples,
            seed=seed,
        )
        row["best"] = row["detector"] == best["detector"]
        row["difference"], row["difference_low"], row["difference_high"] = (
            pair["difference"],
            pair["low"],
            pair["high"],
        )


def roc_points(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical ROC curve, flagging scores ``>= threshold`` for every observed threshold:
    ``(false_positive_rate, true_positive_rate)``, both from 0 to 1."""
    thresholds = np.unique(np.concatenate([positive, negative]))[::-1]
    tpr = np.array([0.0, *[(positive >= t).mean() for t in thresholds]])
    fpr = np.array([0.0, *[(negative >= t).mean() for t in thresholds]])
    return fpr, tpr


def verdict_lines(
    benchmark: pd.DataFrame, n_memorised: int, contrasts: Sequence[str], labels: dict
) -> list[str]:
    """One paragraph per contrast: the best detector, those the sample cannot tell from it, the
    paper's decoder detectors against chance, and the smallest AUC differences the sample resolves."""
    lines = []
    for other in contrasts:
        rows = benchmark[benchmark["contrast"] == other]
        n_other = int(rows["n_negative"].iloc[0])
        best = rows[rows["best"]].iloc[0]
        tied = rows[~rows["best"] & (rows["difference_high"] >= 0)]["detector"].tolist()
        against_chance = stats.smallest_auc_offset(n_memorised, n_other)
        decoder = rows[rows["family"] == "decoder"]
        separating = [
            f"{r.detector} ({'higher' if r.low > 0.5 else 'lower'})"
            for r in decoder.itertuples()
            if r.low > 0.5 or r.high < 0.5
        ]
        claimed = rows[rows["direction"] != 0]
        against = claimed[claimed["high"] < 0.5]["detector"].tolist()
        lines.append(
            f"memorised ({n_memorised}) vs {labels[other]} ({n_other} prompts): best {best['detector']}, AUC"
            f" {best['auc']:.3f} [{best['low']:.3f}, {best['high']:.3f}], TPR at 1 % FPR {best['tpr']:.2f};"
            f" not distinguishable from it at this sample: {', '.join(tied) or 'none'}."
            f" Against their claimed direction beyond the interval: {', '.join(against) or 'none'}."
            f" The paper's decoder descriptors (no direction claimed): {', '.join(separating) or 'none'}"
            f" separate memorised prompts beyond their 95 % interval (decoder AUCs, memorised higher:"
            f" {', '.join(f'{a:.2f}' for a in decoder['auc'])})."
            f" Resolvable at 80 % power: an AUC {against_chance:.2f} from 0.5; a difference of"
            f" {stats.smallest_auc_difference(n_memorised, n_other):.2f} between independent detectors"
            " near 0.5 (less for correlated ones: see each difference's interval)."
        )
    return lines


def nearest_image_shares(
    keys: Sequence[tuple[str, int]],
    kinds: dict[str, list[str]],
    nearest_index: np.ndarray,
    memorised_index: dict[str, int],
) -> pd.DataFrame:
    """What the samples of each kind copy, by their nearest training image (``nearest_index: (N,)``
    rows of the searched images, ``memorised_index`` the rows of the memorised captions' images).

    One row per kind: the share of samples whose nearest training image is some memorised image
    (``any_memorised``) and, for the memorised captions and their one-attribute changes (paired by
    position in ``kinds``), the share whose nearest is the caption's own memorised image
    (``own_image``), each with a Wilson 95 % interval over samples.
    """
    memorised_rows = set(memorised_index.values())
    source = dict(zip(kinds.get("changed_attribute", []), kinds.get("memorised", []), strict=False))
    source |= {prompt: prompt for prompt in kinds.get("memorised", [])}
    position = {key: i for i, key in enumerate(keys)}
    rows = []
    for kind, prompts in kinds.items():
        mine = [(prompt, position[key]) for key in keys for prompt in [key[0]] if prompt in set(prompts)]
        any_memorised = stats.proportion_interval(
            np.array([nearest_index[i] in memorised_rows for _, i in mine])
        )
        row = {"kind": kind, "samples": len(mine), "any_memorised": any_memorised["estimate"]}
        row |= {"any_low": any_memorised["low"], "any_high": any_memorised["high"]}
        if kind in ("memorised", "changed_attribute"):
            own = [nearest_index[i] == memorised_index.get(source[prompt], -1) for prompt, i in mine]
            interval = stats.proportion_interval(np.array(own))
            row |= {
                "own_image": interval["estimate"],
                "own_low": interval["low"],
                "own_high": interval["high"],
            }
        rows.append(row)
    return pd.DataFrame(rows)


def benchmark_view(benchmark: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The table the book prints: per contrast and detector, AUC with its interval, the four-way
    verdict of its claimed direction, the TPR at 1 % FPR, seconds per prompt and the difference
    from the best detector with its interval."""

    def interval(value: float, low: float, high: float, signed: bool = False) -> str:
        spec = "+.3f" if signed else ".3f"
        return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"

    return pd.DataFrame(
        {
            "memorised vs": benchmark["contrast"].map(labels),
            "detector": benchmark["detector"],
            "AUC [95 %]": [interval(r.auc, r.low, r.high) for r in benchmark.itertuples()],
            "claim (AUC > 0.5)": benchmark["verdict"].fillna("no direction claimed"),
            "TPR @ 1 % FPR": benchmark["tpr"].round(3),
            "s / prompt": benchmark["seconds_per_prompt"].round(3),
            "vs best [95 %]": [
                "best" if r.best else interval(r.difference, r.difference_low, r.difference_high, signed=True)
                for r in benchmark.itertuples()
            ],
        }
    )
