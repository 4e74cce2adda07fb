"""Chapter 04: ImageNet-C corruptions and the decoder's geometry at corrupted images (paper section 4,
Fig. 4). The chapter's names, from its modules:

* :mod:`~geomlib.chapters.corruptions.corrupt`: reproducible corruption through ``imagecorruptions``;
* :mod:`~geomlib.chapters.corruptions.measure`: budgets, image sources, ψ, ν, δ per corrupted image
  (cached, or through the describe runs of the command line);
* :mod:`~geomlib.chapters.corruptions.effects`: paired changes per corruption and the paper's claim;
* :mod:`~geomlib.chapters.corruptions.figures`: Fig. 4, effects, examples, slider and explorer.
"""

from geomlib.chapters.corruptions.corrupt import (
    BENCHMARK_CORRUPTIONS,
    CLEAN,
    CORRUPTION_GROUPS,
    EXPECTED_SIGN,
    EXTRA_CORRUPTION,
    MIN_SIDE,
    PAPER_CORRUPTIONS,
    SEVERITIES,
    check_corruptions,
    corrupt_image,
    corrupt_images,
    corruption_examples,
    corruption_group,
    image_seed,
)
from geomlib.chapters.corruptions.effects import group_claims, severity_effects
from geomlib.chapters.corruptions.figures import (
    GROUP_COLOURS,
    corruption_explorer,
    plot_effects,
    plot_examples,
    plot_severity_panels,
    severity_slider,
)
from geomlib.chapters.corruptions.measure import (
    CORRUPTION_BUDGETS,
    HELD_OUT_SEED,
    CorruptionBudget,
    corruption_descriptors,
    corruption_descriptors_cli,
    in_domain_images,
    write_corrupted_images,
)

__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CLEAN",
    "CORRUPTION_BUDGETS",
    "CORRUPTION_GROUPS",
    "EXPECTED_SIGN",
    "EXTRA_CORRUPTION",
    "GROUP_COLOURS",
    "HELD_OUT_SEED",
    "MIN_SIDE",
    "PAPER_CORRUPTIONS",
    "SEVERITIES",
    "CorruptionBudget",
    "check_corruptions",
    "corrupt_image",
    "corrupt_images",
    "corruption_descriptors",
    "corruption_descriptors_cli",
    "corruption_examples",
    "corruption_group",
    "corruption_explorer",
    "group_claims",
    "image_seed",
    "in_domain_images",
    "plot_effects",
    "plot_examples",
    "plot_severity_panels",
    "severity_effects",
    "severity_slider",
    "write_corrupted_images",
]
