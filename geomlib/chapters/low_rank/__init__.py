"""Chapter 07: low-rank structure of diffusion models, after Wang et al. (2024) and LOCO-Edit
(Chen et al. 2024): the mixture of low-rank Gaussians and its posterior mean
(:mod:`~geomlib.chapters.low_rank.molrg`), a learned denoiser (:mod:`~geomlib.chapters.low_rank.denoiser`),
DDIM sampling and the generalisation score (:mod:`~geomlib.chapters.low_rank.sampling`), Jacobian
ranks across noise levels and the memorisation sweep (:mod:`~geomlib.chapters.low_rank.ranks`),
edits along singular vectors (:mod:`~geomlib.chapters.low_rank.edits`), the budgets and figures.
"""

from geomlib.chapters.low_rank.budgets import (
    LOWRANK_BUDGETS,
    LowRankBudget,
)
from geomlib.chapters.low_rank.denoiser import (
    MLPDenoiser,
    train_denoiser,
)
from geomlib.chapters.low_rank.edits import (
    EditComparison,
    EditDirections,
    compare_edits,
    edit_directions,
    edit_latents,
    edit_sweep,
    nullspace_direction,
    project_out,
    prompt_embeddings,
    relative_change,
    unet_posterior_mean,
)
from geomlib.chapters.low_rank.figures import (
    plot_memorisation_sweep,
    plot_rank_profiles,
)
from geomlib.chapters.low_rank.molrg import (
    MoLRG,
    add_noise,
    denoiser_pmp,
    empirical_pmp,
    empirical_posterior_mean,
    make_molrg,
    molrg_pmp,
    pmp_from_eps,
    subspace_residual,
)
from geomlib.chapters.low_rank.ranks import (
    RankProfile,
    evaluate_denoiser,
    jacobian_rank_profile,
    memorisation_sweep,
    spectral_rank,
    transition_size,
)
from geomlib.chapters.low_rank.sampling import (
    ddim_sample,
    ddim_timesteps,
    generalisation_score,
    split_timesteps,
)

__all__ = [
    "EditComparison",
    "EditDirections",
    "LOWRANK_BUDGETS",
    "LowRankBudget",
    "MLPDenoiser",
    "MoLRG",
    "RankProfile",
    "add_noise",
    "compare_edits",
    "ddim_sample",
    "ddim_timesteps",
    "denoiser_pmp",
    "edit_directions",
    "edit_latents",
    "edit_sweep",
    "empirical_pmp",
    "empirical_posterior_mean",
    "evaluate_denoiser",
    "generalisation_score",
    "jacobian_rank_profile",
    "make_molrg",
    "memorisation_sweep",
    "molrg_pmp",
    "nullspace_direction",
    "plot_memorisation_sweep",
    "plot_rank_profiles",
    "pmp_from_eps",
    "project_out",
    "prompt_embeddings",
    "relative_change",
    "spectral_rank",
    "split_timesteps",
    "subspace_residual",
    "train_denoiser",
    "transition_size",
    "unet_posterior_mean",
]
