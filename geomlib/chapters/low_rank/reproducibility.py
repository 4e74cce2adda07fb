"""Reproducibility across architectures (Zhang et al., ICML 2024): from the same initial noise and
the same deterministic sampler, do two denoisers of different architectures, trained on the same
data, give the same sample? And how does that depend on whether they memorise or generalise?

Scores (the talk's, with a distance in place of SSCD similarity, since the samples are points of
``R^d``): two samples *match* when ``||x - y|| <= radius``, with ``radius`` a fraction of the data's
RMS norm ``sqrt(mean_i ||y_i||^2)``. Then

* the **RP score** is ``P(x^1 and x^2 match)`` over initial noises, ``x^1``, ``x^2`` the two models'
  samples from the same noise;
* the **GL score** is ``1 - P(x matches some training point y_i)``.

A ball rather than the cosine: within one rank-``r`` subspace the cosine of two independent Gaussian
samples is ``> 0.6`` with probability ``0.2`` when ``r = 3``, so cosine matches would happen by chance,
and a copy of a training point scaled by 2 is not a copy. Both scores are proportions with Wilson
intervals (:func:`geomlib.core.stats.proportion_interval`) over the noise draws.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from geomlib.chapters.low_rank.denoiser import TrainedSet
from geomlib.chapters.low_rank.molrg import MoLRG, empirical_posterior_mean
from geomlib.chapters.low_rank.sampling import ddim_sample, ddim_timesteps
from geomlib.core.stats import proportion_interval

Sampler = Callable[[torch.Tensor, int], torch.Tensor]
"""``(x_t: (B, d), t: int) -> x0_hat: (B, d)``: a posterior-mean predictor that DDIM can follow."""

POPULATION = "population PMP"
EMPIRICAL = "empirical PMP"


def data_scale(train: torch.Tensor) -> float:
    """``sqrt(mean_i ||y_i||^2)`` of ``train: (N, d)``: the unit of the match radius."""
    return float(train.double().pow(2).sum(-1).mean().sqrt())


def nearest_distance(x: torch.Tensor, train: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """``min_i ||x_j - y_i||`` for ``x: (M, d)``, ``train: (N, d)``: ``(M,)`` float64."""
    if x.ndim != 2 or train.ndim != 2 or x.shape[1] != train.shape[1] or len(train) == 0:
        raise ValueError(f"need x (M, d) and train (N, d), got {tuple(x.shape)} and {tuple(train.shape)}")
    chunks = [
        torch.cdist(x.double(), train[i : i + chunk_size].double()).min(1).values
        for i in range(0, len(train), chunk_size)
    ]
    return torch.stack(chunks).min(0).values


def rp_score(first: torch.Tensor, second: torch.Tensor, radius: float) -> dict[str, float]:
    """Share of pairs ``||first_j - second_j|| <= radius``, with its Wilson interval.

    ``first, second: (M, d)``, row ``j`` of each from the same initial noise. Returns
    :func:`geomlib.core.stats.proportion_interval`'s ``{"estimate", "low", "high", "n"}``.
    """
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"need two (M, d) sample sets, got {tuple(first.shape)} and {tuple(second.shape)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    distance = (first.double() - second.double()).norm(dim=-1)
    return proportion_interval(distance.cpu().numpy() <= radius)


def gl_score(samples: torch.Tensor, train: torch.Tensor, radius: float) -> dict[str, float]:
    """Share of ``samples: (M, d)`` farther than ``radius`` from every training point of
    ``train: (N, d)``, with its Wilson interval (as :func:`rp_score`)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return proportion_interval(nearest_distance(samples, train).cpu().numpy() > radius)


def population_sampler(model: MoLRG, alpha_bar: torch.Tensor) -> Sampler:
    """The closed-form PMP of ``model`` at each ``t``, in float64: what a denoiser that generalises
    perfectly learns."""
    return lambda x_t, t: model.posterior_mean(x_t.double(), float(alpha_bar[t])).to(x_t.dtype)


def empirical_sampler(train: torch.Tensor, alpha_bar: torch.Tensor) -> Sampler:
    """The PMP of the empirical distribution of ``train: (N, d)``, in float64: what a denoiser that
    minimises its training loss exactly learns (it memorises)."""
    points = train.double()
    return lambda x_t, t: empirical_posterior_mean(x_t.double(), points, float(alpha_bar[t])).to(x_t.dtype)


def _row(n_train: int, score: str, between: str, interval: dict[str, float]) -> dict:
    return {"n_train": n_train, "score": score, "between": between, **interval}


def reproducibility_scores(
    model: MoLRG,
    trained: Mapping[int, TrainedSet],
    alpha_bar: torch.Tensor,
    *,
    n_noise: int,
    sampling_steps: int,
    radius_fraction: float,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """RP and GL scores of the denoisers of each training set, from ``n_noise`` shared initial noises.

    Every sampler, at every size, runs the same DDIM schedule (``sampling_steps`` steps from ``T -
    1``) from the same ``(n_noise, d)`` standard normal noises (seed ``seed``); the match radius is
    ``radius_fraction`` times :func:`data_scale` of the training set. Besides the trained denoisers,
    two closed forms sample from the same noises: the population PMP (:func:`population_sampler`,
    the generalisation limit) and the empirical PMP of the training set (:func:`empirical_sampler`,
    the memorisation limit).

    Returns
    -------
    rows ``{"n_train", "score", "between", "estimate", "low", "high", "n"}``: ``score`` ``"RP"`` for
    every pair of trained architectures (``"a vs b"``), each architecture against each closed form,
    and the chance level ``"a vs b, other noise"`` (``b`` from a permutation of the noises: how often
    two samples match when nothing but the data ties them); ``score`` ``"GL"`` for every
    architecture and both closed forms.
    """
    if n_noise < 2 or sampling_steps < 1 or radius_fraction <= 0:
        raise ValueError(
            f"need n_noise >= 2, sampling_steps >= 1 and radius_fraction > 0,"
            f" got {n_noise}, {sampling_steps}, {radius_fraction}"
        )
    alpha_bar = alpha_bar.double().cpu()
    timesteps = ddim_timesteps(len(alpha_bar) - 1, sampling_steps)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_noise, model.dim, generator=generator)  # one set for every size
    shuffled = noise[torch.randperm(n_noise, generator=generator)]
    rows = []
    for n_train, trained_set in tqdm(sorted(trained.items()), desc="RP and GL", disable=not progress):
        train = trained_set.train
        radius = radius_fraction * data_scale(train)
        samples = {
            name: ddim_sample(net, alpha_bar, noise, timesteps) for name, net in trained_set.denoisers.items()
        }
        limits = {
            POPULATION: ddim_sample(population_sampler(model, alpha_bar), alpha_bar, noise, timesteps),
            EMPIRICAL: ddim_sample(empirical_sampler(train, alpha_bar), alpha_bar, noise, timesteps),
        }
        for first, second in itertools.combinations(samples, 2):
            rows.append(
                _row(n_train, "RP", f"{first} vs {second}", rp_score(samples[first], samples[second], radius))
            )
            other = ddim_sample(trained_set.denoisers[second], alpha_bar, shuffled, timesteps)
            rows.append(
                _row(
                    n_train,
                    "RP",
                    f"{first} vs {second}, other noise",
                    rp_score(samples[first], other, radius),
                )
            )
        for name, limit in itertools.product(samples, limits):
            rows.append(
                _row(n_train, "RP", f"{name} vs {limit}", rp_score(samples[name], limits[limit], radius))
            )
        for name, values in {**samples, **limits}.items():
            rows.append(_row(n_train, "GL", name, gl_score(values, train, radius)))
    return rows


def _select(rows: Sequence[dict], score: str, between: str) -> dict[int, dict]:
    return {row["n_train"]: row for row in rows if row["score"] == score and row["between"] == between}


def reproducibility_regimes(
    rows: Sequence[dict],
    architectures: Sequence[str],
    *,
    memorised_below: float = 0.1,
    generalised_above: float = 0.9,
) -> dict[str, list[int]]:
    """Sort the training-set sizes of :func:`reproducibility_scores` into the two regimes and the
    transition between them, by the GL scores of the trained ``architectures``.

    *Memorisation*: every architecture's GL is at most ``memorised_below`` (almost every sample is a
    training point). *Generalisation*: every architecture's GL is at least ``generalised_above`` times
    the population PMP's GL at that size (the perfect generaliser's, which is below 1 when the training
    points are dense enough for fresh samples to fall near them). *Transition*: the sizes between.
    Returns ``{"memorisation": [N...], "transition": [...], "generalisation": [...]}``.
    """
    reference = _select(rows, "GL", POPULATION)
    by_model = [_select(rows, "GL", name) for name in architectures]
    regimes: dict[str, list[int]] = {"memorisation": [], "transition": [], "generalisation": []}
    for n_train in sorted(reference):
        scores = [model[n_train]["estimate"] for model in by_model]
        if max(scores) <= memorised_below:
            regimes["memorisation"].append(n_train)
        elif min(scores) >= generalised_above * reference[n_train]["estimate"]:
            regimes["generalisation"].append(n_train)
        else:
            regimes["transition"].append(n_train)
    return regimes


def reproducibility_check(
    rows: Sequence[dict],
    architectures: Sequence[str],
    regimes: Mapping[str, Sequence[int]],
    *,
    high: float = 0.5,
) -> dict:
    """The talk's claim on a run of :func:`reproducibility_scores`: the RP score of the first two
    ``architectures`` is high in both regimes and lower in the transition between them.

    *High* in a regime: at every size of it, the RP interval's lower bound is at least ``high`` and
    above the upper bound of the chance level at that size (at small ``N`` two noises often lead to
    the same training point, so chance is high there). *Dip*: the lowest RP of the transition has an
    upper bound below the lower bound of each regime's lowest RP. The lowest RP of each regime is
    the row reported (a claim about a whole regime is as weak as its weakest size).

    Returns
    -------
    ``{"memorisation", "transition", "generalisation"}``: each None (no size in it) or its row
    (``n_train``, ``estimate``, ``low``, ``high``, ``n``) plus ``chance`` (that size's other-noise RP);
    ``"verdict"``: one line.
    """
    if len(architectures) < 2:
        raise ValueError("the check compares two architectures")
    pair = f"{architectures[0]} vs {architectures[1]}"
    rp, chance = _select(rows, "RP", pair), _select(rows, "RP", f"{pair}, other noise")
    summary: dict = {}
    for regime in ("memorisation", "transition", "generalisation"):
        sizes = [n for n in regimes.get(regime, []) if n in rp]
        lowest = min(sizes, key=lambda n: rp[n]["estimate"]) if sizes else None
        summary[regime] = None if lowest is None else {**rp[lowest], "chance": chance[lowest]["estimate"]}
    ends = [summary["memorisation"], summary["generalisation"]]
    if any(end is None for end in ends):
        missing = [
            name for name, end in zip(("memorisation", "generalisation"), ends, strict=True) if end is None
        ]
        summary["verdict"] = f"undecided: the sweep has no size in the {' or '.join(missing)} regime"
        return summary
    high_ends = [
        all(rp[n]["low"] >= high and rp[n]["low"] > _upper(chance, n) for n in regimes[regime] if n in rp)
        for regime in ("memorisation", "generalisation")
    ]
    dip = summary["transition"] is not None and all(
        summary["transition"]["high"] < end["low"] for end in ends
    )
    if all(high_ends) and dip:
        summary["verdict"] = "as claimed: high RP in both regimes and a dip between them"
    elif all(high_ends):
        summary["verdict"] = "partly: high RP in both regimes, no dip resolved between them"
    else:
        low = [name for name, ok in zip(("memorisation", "generalisation"), high_ends, strict=True) if not ok]
        summary["verdict"] = f"not as claimed: RP is not high in the {' and '.join(low)} regime"
    return summary


def _upper(rows_by_size: Mapping[int, dict], n_train: int) -> float:
    """The upper interval bound of the row of size ``n_train`` (-inf when absent or undefined)."""
    row = rows_by_size.get(n_train)
    return float("-inf") if row is None or np.isnan(row["high"]) else float(row["high"])


def reproducibility_table(rows: Sequence[dict]):
    """One row per training-set size, one column per score (``"RP: a vs b"``, ``"GL: a"``, ...), each
    cell ``"estimate [low, high]"``: the table the chapter prints. Returns a pandas DataFrame."""
    import pandas as pd

    cells = {
        (
            row["n_train"],
            f"{row['score']}: {row['between']}",
        ): f"{row['estimate']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
        for row in rows
    }
    table = pd.Series(cells).unstack()
    table.index.name = "N"
    return table[list(dict.fromkeys(f"{row['score']}: {row['between']}" for row in rows))]


def _interval(row: dict | None) -> str:
    if row is None:
        return "no size in this regime"
    return (
        f"N = {row['n_train']}: {row['estimate']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
        f" (chance {row['chance']:.2f}, {row['n']} noises)"
    )


def claim_lines(
    check: Mapping, rows: Sequence[dict], architectures: Sequence[str], regimes: Mapping[str, Sequence[int]]
) -> list[str]:
    """The claim check of :func:`reproducibility_check` as the lines the chapter prints, with the
    agreement of each trained model with the closed-form limit of each regime."""
    lines = [
        "claim (Zhang et al. 2024): two diffusion models of different architectures trained on the same"
        " data map the same noise to nearly the same sample, in the memorisation regime and in the"
        " generalisation regime, with a dip between",
        "regimes by GL: "
        + ", ".join(
            f"{name} N = {list(regimes[name])}" for name in ("memorisation", "transition", "generalisation")
        ),
    ]
    pair = f"{architectures[0]} vs {architectures[1]}"
    for regime in ("memorisation", "transition", "generalisation"):
        label = "lowest RP" if regime != "transition" else "lowest RP (the dip)"
        lines.append(f"  {regime:>14}: {label} of {pair}, {_interval(check[regime])}")
    for regime, limit in (("memorisation", EMPIRICAL), ("generalisation", POPULATION)):
        for name in architectures:
            chosen = [r for r in rows if r["score"] == "RP" and r["between"] == f"{name} vs {limit}"]
            chosen = [r for r in chosen if r["n_train"] in regimes[regime]]
            if chosen:
                values = ", ".join(f"N = {r['n_train']}: {r['estimate']:.2f}" for r in chosen)
                lines.append(f"  {regime} regime, RP of {name} vs the {limit}: {values}")
    lines.append(f"verdict: {check['verdict']}")
    return lines


def retraining_minutes(model_dir: str | Path) -> dict[str, float] | None:
    """What training one more model like the one in ``model_dir`` costs, from its ``training.json``
    (the project's mini model records its timings): ``{"denoiser", "total"}`` in minutes on the
    machine it was trained on, or None when the folder records no training (e.g. a hub model)."""
    record = Path(model_dir) / "training.json"
    if not record.is_file():
        return None
    timings = json.loads(record.read_text())["timings"]
    return {"denoiser": timings["denoiser_s"] / 60, "total": timings["training_total_s"] / 60}
