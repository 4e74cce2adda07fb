"""Level sets and what the chapter measures on them: diversity (Vendi score of pixel and latent
features) and fidelity (the offline classifier's prompt accuracy and confidence) per equally
populated level set of ψ or ν, and the paper's claims checked with their power."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from geomlib.chapters.level_sets.measure import LevelSetSource
from geomlib.core.claims import ClaimCheck, half_sample_claim_check
from geomlib.core.diversity import pixel_features, vendi_diversity
from geomlib.core.stats import mean_interval
from geomlib.sd.mini.quality import AttributeClassifier, prompt_fidelity, to_tensor

#: The paper's claims (Fig. 5 and its text): per descriptor, the measures and the shape claimed.
#: ``"peak"``: rises then falls (the interior level sets above the first *and* above the last);
#: ``"top"``: highest in the top level set (the last above the first).
CLAIMS: dict[str, dict[str, str]] = {
    "local_scaling": {
        "vendi_pixels": "peak",
        "vendi_latents": "peak",
        "accuracy": "peak",
        "confidence": "peak",
    },
    "local_rank": {"accuracy": "top", "confidence": "top"},
}
SHAPE_LABELS: dict[str, str] = {
    "peak": "rises then falls",
    "top": "highest in the top level set",
}


def level_sets(values: np.ndarray, n_levels: int) -> np.ndarray:
    """``(N,)`` level-set index in ``0 .. n_levels - 1`` of ``values: (N,)`` by rank: equally
    populated (sizes differ by at most one), ties broken by position."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < n_levels or n_levels < 1:
        raise ValueError(f"need a 1-D array of at least n_levels={n_levels} values, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite")
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return ranks * n_levels // len(values)


def source_features(source: LevelSetSource) -> dict[str, np.ndarray]:
    """``{"pixels": (N, F), "latents": (N, 4 h w)}``: what diversity is measured on."""
    return {"pixels": pixel_features(source.images), "latents": source.latents.flatten(1).double().numpy()}


def source_fidelity(classifier: AttributeClassifier | None, source: LevelSetSource) -> dict[str, np.ndarray]:
    """``{"accuracy", "confidence": (N,)}`` of a source with captioned attributes; ``{}`` without a
    classifier or labels (e.g. Stable Diffusion, whose preference model is not offline)."""
    if classifier is None or source.labels is None:
        return {}
    scores = prompt_fidelity(classifier, to_tensor(source.images), source.labels)
    return {name: values.numpy() for name, values in scores.items()}


def _measures(source: LevelSetSource, fidelity: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image arrays of every measure: features (for Vendi) and fidelity scores."""
    return {f"vendi_{name}": values for name, values in source_features(source).items()} | fidelity


def _set_statistic(measure: str) -> Callable[[np.ndarray], float]:
    """A level set's value of a measure: the Vendi score of its features, or its mean score."""
    return vendi_diversity if measure.startswith("vendi_") else lambda values: float(np.mean(values))


def level_set_summary(
    sources: Sequence[LevelSetSource],
    table: pd.DataFrame,
    descriptor: str,
    n_levels: int,
    fidelity: dict[str, dict[str, np.ndarray]],
) -> pd.DataFrame:
    """One row per (source, level set of ``descriptor``): ``n``, the descriptor's ``low``,
    ``median`` and ``high``, the Vendi score of each feature set, and each fidelity score's mean with
    its 95 % t interval (``<score>_low``, ``<score>_high``). ``fidelity``: per source name, the
    output of :func:`source_fidelity`."""
    rows = []
    for source in sources:
        values = descriptor_values(table, source, descriptor)
        levels = level_sets(values, n_levels)
        measures = _measures(source, fidelity.get(source.name, {}))
        for level in range(n_levels):
            mask = levels == level
            row = {"source": source.name, "level": level + 1, "n": int(mask.sum())}
            row |= {
                "low": values[mask].min(),
                "median": float(np.median(values[mask])),
                "high": values[mask].max(),
            }
            for name, per_image in measures.items():
                if name.startswith("vendi_"):
                    row[name] = vendi_diversity(per_image[mask])
                else:
                    interval = mean_interval(per_image[mask])
                    row |= {
                        name: interval["mean"],
                        f"{name}_low": interval["low"],
                        f"{name}_high": interval["high"],
                    }
            rows.append(row)
    return pd.DataFrame(rows)


def descriptor_values(table: pd.DataFrame, source: LevelSetSource, descriptor: str) -> np.ndarray:
    """``(N,)`` the descriptor of the source's images, in image order."""
    rows = table[table["source"] == source.name].sort_values("image")
    if len(rows) != len(source) or (rows["image"].to_numpy() != np.arange(len(source))).any():
        raise ValueError(
            f"the table has {len(rows)} rows of source {source.name!r}, not its {len(source)} images"
        )
    return rows[descriptor].to_numpy(dtype=float)


def rise_and_fall(set_values: Sequence[float]) -> tuple[float, float]:
    """``(rise, fall)``: the interior level sets' mean minus the first, and minus the last."""
    values = np.asarray(set_values, dtype=float)
    if len(values) < 3:
        raise ValueError(f"a shape needs at least 3 level sets, got {len(values)}")
    interior = values[1:-1].mean()
    return float(interior - values[0]), float(interior - values[-1])


def shape_contrast(shape: str, set_values: Sequence[float]) -> float:
    """The contrast a claimed shape predicts positive, over the level sets' values in order.

    ``"peak"``: the smaller of the :func:`rise_and_fall`, positive only when both are: a monotone
    trend gives a negative value, so "rises then falls" is not confused with "keeps rising".
    ``"top"``: last minus first.
    """
    if shape == "peak":
        return min(rise_and_fall(set_values))
    if shape == "top":
        values = np.asarray(set_values, dtype=float)
        if len(values) < 3:
            raise ValueError(f"a shape needs at least 3 level sets, got {len(values)}")
        return float(values[-1] - values[0])
    raise ValueError(f"shape must be 'peak' or 'top', got {shape!r}")


def level_set_claims(
    sources: Sequence[LevelSetSource],
    table: pd.DataFrame,
    n_levels: int,
    fidelity: dict[str, dict[str, np.ndarray]],
    *,
    vendi_interest: float = 0.05,
    score_interest: float = 0.1,
    n_splits: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Every claim of :data:`CLAIMS` per source, as a four-way
    :func:`~geomlib.core.claims.half_sample_claim_check` of :func:`shape_contrast` (every level set
    split in random halves ``n_splits`` times).

    The effect of interest is ``vendi_interest`` times the source's mean level-set Vendi score for
    diversity, and ``score_interest`` standard deviations of the per-image score for fidelity.
    Returns one row per (descriptor, source, measure): ``shape``, ``effect``, ``low``, ``high``,
    ``verdict``, ``detectable``, ``interest``, ``n``, the ``rise`` and ``fall`` of the level sets'
    values (:func:`rise_and_fall`) and the :class:`ClaimCheck` in ``check``;
    measures a source lacks (fidelity without a classifier) are left out.
    """
    rows = []
    for descriptor, claims in CLAIMS.items():
        for source in sources:
            levels = level_sets(descriptor_values(table, source, descriptor), n_levels)
            measures = _measures(source, fidelity.get(source.name, {}))
            for measure, shape in claims.items():
                if measure not in measures:
                    continue
                per_image, statistic = measures[measure], _set_statistic(measure)
                groups = [per_image[levels == level] for level in range(n_levels)]
                set_values = [statistic(group) for group in groups]
                if measure.startswith("vendi_"):
                    interest = vendi_interest * float(np.mean(set_values))
                else:
                    interest = score_interest * float(np.std(per_image, ddof=1))
                check = _check(groups, statistic, shape, interest, n_splits, seed)
                rise, fall = rise_and_fall(set_values)
                row = _claim_row(descriptor, source.name, measure, shape, check)
                rows.append(row | {"rise": rise, "fall": fall})
    return pd.DataFrame(rows)


def _check(groups, statistic, shape: str, interest: float, n_splits: int, seed: int) -> ClaimCheck:
    def contrast(*picked):
        return shape_contrast(shape, [statistic(group) for group in picked])

    interest = interest if interest > 0 else float(np.finfo(float).eps)  # a constant score: no spread
    return half_sample_claim_check(
        groups, contrast, claimed_sign=1, smallest_effect=interest, n_splits=n_splits, seed=seed
    )


def _claim_row(descriptor: str, source: str, measure: str, shape: str, check: ClaimCheck) -> dict:
    return {
        "descriptor": descriptor,
        "source": source,
        "measure": measure,
        "shape": SHAPE_LABELS[shape],
        "effect": check.effect,
        "low": check.low,
        "high": check.high,
        "verdict": check.verdict,
        "detectable": check.detectable,
        "interest": check.smallest_effect,
        "n": check.n,
        "check": check,
    }


def verdict_counts(claims: pd.DataFrame) -> pd.DataFrame:
    """Per (descriptor, measure): how many sources gave each verdict."""
    counts = claims.groupby(["descriptor", "measure", "verdict"]).size().unstack("verdict", fill_value=0)
    return counts.reset_index()


def grid_indices(values: np.ndarray, n_levels: int, per_level: int) -> np.ndarray:
    """``(per_level, n_levels)`` image indices for a grid with one column per level set: in each,
    images at evenly spaced ranks of the descriptor (no random draw: the same grid every run)."""
    levels = level_sets(values, n_levels)
    columns = []
    for level in range(n_levels):
        members = np.flatnonzero(levels == level)
        members = members[np.argsort(values[members], kind="stable")]
        picks = np.linspace(0, len(members) - 1, min(per_level, len(members))).round().astype(int)
        columns.append(np.resize(members[picks], per_level))
    return np.stack(columns, axis=1)
