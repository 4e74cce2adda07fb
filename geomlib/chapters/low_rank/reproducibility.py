"""Reproducibility across architectures (Zhang et al., ICML 2024): from the same initial noise and
the same deterministic sampler, do two denoisers of different architectures, trained on the same
data, give the same sample? And how does that depend on whether they memorise or generalise?

Scores (the talk's, with a distance in place of SSCD similarity, since the samples are points of
``R^d``): two samples *match* when ``||x - y|| <= radius``, with ``radius`` a fraction of the data's
RMS norm ``sqrt(E ||x_0||^2) = sqrt(sum_k pi_k r_k)`` (:func:`rms_norm`). Then

* the **RP score** is ``P(x^1 and x^2 match)`` over initial noises, ``x^1``, ``x^2`` the two models'
  samples from the same noise;
* the **GL score** is ``1 - P(x matches some training point y_i)``.

A ball rather than the cosine: within one rank-``r`` subspace the cosine of two independent Gaussian
samples is ``> 0.6`` with probability ``0.2`` when ``r = 3``, so cosine matches would happen by chance,
and a copy of a training point scaled by 2 is not a copy. Both scores are proportions with Wilson
intervals (:func:`geomlib.core.stats.proportion_interval`) over the noise draws: they describe the
networks that were trained (one per architecture and size), not every network of an architecture.
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
from geomlib.core.claims import ClaimCheck, claim_check
from geomlib.core.stats import proportion_difference_interval, proportion_interval

Sampler = Callable[[torch.Tensor, int], torch.Tensor]
"""``(x_t: (B, d), t: int) -> x0_hat: (B, d)``: a posterior-mean predictor that DDIM can follow."""

POPULATION = "population PMP"
EMPIRICAL = "empirical PMP"


def rms_norm(model: MoLRG) -> float:
    """``sqrt(E ||x_0||^2) = sqrt(sum_k pi_k r_k)`` of ``model``: the unit of the match radius (the
    population's, so the ball is the same at every training-set size)."""
    return float(sum(float(pi) * r for pi, r in zip(model.weights, model.ranks, strict=True)) ** 0.5)


def _check_samples(*samples: torch.Tensor) -> None:
    """A diverged sampler's NaN would count as a copy (NaN > radius is False): refuse it."""
    for values in samples:
        if not torch.isfinite(values).all():
            raise ValueError("samples must be finite (a sampler diverged?)")


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
    _check_samples(first, second)
    distance = (first.double() - second.double()).norm(dim=-1)
    return proportion_interval(distance.cpu().numpy() <= radius)


def gl_score(samples: torch.Tensor, train: torch.Tensor, radius: float) -> dict[str, float]:
    """Share of ``samples: (M, d)`` farther than ``radius`` from every training point of
    ``train: (N, d)``, with its Wilson interval (as :func:`rp_score`)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    _check_samples(samples)
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


def _sample(
    sampler: Sampler, alpha_bar: torch.Tensor, noise: torch.Tensor, timesteps: list[int]
) -> torch.Tensor:
    """DDIM samples of ``sampler`` on its own device (a network's parameters say which), on the CPU."""
    parameters = list(sampler.parameters()) if isinstance(sampler, torch.nn.Module) else []
    device = parameters[0].device if parameters else noise.device
    return ddim_sample(sampler, alpha_bar, noise.to(device), timesteps).cpu()


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

    Every sampler, at every size, runs the same DDIM schedule (``sampling_steps`` steps from
    ``T - 1``) from the same ``(n_noise, d)`` standard normal noises (seed ``seed``); the match
    radius is ``radius_fraction`` times :func:`rms_norm` of ``model``. Besides the trained
    denoisers, two closed forms sample from the same noises: the population PMP
    (:func:`population_sampler`, the generalisation limit) and the empirical PMP of the training set
    (:func:`empirical_sampler`, the memorisation limit).

    Returns
    -------
    rows ``{"n_train", "score", "between", "estimate", "low", "high", "n"}``: ``score`` ``"RP"`` for
    every pair of trained architectures (``"a vs b"``), each architecture against each closed form,
    and the chance level ``"a vs b, other noise"`` (``a``'s sample from noise ``j`` against ``b``'s
    from noise ``j + 1``: how often two samples match when nothing but the data ties them; at
    small ``N`` that is the chance that two noises lead to the same training point); ``score``
    ``"GL"`` for every architecture and both closed forms.
    """
    if n_noise < 2 or sampling_steps < 1 or radius_fraction <= 0:
        raise ValueError(
            f"need n_noise >= 2, sampling_steps >= 1 and radius_fraction > 0,"
            f" got {n_noise}, {sampling_steps}, {radius_fraction}"
        )
    alpha_bar = alpha_bar.double().cpu()
    timesteps = ddim_timesteps(len(alpha_bar) - 1, sampling_steps)
    noise = torch.randn(
        n_noise, model.dim, generator=torch.Generator().manual_seed(seed)
    )  # one set for all N
    radius = radius_fraction * rms_norm(model)
    rows = []
    for n_train, trained_set in tqdm(sorted(trained.items()), desc="RP and GL", disable=not progress):
        train = trained_set.train
        samples = {
            name: _sample(net, alpha_bar, noise, timesteps) for name, net in trained_set.denoisers.items()
        }
        limits = {
            POPULATION: _sample(population_sampler(model, alpha_bar), alpha_bar, noise, timesteps),
            EMPIRICAL: _sample(empirical_sampler(train, alpha_bar), alpha_bar, noise, timesteps),
        }
        for first, second in itertools.combinations(samples, 2):
            pair = f"{first} vs {second}"
            rows.append(_row(n_train, "RP", pair, rp_score(samples[first], samples[second], radius)))
            # samples are computed row by row, so shifting the rows pairs each with another noise's
            # sample (a shift has no fixed points, unlike a random permutation)
            other = samples[second].roll(1, dims=0)
            rows.append(_row(n_train, "RP", f"{pair}, other noise", rp_score(samples[first], other, radius)))
        for name, limit in itertools.product(samples, limits):
            rows.append(
                _row(n_train, "RP", f"{name} vs {limit}", rp_score(samples[name], limits[limit], radius))
            )
        for name, values in {**samples, **limits}.items():
            rows.append(_row(n_train, "GL", name, gl_score(values, train, radius)))
    return rows


def _select(rows: Sequence[dict], score: str, between: str) -> dict[int, dict]:
    return {row["n_train"]: row for row in rows if row["score"] == score and row["between"] == between}


REGIMES = ("memorisation", "transition", "generalisation", "unresolved")


def reproducibility_regimes(
    rows: Sequence[dict],
    architectures: Sequence[str],
    *,
    memorised_below: float = 0.1,
    generalised_above: float = 0.9,
    resolvable_above: float = 0.5,
) -> dict[str, list[int]]:
    """Sort the training-set sizes of :func:`reproducibility_scores` into the two regimes and the
    transition between them, by the GL scores of the trained ``architectures``.

    *Unresolved*: the population PMP's GL is below ``resolvable_above`` (fresh samples fall so often
    within the radius of a training point that the radius cannot tell a copy from a new sample).
    Otherwise *memorisation*: every architecture's GL is at most ``memorised_below`` (almost every
    sample is a training point); *generalisation*: every architecture's GL is at least
    ``generalised_above`` times the population PMP's (a perfect generaliser's GL, below 1 when the
    training points are dense); *transition*: the others. Returns ``{regime: [N, ...]}`` for the
    four names of :data:`REGIMES`.
    """
    reference = _select(rows, "GL", POPULATION)
    by_model = [_select(rows, "GL", name) for name in architectures]
    regimes: dict[str, list[int]] = {name: [] for name in REGIMES}
    for n_train in sorted(reference):
        scores = [model[n_train]["estimate"] for model in by_model]
        population = reference[n_train]["estimate"]
        if population < resolvable_above:
            regimes["unresolved"].append(n_train)
        elif max(scores) <= memorised_below:
            regimes["memorisation"].append(n_train)
        elif min(scores) >= generalised_above * population:
            regimes["generalisation"].append(n_train)
        else:
            regimes["transition"].append(n_train)
    return regimes


def _hits(row: dict) -> np.ndarray:
    """``(n,)`` bool with the row's share of ``True``: the sample behind a proportion row."""
    return np.arange(row["n"]) < round(row["estimate"] * row["n"])


def _at_confidence(row: dict, confidence: float) -> dict[str, float]:
    """The row's proportion with its Wilson interval at another ``confidence``."""
    return proportion_interval(_hits(row), confidence)


def reproducibility_check(
    rows: Sequence[dict],
    architectures: Sequence[str],
    regimes: Mapping[str, Sequence[int]],
    *,
    high: float = 0.5,
    confidence: float = 0.95,
) -> dict:
    """The talk's claim on a run of :func:`reproducibility_scores`: the RP score of the first two
    ``architectures`` is high in both regimes and lower in the transition between them.

    *High* in a regime: at every size of it, the RP interval's lower bound is at least ``high`` and
    above the upper bound of the chance level at that size (at small ``N`` two noises often lead to
    the same training point, so chance is high there). *Dip*: the lowest RP of the transition, with
    its interval widened for having been picked as the lowest of ``k`` (Bonferroni, confidence
    ``1 - (1 - confidence) / k``), lies wholly below the lower bound of each regime's lowest RP.
    The regimes must come in order of ``N`` (memorisation, transition, generalisation); every size
    named in ``regimes`` must have its RP and chance rows.

    Returns
    -------
    ``{"memorisation", "transition", "generalisation"}``: each None (no size in it) or the row of its
    lowest RP (``n_train``, ``estimate``, ``low``, ``high``, ``n``) plus ``chance`` (that size's
    other-noise RP); the transition's also ``adjusted_high``; ``"verdict"``: one line.
    """
    if len(architectures) < 2:
        raise ValueError("the check compares two architectures")
    pair = f"{architectures[0]} vs {architectures[1]}"
    rp, chance = _select(rows, "RP", pair), _select(rows, "RP", f"{pair}, other noise")
    named = {
        regime: sorted(regimes.get(regime, [])) for regime in ("memorisation", "transition", "generalisation")
    }
    missing = sorted(n for sizes in named.values() for n in sizes if n not in rp or n not in chance)
    if missing:
        raise ValueError(f"the rows have no RP or chance level of {pair} at N = {missing}")
    summary: dict = {}
    for regime, sizes in named.items():
        lowest = min(sizes, key=lambda n: rp[n]["estimate"]) if sizes else None
        summary[regime] = None if lowest is None else {**rp[lowest], "chance": chance[lowest]["estimate"]}
    if summary["transition"] is not None:
        adjusted = 1 - (1 - confidence) / len(named["transition"])
        summary["transition"]["adjusted_high"] = _at_confidence(summary["transition"], adjusted)["high"]
    summary["verdict"] = _verdict(summary, named, rp, chance, high)
    return summary


def _verdict(summary: dict, named: dict, rp: dict, chance: dict, high: float) -> str:
    ends = ("memorisation", "generalisation")
    absent = [regime for regime in ends if not named[regime]]
    if absent:
        return f"undecided: the sweep has no size in the {' or '.join(absent)} regime"
    order = [n for regime in ("memorisation", "transition", "generalisation") for n in named[regime]]
    if order != sorted(order):
        return f"undecided: the regimes do not follow each other in N ({named})"
    low = [
        regime
        for regime in ends
        if not all(rp[n]["low"] >= high and rp[n]["low"] > chance[n]["high"] for n in named[regime])
    ]
    if low:
        return f"not as claimed: RP is not high (and above chance) in the {' and '.join(low)} regime"
    if summary["transition"] is None:
        return "high RP in both regimes, as claimed; undecided on the dip: no size lies between them"
    if all(summary["transition"]["adjusted_high"] < summary[regime]["low"] for regime in ends):
        return "as claimed: high RP in both regimes and a dip between them"
    return "partly as claimed: high RP in both regimes, but no dip between them resolved at this sample size"


def reproducibility_claims(
    check: Mapping, *, high: float = 0.5, interest: float = 0.1
) -> list[tuple[str, ClaimCheck]]:
    """The parts of the claim of :func:`reproducibility_check` as four-way checks with their power
    (:func:`~geomlib.core.claims.claim_check`; effect of interest ``interest``, in RP):

    * per regime, its lowest RP above ``high`` (the Wilson interval of RP minus ``high``);
    * per regime, the dip: that RP minus the transition's lowest (Newcombe's interval,
      :func:`~geomlib.core.stats.proportion_difference_interval`; at 95 %, not widened for the
      choice of the lowest, as the composite verdict is).

    Returns ``[(label, check), ...]``, leaving out the parts whose regime has no size."""
    claims = []
    for regime in ("memorisation", "generalisation"):
        row = check.get(regime)
        if row is None:
            continue
        above = claim_check(
            row["estimate"] - high, row["low"] - high, row["high"] - high, None, row["n"],
            claimed_sign=1, smallest_effect=interest,
        )  # fmt: skip
        claims.append((f"{regime}: lowest RP above {high:g}", above))
        dip = check.get("transition")
        if dip is not None:
            gap = proportion_difference_interval(_hits(row), _hits(dip))
            drop = claim_check(
                gap["difference"], gap["low"], gap["high"], None, int(gap["n"]),
                claimed_sign=1, smallest_effect=interest,
            )  # fmt: skip
            claims.append((f"dip: {regime}'s lowest RP above the transition's", drop))
    return claims


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
    adjusted = (
        f"; upper bound {row['adjusted_high']:.2f} as the lowest of its regime"
        if "adjusted_high" in row
        else ""
    )
    return (
        f"N = {row['n_train']}: {row['estimate']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
        f" (chance {row['chance']:.2f}, {row['n']} noises{adjusted})"
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
        "regimes by GL: " + ", ".join(f"{name} N = {list(regimes.get(name, []))}" for name in REGIMES),
    ]
    pair = f"{architectures[0]} vs {architectures[1]}"
    for regime in ("memorisation", "transition", "generalisation"):
        label = "lowest RP" if regime != "transition" else "lowest RP (the dip)"
        lines.append(f"  {regime:>14}: {label} of {pair}, {_interval(check.get(regime))}")
    for regime, limit in (("memorisation", EMPIRICAL), ("generalisation", POPULATION)):
        for name in architectures:
            chosen = [r for r in rows if r["score"] == "RP" and r["between"] == f"{name} vs {limit}"]
            chosen = [r for r in chosen if r["n_train"] in regimes.get(regime, [])]
            if chosen:
                values = ", ".join(f"N = {r['n_train']}: {r['estimate']:.2f}" for r in chosen)
                lines.append(f"  {regime} regime, RP of {name} vs the {limit}: {values}")
    for label, part in reproducibility_claims(check):
        lines.append(f"  four-way, {label}: {part.text(unit='noises per model')}")
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
