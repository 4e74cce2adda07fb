"""Chapter 08: a memorisation benchmark with ground truth.

The offline model memorised 40 training scenes, each under a unique caption ending in a made-up
name; novel captions describe attribute combinations it never saw. On those prompts, and on two
controls (novel captions with an unused name, memorised captions with one attribute changed), four
detectors are compared on the same samples: the paper's decoder geometry along the trajectory, Wen
et al.'s text-conditional noise, the posterior mean's Jacobian and the nearest training image.
The chapter's names, from :mod:`~geomlib.chapters.memorisation.budgets` (budgets and prompts),
:mod:`~geomlib.chapters.memorisation.detectors` (samples and scores),
:mod:`~geomlib.chapters.memorisation.benchmark` (the statistics) and
:mod:`~geomlib.chapters.memorisation.figures`.
"""

from geomlib.chapters.memorisation.benchmark import (
    DETECTORS,
    Detector,
    benchmark_table,
    benchmark_view,
    contrast_scores,
    nearest_image_shares,
    per_prompt_scores,
    roc_points,
    verdict_lines,
)
from geomlib.chapters.memorisation.budgets import (
    KIND_LABELS,
    KIND_SHORT_LABELS,
    KINDS,
    MEMORISATION_BUDGETS,
    MemorisationBudget,
    benchmark_prompts,
    file_benchmark_prompts,
)
from geomlib.chapters.memorisation.detectors import (
    FAMILIES,
    Samples,
    TrainingImages,
    benchmark_caches,
    decoder_scores,
    described_steps,
    folder_training_images,
    generate_samples,
    nearest_training_scores,
    noise_difference_scores,
    posterior_mean_scores,
    world_training_images,
)
from geomlib.chapters.memorisation.figures import plot_roc_curves, plot_samples

__all__ = [
    "DETECTORS",
    "FAMILIES",
    "KINDS",
    "KIND_LABELS",
    "KIND_SHORT_LABELS",
    "MEMORISATION_BUDGETS",
    "Detector",
    "MemorisationBudget",
    "Samples",
    "TrainingImages",
    "benchmark_caches",
    "benchmark_prompts",
    "benchmark_table",
    "benchmark_view",
    "contrast_scores",
    "decoder_scores",
    "described_steps",
    "file_benchmark_prompts",
    "folder_training_images",
    "generate_samples",
    "nearest_image_shares",
    "nearest_training_scores",
    "noise_difference_scores",
    "per_prompt_scores",
    "plot_roc_curves",
    "plot_samples",
    "posterior_mean_scores",
    "roc_points",
    "verdict_lines",
    "world_training_images",
]
