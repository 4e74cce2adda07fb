"""Chapter 05: the decoder's geometry along denoising trajectories (paper section 4, Fig. 6).

At every step of the sampler the current latent ``x_t`` is a point of the decoder's input space;
ψ, ν, δ of the decoder there show how the geometry the sample lands in forms during denoising. Two
comparisons on the same seeds (the same initial noise for every condition): memorised vs normal
prompts, and classifier-free guidance scales on the same prompts. The chapter's names, from
:mod:`~geomlib.chapters.trajectories.prompts` (the prompt sets),
:mod:`~geomlib.chapters.trajectories.store` (budgets, cached trajectories and descriptors),
:mod:`~geomlib.chapters.trajectories.analysis` (the claim checks) and
:mod:`~geomlib.chapters.trajectories.figures`.
"""

from geomlib.chapters.trajectories.analysis import guidance_trend, mean_curves, separation
from geomlib.chapters.trajectories.figures import (
    TrajectoryView,
    plot_mean_curves,
    plot_step_auc,
    trajectory_explorer,
    trajectory_slider,
    trajectory_view,
)
from geomlib.chapters.trajectories.prompts import (
    PromptSets,
    file_prompt_sets,
    label_prompts,
    mini_prompt_sets,
)
from geomlib.chapters.trajectories.store import (
    TRAJECTORY_BUDGETS,
    Source,
    TrajectoryBudget,
    TrajectoryStore,
    decoded_steps,
    final_images,
    trajectory_descriptors,
    trajectory_table,
)

__all__ = [
    "TRAJECTORY_BUDGETS",
    "PromptSets",
    "Source",
    "TrajectoryBudget",
    "TrajectoryStore",
    "TrajectoryView",
    "decoded_steps",
    "file_prompt_sets",
    "final_images",
    "guidance_trend",
    "label_prompts",
    "mean_curves",
    "mini_prompt_sets",
    "plot_mean_curves",
    "plot_step_auc",
    "separation",
    "trajectory_descriptors",
    "trajectory_explorer",
    "trajectory_slider",
    "trajectory_table",
    "trajectory_view",
]
