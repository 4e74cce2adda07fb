"""Chapter 06: geometry reward guidance (paper section 5, Figs. 1, 7, 8): the public API of five
modules.

* :mod:`~geomlib.chapters.reward_guidance.data`: images -> clean latents -> ψ (the decoder's local
  scaling, on the clean latent) -> noisy copies at random timesteps, in resumable shards; ψ's level
  sets.
* :mod:`~geomlib.chapters.reward_guidance.model`: a time-conditioned CNN ``(x_t, t) -> level-set
  logits``, trained with validation accuracy and checkpoints.
* :mod:`~geomlib.chapters.reward_guidance.guidance`: classifier guidance by that reward on top of
  classifier-free guidance, in the pipeline's ``callback_on_step_end``.
* :mod:`~geomlib.chapters.reward_guidance.evaluation`: ψ, Vendi diversity and image statistics per
  level set; figures.
* :mod:`~geomlib.chapters.reward_guidance.chapter`: what the notebook runs: budgets, prompts, and the
  steps that tie the parts to a cache folder so that a rerun reuses the data and the reward models.
"""

from geomlib.chapters.reward_guidance.chapter import (
    DREAMBOOTH_LIVE_SUBJECTS,
    DREAMBOOTH_LIVE_TEMPLATES,
    REWARD_BUDGETS,
    RewardBudget,
    chapter_reward_data,
    chapter_reward_model,
    describe_samples,
    guidance_prompts,
    guidance_widget,
    level_set_examples,
    n_sweep,
    rho_grid_samples,
    sample_rhos,
    split_train_val,
    use_ddim,
    world_for,
)
from geomlib.chapters.reward_guidance.data import (
    FolderImages,
    ImageSource,
    RewardData,
    WorldImages,
    add_forward_noise,
    bin_edges,
    bin_labels,
    decoder_psi,
    item_noise,
    load_reward_data,
    prepare_reward_data,
    psi_from_describe_cli,
)
from geomlib.chapters.reward_guidance.evaluation import (
    STATISTICS,
    SampleSet,
    claim_table,
    compare_by_bin,
    image_statistics,
    plot_bin_effects,
    plot_level_sets,
    plot_n_sweep,
    plot_training,
    rho_grid,
)
from geomlib.chapters.reward_guidance.guidance import (
    OBJECTIVES,
    GuidedSamples,
    RewardGuidance,
    guidance_coefficient,
    guided_generate,
    reward_gradient,
    reward_objective,
)
from geomlib.chapters.reward_guidance.model import (
    RewardNet,
    RewardNetConfig,
    RewardTrainConfig,
    TrainedReward,
    accuracy_by_timestep,
    load_reward_model,
    train_reward_model,
)
from geomlib.core.diversity import pixel_features, vendi_diversity

__all__ = [
    "DREAMBOOTH_LIVE_SUBJECTS",
    "DREAMBOOTH_LIVE_TEMPLATES",
    "FolderImages",
    "GuidedSamples",
    "ImageSource",
    "OBJECTIVES",
    "REWARD_BUDGETS",
    "RewardBudget",
    "RewardData",
    "RewardGuidance",
    "RewardNet",
    "RewardNetConfig",
    "RewardTrainConfig",
    "STATISTICS",
    "SampleSet",
    "TrainedReward",
    "WorldImages",
    "accuracy_by_timestep",
    "add_forward_noise",
    "bin_edges",
    "bin_labels",
    "chapter_reward_data",
    "chapter_reward_model",
    "claim_table",
    "compare_by_bin",
    "decoder_psi",
    "describe_samples",
    "guidance_coefficient",
    "guidance_prompts",
    "guidance_widget",
    "guided_generate",
    "image_statistics",
    "item_noise",
    "level_set_examples",
    "load_reward_data",
    "load_reward_model",
    "n_sweep",
    "pixel_features",
    "plot_bin_effects",
    "plot_level_sets",
    "plot_n_sweep",
    "plot_training",
    "prepare_reward_data",
    "psi_from_describe_cli",
    "reward_gradient",
    "reward_objective",
    "rho_grid",
    "rho_grid_samples",
    "sample_rhos",
    "split_train_val",
    "train_reward_model",
    "use_ddim",
    "vendi_diversity",
    "world_for",
]
