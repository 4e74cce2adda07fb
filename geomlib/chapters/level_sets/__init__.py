"""Chapter 09: level sets of ψ and ν, diversity and fidelity across them (the paper's Fig. 5 and
16). The chapter's names, from its modules:

* :mod:`~geomlib.chapters.level_sets.budgets`: the profiles;
* :mod:`~geomlib.chapters.level_sets.measure`: real images and samples at several guidance scales,
  with ψ and ν of the decoder at their latents (cached);
* :mod:`~geomlib.chapters.level_sets.analysis`: equally populated level sets, Vendi and fidelity
  per set, and the paper's claims as four-way checks with their power;
* :mod:`~geomlib.chapters.level_sets.figures`: Fig. 5 and the grids of Fig. 16.
"""

from geomlib.chapters.level_sets.analysis import (
    CLAIMS,
    SHAPE_LABELS,
    descriptor_values,
    grid_indices,
    level_set_claims,
    level_set_summary,
    level_sets,
    rise_and_fall,
    shape_contrast,
    source_features,
    source_fidelity,
    verdict_counts,
)
from geomlib.chapters.level_sets.budgets import LEVEL_SET_BUDGETS, LevelSetBudget
from geomlib.chapters.level_sets.figures import plot_level_set_grid, plot_level_set_measures
from geomlib.chapters.level_sets.measure import (
    REAL,
    LevelSetSource,
    class_prompts,
    describe_sources,
    folder_real_source,
    generated_sources,
    guidance_name,
    model_classifier,
    world_prompts,
    world_real_source,
)

__all__ = [
    "CLAIMS",
    "LEVEL_SET_BUDGETS",
    "REAL",
    "SHAPE_LABELS",
    "LevelSetBudget",
    "LevelSetSource",
    "class_prompts",
    "describe_sources",
    "descriptor_values",
    "folder_real_source",
    "generated_sources",
    "grid_indices",
    "guidance_name",
    "level_set_claims",
    "level_set_summary",
    "level_sets",
    "model_classifier",
    "plot_level_set_grid",
    "plot_level_set_measures",
    "rise_and_fall",
    "shape_contrast",
    "source_features",
    "source_fidelity",
    "verdict_counts",
    "world_prompts",
    "world_real_source",
]
