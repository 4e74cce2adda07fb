"""The budgets of chapter 08 and its prompt kinds: memorised captions, novel ones, and the two
controls that separate memorisation from wording."""

from __future__ import annotations

from dataclasses import dataclass, field

from geomlib.runtime.profiles import count
from geomlib.sd.decoder import DescriptorSettings
from geomlib.sd.mini.world import World
from geomlib.sd.prompts import (
    PromptSets,
    changed_attribute_captions,
    file_prompt_sets,
    mini_prompt_sets,
    named_novel_captions,
)

#: The prompt kinds, in the order of the tables: the memorised captions (the positives) and the
#: three kinds they are told apart from.
KINDS: tuple[str, ...] = ("memorised", "novel", "named_novel", "changed_attribute")
#: Readers' names of the kinds.
KIND_LABELS: dict[str, str] = {
    "memorised": "memorised",
    "novel": "novel",
    "named_novel": "novel + unused name",
    "changed_attribute": "memorised, one attribute changed",
}

#: Row labels of image grids.
KIND_SHORT_LABELS: dict[str, str] = {
    "memorised": "memorised",
    "novel": "novel",
    "named_novel": "novel + name",
    "changed_attribute": "changed",
}


@dataclass(frozen=True)
class MemorisationBudget:
    """A profile of chapter 08.

    Attributes
    ----------
    n_memorised, n_novel, n_seeds : prompts of each kind (each control has as many as its source
        kind) and noise seeds per prompt.
    steps, guidance : the sampler (DDIM steps of the pipeline's scheduler, classifier-free guidance).
    batch_size : trajectories per sampler call and per batch of the detectors.
    described_steps, last_steps : the decoder's ψ, ν, δ at this many evenly spaced steps ending at
        the last one (the trajectory), and how many of them form the "last steps" score.
    descriptors : how the decoder's descriptors are computed.
    noise_steps : Wen et al.'s score averages over the first this many steps.
    jacobian_step : the step (1-based) whose input ``x_t`` the posterior mean is differentiated at.
    jacobian_k : rows of the projected sketch ``W J`` of the posterior mean's Jacobian.
    n_training_images : training renders searched by the nearest-image baseline (the memorised
        scenes always are); ``None``: all of them.
    n_bootstrap : bootstrap resamples of each interval.
    """

    n_memorised: int = field(metadata=count(2))
    n_novel: int = field(metadata=count(2))
    n_seeds: int = field(metadata=count(1))
    steps: int = field(metadata=count(3))
    guidance: float
    batch_size: int
    described_steps: int = field(metadata=count(2))
    last_steps: int = field(metadata=count(1))
    descriptors: DescriptorSettings
    noise_steps: int = field(metadata=count(1))
    jacobian_step: int = field(metadata=count(2))
    jacobian_k: int
    n_training_images: int | None = field(metadata=count(64))
    n_bootstrap: int = field(default=2000, metadata=count(200))

    def __post_init__(self) -> None:
        for name in ("last_steps", "noise_steps", "jacobian_step", "described_steps"):
            if not 1 <= getattr(self, name) <= self.steps:
                raise ValueError(f"{name} must lie in [1, steps = {self.steps}], got {getattr(self, name)}")
        if self.last_steps > self.described_steps:
            raise ValueError(
                f"last_steps ({self.last_steps}) exceeds described_steps ({self.described_steps})"
            )


MEMORISATION_BUDGETS: dict[str, MemorisationBudget] = {
    "smoke": MemorisationBudget(
        n_memorised=3,
        n_novel=3,
        n_seeds=1,
        steps=4,
        guidance=7.5,
        batch_size=16,
        described_steps=2,
        last_steps=1,
        descriptors=DescriptorSettings(k=4, n_dirs=2, radius=0.05),
        noise_steps=2,
        jacobian_step=2,
        jacobian_k=4,
        n_training_images=64,
        n_bootstrap=200,
    ),
    "book": MemorisationBudget(
        n_memorised=40,
        n_novel=40,
        n_seeds=2,
        steps=10,
        guidance=7.5,
        batch_size=40,
        described_steps=2,  # after steps 5 and 10: 640 decoder descriptions, 0.07 s each on 2 cores
        last_steps=1,
        descriptors=DescriptorSettings(k=8, n_dirs=2, radius=0.05),
        noise_steps=3,
        jacobian_step=5,
        jacobian_k=8,
        n_training_images=2000,
    ),
    "paper": MemorisationBudget(
        n_memorised=500,
        n_novel=500,
        n_seeds=2,
        steps=50,
        guidance=7.5,
        batch_size=8,
        described_steps=10,
        last_steps=3,
        # 8 VJPs per pass through SD's 512 px decoder bound the GPU memory (as chapter 05)
        descriptors=DescriptorSettings(k=120, n_dirs=16, radius=0.05, chunk_size=8),
        noise_steps=5,
        jacobian_step=20,
        jacobian_k=32,
        n_training_images=None,
    ),
}


def benchmark_prompts(world: World, n_memorised: int, n_novel: int, seed: int = 0) -> dict[str, list[str]]:
    """The offline world's prompts of every kind in :data:`KINDS`: memorised and novel captions
    (:func:`~geomlib.sd.prompts.mini_prompt_sets`), the novel ones followed by an unused made-up
    name, and the memorised ones with one attribute changed (their trained name kept)."""
    sets = mini_prompt_sets(world, n_memorised, n_novel, seed=seed)
    return {
        "memorised": sets.memorised,
        "novel": sets.normal,
        "named_novel": named_novel_captions(world, sets.normal),
        "changed_attribute": changed_attribute_captions(world, sets.memorised, seed=seed),
    }


def file_benchmark_prompts(
    memorised_file: str, normal_file: str, n_memorised: int, n_novel: int, seed: int = 0
) -> dict[str, list[str]]:
    """Memorised and normal prompts from two files (e.g. Wen et al. 2024's memorised prompts and
    COCO captions); the controls need a world's ground truth, so there are none."""
    sets: PromptSets = file_prompt_sets(memorised_file, normal_file, n_memorised, n_novel, seed=seed)
    return {"memorised": sets.memorised, "novel": sets.normal}
