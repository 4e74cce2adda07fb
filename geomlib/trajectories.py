"""The decoder's geometry along denoising trajectories (paper section 4, Fig. 6).

At every step of the sampler the current latent ``x_t`` is a point of the decoder's input space;
ψ, ν, δ of the decoder there show how the geometry the sample lands in forms during denoising.
Two comparisons, on the same seeds (the same initial noise for every condition):

* memorised vs normal prompts: the offline model's memorised captions vs novel captions, or two
  prompt files for Stable Diffusion (e.g. Wen et al. 2024's memorised prompts vs COCO captions);
* classifier-free guidance scales on the same prompts.

Trajectories and their descriptors are cached per (prompt, seed, guidance scale) with one entry
per step, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from scipy import stats
from tqdm.auto import tqdm

from geomlib.cache import ResultCache
from geomlib.corruptions import (
    DESCRIPTORS,
    SYMBOLS,
    DescriptorSettings,
    describe_latents,
    paired_change,
)
from geomlib.latent import decode_latents, generate, initial_latents
from geomlib.mini.world import World, caption
from geomlib.plotting import DESCRIPTOR_LABELS, plot_band, slider_animation

Source = Literal["latent", "predicted_x0"]

#: Budgets of chapter 05. ``guidance``: the scale of the memorised-vs-normal comparison;
#: ``guidance_scales`` the sweep, run on ``n_guidance_prompts`` of the normal prompts;
#: ``last_steps``: how many final steps the summary statistics average; ``k``, ``n_dirs``,
#: ``radius``, ``batch_size``, ``chunk_size``: see :class:`~geomlib.corruptions.DescriptorSettings`.
TRAJECTORY_BUDGETS: dict[str, dict] = {
    "smoke": dict(
        steps=3,
        n_memorised=2,
        n_normal=2,
        n_seeds=1,
        guidance=7.5,
        guidance_scales=(1.0, 7.5),
        n_guidance_prompts=1,
        last_steps=1,
        k=8,
        n_dirs=2,
        radius=0.05,
        batch_size=16,
    ),
    "book": dict(
        steps=15,
        n_memorised=6,
        n_normal=6,
        n_seeds=1,
        guidance=7.5,
        guidance_scales=(1.0, 3.0, 5.0, 7.5, 9.0),
        n_guidance_prompts=3,
        last_steps=4,
        k=16,
        n_dirs=4,
        radius=0.05,
        batch_size=16,
    ),
    "paper": dict(
        steps=50,
        n_memorised=100,
        n_normal=100,
        n_seeds=1,
        guidance=7.5,
        guidance_scales=(1.0, 3.0, 5.0, 7.5, 9.0),
        n_guidance_prompts=50,
        last_steps=10,
        k=120,
        n_dirs=16,
        radius=0.05,
        batch_size=2,
        chunk_size=8,  # VJPs per pass through SD's 512 px decoder: bounds GPU memory
    ),
}


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


@dataclass
class PromptSets:
    """The two prompt sets of the comparison, and where they came from."""

    memorised: list[str]
    normal: list[str]
    source: str


def mini_prompt_sets(world: World, n_memorised: int, n_normal: int, seed: int = 0) -> PromptSets:
    """Memorised captions (each names one memorised training image) vs captions of *novel*
    attribute combinations (never seen in training), drawn with ``seed``; at most as many
    memorised captions as the world has."""
    rng = np.random.default_rng([seed, 5])
    n_memorised = min(n_memorised, len(world.memorised_captions))  # the tiny placeholder has only 4
    memorised = [
        world.memorised_captions[i]
        for i in sorted(rng.permutation(len(world.memorised_captions))[:n_memorised])
    ]
    novel = [
        caption(world.novel_attributes[i])
        for i in sorted(rng.permutation(len(world.novel_attributes))[:n_normal])
    ]
    return PromptSets(memorised, novel, "the offline model's memorised captions vs novel captions")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: ``.txt`` (one per line), ``.json`` (a list of strings, or of objects
    with a ``prompt``/``caption`` field), ``.csv``/``.tsv``/``.parquet`` (a ``prompt`` or
    ``caption`` column, else the first column). Blank entries are dropped."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        prompts = path.read_text().splitlines()
    elif suffix == ".json":
        items = json.loads(path.read_text())
        prompts = [item if isinstance(item, str) else _prompt_field(item) for item in items]
    elif suffix in (".csv", ".tsv", ".parquet"):
        frame = (
            pd.read_parquet(path)
            if suffix == ".parquet"
            else pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        )
        column = next((c for c in frame.columns if str(c).lower() in ("prompt", "caption")), frame.columns[0])
        prompts = frame[column].astype(str).tolist()
    else:
        raise ValueError(f"unsupported prompt file type {suffix!r}: use .txt, .json, .csv, .tsv or .parquet")
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def _prompt_field(item: dict) -> str:
    for name in ("prompt", "caption", "Prompt", "Caption"):
        if name in item:
            return str(item[name])
    raise ValueError(f"a JSON prompt entry has no 'prompt' or 'caption' field: {item}")


def file_prompt_sets(
    memorised_file: str | Path, normal_file: str | Path, n_memorised: int, n_normal: int, seed: int = 0
) -> PromptSets:
    """``n_memorised`` and ``n_normal`` prompts drawn (with ``seed``) from two prompt files."""
    rng = np.random.default_rng([seed, 5])
    sets = []
    for path, n in ((memorised_file, n_memorised), (normal_file, n_normal)):
        prompts = list(dict.fromkeys(read_prompts(path)))  # unique, in file order
        sets.append([prompts[i] for i in sorted(rng.permutation(len(prompts))[: min(n, len(prompts))])])
    return PromptSets(sets[0], sets[1], f"{Path(memorised_file).name} vs {Path(normal_file).name}")


# ---------------------------------------------------------------------------------------------
# Trajectories and their descriptors, cached
# ---------------------------------------------------------------------------------------------


class TrajectoryStore:
    """Cached trajectories and their per-step descriptors for one model and sampler setting.

    Two :class:`~geomlib.cache.ResultCache` folders under ``root``: the trajectories
    (keyed by the model fingerprint and the number of steps) and the descriptors (keyed also by
    the descriptor settings and ``source``), so changing ``k`` reuses the generated trajectories.
    Keys are ``(prompt, seed, guidance_scale)``; a descriptor entry holds one record per step.
    """

    def __init__(
        self,
        root: str | Path,
        fingerprint: str,
        steps: int,
        settings: DescriptorSettings,
        source: Source = "latent",
    ):
        if source not in ("latent", "predicted_x0"):
            raise ValueError(f"source must be 'latent' or 'predicted_x0', got {source!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        sampler = {"model": fingerprint, "steps": steps}
        self.steps, self.source, self.settings = steps, source, settings
        self.trajectories = ResultCache(Path(root) / "trajectories", sampler)
        self.descriptors = ResultCache(
            Path(root) / "descriptors", {**sampler, **settings.key(), "source": source}
        )

    def trajectory(self, prompt: str, seed: int, scale: float) -> dict[str, torch.Tensor] | None:
        """``{"latents": (T + 1, 4, h, w), "predicted_x0": (T, 4, h, w), "timesteps": (T,)}`` or ``None``."""
        return self.trajectories.load_tensors((prompt, int(seed), float(scale)))

    def step_records(self, prompt: str, seed: int, scale: float) -> dict[str, dict]:
        """``{str(step): {descriptor: value}}`` computed so far (steps count from 1)."""
        return self.descriptors.load((prompt, int(seed), float(scale))) or {}


def _generate_missing(pipe, store: TrajectoryStore, prompts, seeds, scale: float, batch_size: int) -> None:
    """Generate (in batches) the trajectories of ``scale`` not yet cached; each seed's initial
    noise is :func:`~geomlib.latent.initial_latents` of that seed, whatever the prompt."""
    pending = [(p, s) for p in prompts for s in seeds if store.trajectory(p, s, scale) is None]
    for start in range(0, len(pending), batch_size):
        part = pending[start : start + batch_size]
        noise = torch.cat([initial_latents(pipe, 1, seed=s) for _, s in part])
        out = generate(
            pipe,
            [p for p, _ in part],
            guidance_scale=scale,
            num_inference_steps=store.steps,
            latents=noise,
            batch_size=1,  # one prompt per sampler call: a cached trajectory must not depend on its batch
        )
        for i, (prompt, seed) in enumerate(part):
            tensors = {
                "latents": out.trajectory[:, i].clone(),
                "predicted_x0": out.predicted_x0[:, i].clone(),
                "timesteps": out.timesteps.clone(),
            }
            store.trajectories.save_tensors((prompt, int(seed), float(scale)), tensors)


def _cached_trajectory(store: TrajectoryStore, key: tuple) -> dict[str, torch.Tensor]:
    tensors = store.trajectory(*key)
    if tensors is None:
        raise ValueError(f"no cached trajectory for {key}: generate it first")
    return tensors


def _describe_missing(pipe, store: TrajectoryStore, keys: Sequence[tuple], progress: bool) -> None:
    """Describe every step of ``keys``' trajectories not cached yet, in batches that may span
    trajectories; the records of a trajectory are saved after every batch that touches it, so an
    interruption loses at most one batch."""
    records = {key: store.step_records(*key) for key in keys}
    pending = [(key, t) for key in keys for t in range(1, store.steps + 1) if str(t) not in records[key]]
    loaded: dict[tuple, dict[str, torch.Tensor]] = {}
    size = store.settings.batch_size
    for start in tqdm(
        range(0, len(pending), size),
        desc="descriptors along trajectories",
        disable=not progress or not pending,  # no empty bar when everything is cached
    ):
        batch = pending[start : start + size]
        touched = list(dict.fromkeys(key for key, _ in batch))
        loaded = {key: loaded.get(key) or _cached_trajectory(store, key) for key in touched}  # drops finished
        field = "latents" if store.source == "latent" else "predicted_x0"
        offset = 0 if store.source == "predicted_x0" else 1  # latents[0] is the initial noise
        points = torch.stack([loaded[key][field][t - 1 + offset] for key, t in batch])  # (b, 4, h, w)
        values = describe_latents(pipe, points, store.settings)
        for i, (key, t) in enumerate(batch):
            record = {name: column[i] for name, column in values.items()}
            records[key][str(t)] = {**record, "timestep": int(loaded[key]["timesteps"][t - 1])}
        for key in touched:
            store.descriptors.save(key, records[key])


def trajectory_descriptors(
    pipe,
    store: TrajectoryStore,
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance_scales: Sequence[float],
    *,
    generation_batch: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """ψ, ν, δ of the decoder at every step of every (prompt, seed, guidance scale) trajectory.

    Parameters
    ----------
    pipe
        the pipeline (its own sampler, ``store.steps`` steps).
    store
        the cache, which also fixes the steps, the descriptor settings and ``source``: the decoder
        at the current latent ``x_t`` (``"latent"``) or at the predicted clean latent.
    prompts, seeds, guidance_scales
        every combination is computed; seed ``s`` gives the same initial noise to every prompt
        and scale.
    generation_batch
        prompts per pipeline call.

    Returns
    -------
    One row per (prompt, seed, guidance_scale, step): those columns, ``timestep`` and the
    descriptors; ``step`` runs from 1 to ``T``.
    """
    if isinstance(prompts, str) or not prompts or not seeds or not guidance_scales:
        raise ValueError("prompts, seeds and guidance_scales must be non-empty lists")
    keys = [(p, int(s), float(g)) for g in guidance_scales for p in prompts for s in seeds]
    for scale in tqdm(guidance_scales, desc="trajectories", disable=not progress, leave=False):
        _generate_missing(pipe, store, prompts, seeds, float(scale), generation_batch)
    _describe_missing(pipe, store, keys, progress)
    return trajectory_table(store, keys)


def trajectory_table(store: TrajectoryStore, keys: Sequence[tuple]) -> pd.DataFrame:
    """The cached records of ``keys`` ((prompt, seed, scale) tuples) as one long table."""
    rows = [
        {"prompt": prompt, "seed": seed, "guidance_scale": scale, "step": int(step), **record}
        for prompt, seed, scale in keys
        for step, record in store.step_records(prompt, seed, scale).items()
    ]
    if not rows:
        raise ValueError("no cached descriptors for these trajectories: run trajectory_descriptors first")
    table = pd.DataFrame(rows).sort_values(["guidance_scale", "prompt", "seed", "step"], ignore_index=True)
    columns = [
        "prompt",
        "seed",
        "guidance_scale",
        "step",
        "timestep",
        *[d for d in DESCRIPTORS if d in table],
    ]
    return table[columns]


def decoded_steps(
    pipe, store: TrajectoryStore, prompt: str, seed: int, scale: float
) -> dict[str, np.ndarray]:
    """Images of one cached trajectory: the decoder at ``x_t`` and at the predicted ``x0`` of
    every step, ``{"latent": (T, H, W, 3), "predicted_x0": (T, H, W, 3)}`` floats in [0, 1]."""
    tensors = store.trajectory(prompt, seed, scale)
    if tensors is None:
        raise ValueError(f"no cached trajectory for {(prompt, seed, scale)}")
    return {
        "latent": decode_latents(pipe, tensors["latents"][1:]),
        "predicted_x0": decode_latents(pipe, tensors["predicted_x0"]),
    }


def final_images(pipe, store: TrajectoryStore, keys: Sequence[tuple]) -> np.ndarray:
    """``(len(keys), H, W, 3)`` the generated images (decoded final latents) of cached trajectories."""
    return decode_latents(
        pipe, torch.stack([_cached_trajectory(store, tuple(key))["latents"][-1] for key in keys])
    )


def label_prompts(table: pd.DataFrame, sets: PromptSets) -> pd.DataFrame:
    """``table`` with a ``kind`` column: ``"memorised"`` or ``"normal"`` by prompt set."""
    kinds = {**dict.fromkeys(sets.normal, "normal"), **dict.fromkeys(sets.memorised, "memorised")}
    return table.assign(kind=table["prompt"].map(kinds))


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def mean_curves(
    table: pd.DataFrame, by: str, descriptors: Sequence[str] = DESCRIPTORS, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean of each descriptor per (``by``, step) over trajectories, with a t confidence band.

    Returns columns ``by``, ``step``, ``descriptor``, ``mean``, ``low``, ``high``, ``n``; with a
    single trajectory the band collapses to the mean.
    """
    rows = [
        {
            by: group,
            "step": step,
            "descriptor": name,
            **_mean_interval(frame[name].to_numpy(dtype=float), confidence),
        }
        for (group, step), frame in table.groupby([by, "step"], sort=True)
        for name in descriptors
    ]
    return pd.DataFrame(rows)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2): the
    area under the ROC curve, from the Mann-Whitney U statistic."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("both classes need at least one score")
    u = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u / (len(positive) * len(negative)))


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
        "auc_trajectory": _cross_validated_auc(per_prompt.to_numpy(), is_memorised, seed),
        "n_memorised": int(is_memorised.sum()),
        "n_normal": int((~is_memorised).sum()),
    }


def _cross_validated_auc(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """AUC of out-of-fold logistic-regression scores (up to 5 stratified folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, int(labels.sum()), int((~labels).sum()))
    if folds < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, features, labels, cv=splitter, method="decision_function")
    return roc_auc(scores[labels], scores[~labels])


def guidance_trend(table: pd.DataFrame, descriptor: str = "local_scaling", *, last_steps: int = 5) -> dict:
    """Does the descriptor late in denoising fall (or rise) with the guidance scale?

    Each (prompt, seed) is a block seen at every scale. Returns a dict with

    * ``per_scale``: a table of the mean over the last ``last_steps`` steps per scale with a 95 %
      t interval over blocks;
    * ``spearman``, ``spearman_p``: rank correlation of scale and the per-block score (pooled);
    * ``page_decreasing_p``: Page's trend test (blocks x ordered scales) against "no trend", for a
      decrease with the scale (``nan`` with fewer than 3 scales or 2 blocks);
    * ``change_low_to_high``: the paired change from the lowest to the highest scale, with CI.
    """
    final = table[table["step"] > table["step"].max() - last_steps]
    blocks = final.groupby(["prompt", "seed", "guidance_scale"])[descriptor].mean().unstack("guidance_scale")
    blocks = blocks.dropna()
    scales = blocks.columns.to_numpy(dtype=float)
    per_scale = pd.DataFrame([{"guidance_scale": s, **_mean_interval(blocks[s].to_numpy())} for s in scales])
    long = blocks.stack().reset_index(name="score")
    rho, rho_p = (
        stats.spearmanr(long["guidance_scale"], long["score"]) if len(scales) > 1 else (np.nan, np.nan)
    )
    page_p = float("nan")
    if len(scales) >= 3 and len(blocks) >= 2:
        page_p = float(stats.page_trend_test(blocks.to_numpy()[:, ::-1]).pvalue)  # reversed: a decrease
    change = paired_change(blocks[scales.min()].to_numpy(), blocks[scales.max()].to_numpy())
    return {
        "per_scale": per_scale,
        "spearman": float(rho),
        "spearman_p": float(rho_p),
        "page_decreasing_p": page_p,
        "change_low_to_high": change,
        "n_blocks": len(blocks),
    }


def _mean_interval(values: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    n, mean = len(values), float(np.mean(values))
    half = (
        float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / np.sqrt(n))
        if n > 1
        else 0.0
    )
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_mean_curves(
    curves: pd.DataFrame,
    by: str,
    *,
    descriptors: Sequence[str] = DESCRIPTORS,
    labels: dict | None = None,
    palette: str = "viridis",
    title: str | None = None,
):
    """Fig. 6: one panel per descriptor, the mean curve over steps per value of ``by`` with its
    confidence band (from :func:`mean_curves`). ``labels`` renames the groups in the legend."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(curves[by]))
    colours = plt.get_cmap(palette)(np.linspace(0.1, 0.85, len(groups)))
    present = [d for d in descriptors if d in set(curves["descriptor"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.8 * len(present), 3.1), squeeze=False)
    for ax, name in zip(axes[0], present, strict=True):
        for group, colour in zip(groups, colours, strict=True):
            part = curves[(curves[by] == group) & (curves["descriptor"] == name)].sort_values("step")
            plot_band(
                ax,
                part["step"].to_numpy(),
                part["mean"].to_numpy(),
                part["low"].to_numpy(),
                part["high"].to_numpy(),
                label=str((labels or {}).get(group, group)),
                color=colour,
            )
        ax.set_xlabel("denoising step")
        ax.set_ylabel(DESCRIPTOR_LABELS.get(name, name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, -1].legend(fontsize=8, title=by.replace("_", " "), title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_step_auc(auc_per_step: np.ndarray, descriptor: str = "local_scaling"):
    """The AUC of memorised vs normal from the descriptor at each step (0.5: no separation)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    steps = np.arange(1, len(auc_per_step) + 1)
    ax.plot(steps, auc_per_step, marker="o", ms=3)
    ax.axhline(0.5, color="black", lw=0.7, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("denoising step")
    ax.set_ylabel(f"AUC from {DESCRIPTOR_LABELS.get(descriptor, descriptor)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


@dataclass
class TrajectoryView:
    """One trajectory shown by :func:`trajectory_slider`: its images per step and its table rows."""

    label: str
    images: dict[str, np.ndarray]  # {"latent": (T, H, W, 3), "predicted_x0": (T, H, W, 3)}
    rows: pd.DataFrame  # one row per step, sorted


def trajectory_view(
    pipe,
    store: TrajectoryStore,
    table: pd.DataFrame,
    prompt: str,
    seed: int,
    scale: float,
    label: str | None = None,
) -> TrajectoryView:
    """The images and descriptor rows of one cached trajectory, for :func:`trajectory_slider`."""
    rows = table[(table["prompt"] == prompt) & (table["seed"] == seed) & (table["guidance_scale"] == scale)]
    if rows.empty:
        raise ValueError(f"no rows for {(prompt, seed, scale)} in the table")
    return TrajectoryView(
        label or f"{prompt} (w={scale:g})",
        decoded_steps(pipe, store, prompt, seed, scale),
        rows.sort_values("step").reset_index(drop=True),
    )


def _draw_view(axes, view: TrajectoryView, descriptors: Sequence[str]) -> list:
    """Static parts of one row: returns the artists that :func:`_show_step` updates."""
    steps = view.rows["step"].to_numpy()
    images = [
        axes[i].imshow(view.images[k][0], interpolation="nearest")
        for i, k in enumerate(("latent", "predicted_x0"))
    ]
    axes[0].set_title("decoder at $x_t$", fontsize=8)
    axes[1].set_title(r"decoder at $\hat x_0$", fontsize=8)
    axes[0].set_ylabel(view.label if len(view.label) < 40 else view.label[:37] + "...", fontsize=7)
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    markers = []
    for ax, name in zip(axes[2:], descriptors, strict=True):
        ax.plot(steps, view.rows[name], lw=1.2)
        markers.append((ax, name, ax.axvline(steps[0], color="tab:red", lw=1)))
        ax.tick_params(labelsize=7)
    return [images, markers]


def _show_step(view: TrajectoryView, artists: list, frame: int) -> None:
    """Move one row of the figure to step ``frame + 1``."""
    images, markers = artists
    images[0].set_data(view.images["latent"][frame])
    images[1].set_data(view.images["predicted_x0"][frame])
    for ax, name, marker in markers:
        marker.set_xdata([frame + 1, frame + 1])
        ax.set_title(f"{SYMBOLS.get(name, name)} = {view.rows[name].iloc[frame]:.4g}", fontsize=8)


def _view_figure(views: Sequence[TrajectoryView], descriptors: Sequence[str]):
    import matplotlib.pyplot as plt

    columns = 2 + len(descriptors)
    fig, axes = plt.subplots(
        len(views),
        columns,
        figsize=(2.1 * columns + 1, 2.2 * len(views)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1] + [1.5] * len(descriptors)},
    )
    artists = [_draw_view(row_axes, view, descriptors) for row_axes, view in zip(axes, views, strict=True)]
    return fig, artists


def trajectory_slider(views: Sequence[TrajectoryView], descriptors: Sequence[str] = DESCRIPTORS) -> str:
    """A step slider for a static page: per trajectory (one row each) the decoded ``x_t``, the
    decoded predicted ``x0`` and the descriptor curves with the current step marked and its value
    in the panel's title. Returns the ``to_jshtml`` HTML."""
    descriptors = [d for d in descriptors if d in views[0].rows]
    n_steps = len(views[0].rows)
    fig, artists = _view_figure(views, descriptors)
    fig.set_dpi(80)  # every frame is embedded as a PNG: keep the page light
    title = fig.suptitle("", fontsize=9)

    def update(frame: int) -> None:
        for view, row_artists in zip(views, artists, strict=True):
            _show_step(view, row_artists, frame)
        title.set_text(
            f"step {frame + 1} of {n_steps} (timestep {int(views[0].rows['timestep'].iloc[frame])})"
        )

    update(0)
    fig.tight_layout()
    return slider_animation(fig, update, n_steps)


def _explorer_controls(
    prompts: Sequence[str], seed: int, guidance_scale: float, max_scale: float, steps: int
) -> dict:
    import ipywidgets as widgets

    return {
        "prompt": widgets.Combobox(value=prompts[0], options=list(prompts), description="prompt",
                                   ensure_option=False, continuous_update=False, layout={"width": "520px"}),
        "scale": widgets.FloatSlider(value=guidance_scale, min=1.0, max=max_scale, step=0.5,
                                     description="guidance", continuous_update=False),
        "seed": widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed"),
        "step": widgets.IntSlider(value=steps, min=1, max=steps, description="step"),
    }  # fmt: skip


def trajectory_explorer(
    pipe,
    store: TrajectoryStore,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    guidance_scale: float = 7.5,
    max_scale: float = 12.0,
):
    """Live controls (for readers running the notebook): type or pick a prompt, set the guidance
    scale and seed, and step through the trajectory. New (prompt, seed, scale) trajectories are
    generated, described and cached on first use (seconds to minutes), then instant."""
    from geomlib.plotting import live_controls

    views: dict[tuple, TrajectoryView] = {}
    controls = _explorer_controls(prompts, seed, guidance_scale, max_scale, store.steps)

    def show(prompt: str, scale: float, seed: int, step: int):
        key = (prompt.strip(), int(seed), float(scale))
        if not key[0]:
            return "Type a prompt."
        if key not in views:
            table = trajectory_descriptors(pipe, store, [key[0]], [key[1]], [key[2]], progress=False)
            views[key] = trajectory_view(pipe, store, table, *key, label=key[0])
        descriptors = [d for d in DESCRIPTORS if d in views[key].rows]
        fig, artists = _view_figure([views[key]], descriptors)
        _show_step(views[key], artists[0], step - 1)
        fig.tight_layout()
        return fig

    live_controls(show, controls, rows=[("prompt", "seed"), ("scale", "step")])
