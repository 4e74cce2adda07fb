"""Chapter 02: a toy DDPM on the Datasaurus, and its denoiser's local geometry over the plane
(paper section 3.1, Figs. 2 and 13): the model and its resumable training
(:mod:`~geomlib.chapters.toy_ddpm.model`), the data (:mod:`~geomlib.chapters.toy_ddpm.datasaurus`),
the descriptor maps and the on/off-manifold gap (:mod:`~geomlib.chapters.toy_ddpm.geometry`), the
claims across training seeds (:mod:`~geomlib.chapters.toy_ddpm.replicates`) and the figures
(:mod:`~geomlib.chapters.toy_ddpm.figures`).
"""

from geomlib.chapters.toy_ddpm.datasaurus import (
    DATASAURUS_SETS,
    NORMALISATION_CENTRE,
    NORMALISATION_SCALE,
    datasaurus_path,
    denormalise,
    load_datasaurus,
    normalise,
)
from geomlib.chapters.toy_ddpm.figures import (
    descriptor_explorer,
    descriptor_slider,
    plot_descriptor_maps,
    plot_gap_curves,
    plot_samples_and_loss,
)
from geomlib.chapters.toy_ddpm.geometry import (
    ON_MANIFOLD_RADIUS,
    PAPER_EXTENT,
    denoiser_descriptors,
    descriptors_across_training,
    evenly_spaced_timesteps,
    gap_claims,
    manifold_gap,
    nearest_distances,
    on_manifold_mask,
    plane_grid,
)
from geomlib.chapters.toy_ddpm.model import (
    ACTIVATIONS,
    TOY_DDPM_BUDGETS,
    Denoiser,
    DenoiserAtTime,
    LinearSchedule,
    SinusoidalTimeEmbedding,
    ToyDdpmBudget,
    TrainingRun,
    checkpoint_directory,
    load_checkpoint,
    sample_ddpm,
    train_ddpm,
)
from geomlib.chapters.toy_ddpm.replicates import (
    PAPER_T_SMALLEST,
    replicate_gaps,
    seed_claims,
    train_replicates,
)

__all__ = [
    "ACTIVATIONS",
    "DATASAURUS_SETS",
    "Denoiser",
    "DenoiserAtTime",
    "LinearSchedule",
    "NORMALISATION_CENTRE",
    "NORMALISATION_SCALE",
    "ON_MANIFOLD_RADIUS",
    "PAPER_EXTENT",
    "PAPER_T_SMALLEST",
    "SinusoidalTimeEmbedding",
    "TOY_DDPM_BUDGETS",
    "ToyDdpmBudget",
    "TrainingRun",
    "checkpoint_directory",
    "datasaurus_path",
    "denoiser_descriptors",
    "denormalise",
    "descriptor_explorer",
    "descriptor_slider",
    "descriptors_across_training",
    "evenly_spaced_timesteps",
    "gap_claims",
    "load_checkpoint",
    "load_datasaurus",
    "manifold_gap",
    "replicate_gaps",
    "seed_claims",
    "nearest_distances",
    "normalise",
    "on_manifold_mask",
    "plane_grid",
    "plot_descriptor_maps",
    "plot_gap_curves",
    "plot_samples_and_loss",
    "sample_ddpm",
    "train_ddpm",
    "train_replicates",
]
