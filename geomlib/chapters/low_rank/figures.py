"""The figures of chapter 07: rank profiles across noise levels and the memorisation sweep."""

from __future__ import annotations

from collections.abc import Sequence

from geomlib.chapters.low_rank.ranks import RankProfile


def plot_rank_profiles(
    profiles: dict[str, RankProfile],
    num_steps: int,
    ranks: Sequence[int],
    *,
    spectrum_timestep: int | None = None,
    panel_size: float = 3.8,
):
    """Spectral rank and ν against ``t / T`` for each named profile, and their mean spectra at one ``t``.

    Parameters
    ----------
    profiles
        ``{label: RankProfile}`` on the same timesteps.
    num_steps
        ``T``, to put ``t / T`` on the x axis.
    ranks
        the subspace ranks ``r_k``: dashed lines at ``max r_k`` and ``sum r_k``.
    spectrum_timestep
        the ``t`` of the third panel (default: the middle of the grid).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_size, panel_size))
    for label, profile in profiles.items():
        fractions = profile.timesteps.double() / num_steps
        for ax, values in zip(
            axes[:2], (profile.spectral_rank.double(), profile.local_rank.double()), strict=True
        ):
            low, high = values.quantile(0.25, dim=1), values.quantile(0.75, dim=1)
            (line,) = ax.plot(fractions, values.mean(1), marker="o", ms=3, label=label)
            ax.fill_between(fractions, low, high, color=line.get_color(), alpha=0.2)
    timesteps = next(iter(profiles.values())).timesteps.tolist()
    chosen = spectrum_timestep if spectrum_timestep is not None else timesteps[len(timesteps) // 2]
    row = timesteps.index(min(timesteps, key=lambda t: abs(t - chosen)))
    for label, profile in profiles.items():
        mean_spectrum = profile.singular_values[row].double().mean(0)
        axes[2].semilogy(
            range(1, len(mean_spectrum) + 1), mean_spectrum.clamp_min(1e-8), marker=".", label=label
        )
    for ax, name in zip(axes[:2], ("rank (99% of the energy)", r"local rank $\nu$"), strict=True):
        ax.axhline(max(ranks), color="grey", ls="--", lw=0.8, label=r"$r = \max_k r_k$")
        ax.axhline(sum(ranks), color="black", ls=":", lw=0.8, label=r"$\sum_k r_k$")
        ax.set(xlabel="t / T", ylabel=name)
    axes[2].axvline(sum(ranks) + 0.5, color="grey", ls="--", lw=0.8)
    axes[2].set(
        xlabel="index i",
        ylabel=r"mean singular value $s_i$",
        title=f"spectra at t/T = {timesteps[row] / num_steps:.2f}",
    )
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_memorisation_sweep(
    rows: Sequence[dict[str, float]], ranks: Sequence[int], transition: int | None, *, panel_size: float = 3.8
):
    """Generalisation score and Jacobian rank against the training-set size ``N`` (log axis).

    ``rows`` come from :func:`memorisation_sweep`; ``transition`` (from :func:`transition_size`) is
    marked by a vertical line.
    """
    import matplotlib.pyplot as plt

    sizes = [row["n_train"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_size, panel_size))
    axes[0].plot(sizes, [row["generalisation"] for row in rows], marker="o", label="learned denoiser")
    axes[0].plot(
        sizes,
        [row["reference"] for row in rows],
        marker="s",
        ls=":",
        label="fresh data (perfect generaliser)",
    )
    axes[0].set(ylabel="nearest-training-point distance / norm", title="generalisation score")
    axes[1].plot(
        sizes, [row["rank_above_half"] for row in rows], marker="o", label=r"#$s_i > \sqrt{\bar\alpha_t}/2$"
    )
    axes[1].plot(sizes, [row["local_rank"] for row in rows], marker="^", ls=":", label=r"local rank $\nu$")
    axes[1].axhline(max(ranks), color="grey", ls="--", lw=0.8, label=r"$r$ (one subspace)")
    axes[1].set(ylabel="Jacobian rank of the learned PMP", title="rank near the data")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        if transition is not None:
            ax.axvline(transition, color="tab:red", lw=0.8, alpha=0.6)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reproducibility(
    rows: Sequence[dict],
    architectures: Sequence[str],
    regimes: dict[str, list[int]],
    *,
    panel_size: float = 3.8,
):
    """The talk's figure: RP and GL scores against the training-set size ``N`` (log axis), with the
    regimes shaded (memorisation blue, generalisation green, unresolved grey); right, each trained
    architecture against the two closed-form limits.

    ``rows`` come from :func:`~geomlib.chapters.low_rank.reproducibility.reproducibility_scores`,
    ``regimes`` from :func:`~geomlib.chapters.low_rank.reproducibility.reproducibility_regimes`.
    Bands: 95 % Wilson intervals over the noise draws.
    """
    import matplotlib.pyplot as plt

    from geomlib.chapters.low_rank.reproducibility import EMPIRICAL, POPULATION

    def curve(ax, score, between, **style):
        chosen = sorted(
            (row for row in rows if row["score"] == score and row["between"] == between),
            key=lambda row: row["n_train"],
        )
        sizes = [row["n_train"] for row in chosen]
        (line,) = ax.plot(sizes, [row["estimate"] for row in chosen], marker="o", ms=3, **style)
        ax.fill_between(
            sizes,
            [row["low"] for row in chosen],
            [row["high"] for row in chosen],
            color=line.get_color(),
            alpha=0.15,
        )

    pair = f"{architectures[0]} vs {architectures[1]}"
    fig, axes = plt.subplots(1, 2, figsize=(2.3 * panel_size, 1.35 * panel_size), sharey=True)
    curve(axes[0], "RP", pair, color="black", label=f"RP: {pair}")
    curve(axes[0], "RP", f"{pair}, other noise", color="grey", ls=":", label="RP by chance (other noise)")
    for name in architectures:
        curve(axes[0], "GL", name, ls="--", label=f"GL: {name}")
    curve(axes[0], "GL", POPULATION, color="tab:green", ls="-.", lw=0.8, label=f"GL: {POPULATION}")
    for name in architectures:
        curve(axes[1], "RP", f"{name} vs {EMPIRICAL}", ls="--", label=f"{name} vs {EMPIRICAL}")
        curve(axes[1], "RP", f"{name} vs {POPULATION}", label=f"{name} vs {POPULATION}")
    cells = _log_cells(sorted({row["n_train"] for row in rows}))
    colours = {"memorisation": "tab:blue", "generalisation": "tab:green", "unresolved": "tab:grey"}
    for ax in axes:
        for regime, colour in colours.items():
            for n_train in regimes.get(regime, []):  # one cell per size: regimes need not be contiguous
                if n_train in cells:
                    ax.axvspan(*cells[n_train], color=colour, alpha=0.08, lw=0)
        ax.set_xscale("log")
        ax.set(xlabel="training-set size N", ylim=(-0.03, 1.03))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)
    axes[0].set(ylabel="score", title="reproducibility and generalisation")
    axes[1].set(title="trained models against the two limits")
    fig.tight_layout()
    return fig


def _log_cells(sizes: Sequence[int]) -> dict[int, tuple[float, float]]:
    """``{N: (left, right)}``: the cell of each size on a log axis, bounded by the geometric midpoints
    to its neighbours (a factor 1.5 beyond the ends)."""
    edges = [sizes[0] / 1.5] + [(a * b) ** 0.5 for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    edges.append(sizes[-1] * 1.5)
    return {n: (edges[i], edges[i + 1]) for i, n in enumerate(sizes)}
