"""Geometry reward guidance (paper section 5, Figs. 1, 7, 8): the public API of five modules.

* :mod:`geomlib.reward_data`: images -> clean latents -> ψ (the decoder's local scaling, on the
  clean latent) -> noisy copies at random timesteps, in resumable shards; ψ's level sets.
* :mod:`geomlib.reward_model`: a time-conditioned CNN ``(x_t, t) -> level-set logits``, trained
  with validation accuracy and checkpoints.
* :mod:`geomlib.reward_guidance`: classifier guidance by that reward on top of classifier-free
  guidance, in the pipeline's ``callback_on_step_end``.
* :mod:`geomlib.reward_eval`: ψ, Vendi diversity and image statistics per level set; figures.
* :mod:`geomlib.reward_chapter`: what the notebook runs: budgets, prompts, and the steps that tie
  the parts to a cache folder so that a rerun reuses the data and the reward models.
"""

from geomlib.reward_chapter import (  # noqa: F401  (re-exported)
    DREAMBOOTH_LIVE_SUBJECTS,
    DREAMBOOTH_LIVE_TEMPLATES,
    REWARD_BUDGETS,
    chapter_reward_data,
    chapter_reward_model,
    describe_samples,
    guidance_prompts,
    guidance_widget,
    is_stable_diffusion,
    level_set_examples,
    n_sweep,
    psi_settings,
    rho_grid_samples,
    sample_rhos,
    split_train_val,
    use_ddim,
    world_for,
)
from geomlib.reward_data import (  # noqa: F401  (re-exported)
    FolderImages,
    ImageSource,
    PsiSettings,
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
from geomlib.reward_eval import (  # noqa: F401  (re-exported)
    STATISTICS,
    SampleSet,
    claim_table,
    compare_by_bin,
    image_statistics,
    mean_ci,
    pixel_features,
    plot_bin_effects,
    plot_level_sets,
    plot_n_sweep,
    plot_training,
    rho_grid,
    vendi_diversity,
)
from geomlib.reward_guidance import (  # noqa: F401  (re-exported)
    OBJECTIVES,
    GuidedSamples,
    RewardGuidance,
    guidance_coefficient,
    guided_generate,
    reward_gradient,
    reward_objective,
)
from geomlib.reward_model import (  # noqa: F401  (re-exported)
    RewardNet,
    RewardNetConfig,
    RewardTrainConfig,
    TrainedReward,
    accuracy_by_timestep,
    load_reward_model,
    train_reward_model,
)
