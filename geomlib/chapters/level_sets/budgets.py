"""The budgets of chapter 09, the level sets of ψ and ν (the paper's Fig. 5 and 16)."""

from __future__ import annotations

from dataclasses import dataclass, field

from geomlib.runtime.profiles import count
from geomlib.sd.decoder import DescriptorSettings


@dataclass(frozen=True)
class LevelSetBudget:
    """A profile of chapter 09.

    Attributes
    ----------
    n_images : images per source (the training renders or the real folder, and each guidance scale).
    guidance_scales : classifier-free guidance of the generated sources (the paper: 3, 5 and 7).
    steps : DDIM steps of the sampler.
    n_levels : equally populated level sets per source and descriptor.
    descriptors : how ψ and ν of the decoder are computed (no δ: the figure does not use it).
    batch_size : images per sampler call and per descriptor call (what an interruption can lose).
    grid_images : images per level set in the grids.
    n_splits : random halvings of the level sets behind each claim check's standard error.
    """

    n_images: int = field(metadata=count(16))
    guidance_scales: tuple[float, ...]
    steps: int = field(metadata=count(3))
    n_levels: int = field(metadata=count(3))
    descriptors: DescriptorSettings
    batch_size: int = 64
    grid_images: int = field(default=6, metadata=count(2))
    n_splits: int = field(default=200, metadata=count(20))

    def __post_init__(self) -> None:
        if self.n_levels < 3:
            raise ValueError(f"a rise then a fall needs at least 3 level sets, got n_levels={self.n_levels}")
        if self.n_images < 2 * self.n_levels:
            raise ValueError(f"n_images={self.n_images} leaves fewer than 2 images per level set")
        if not self.guidance_scales:
            raise ValueError("name at least one guidance scale")


LEVEL_SET_BUDGETS: dict[str, LevelSetBudget] = {
    "smoke": LevelSetBudget(
        n_images=15,
        guidance_scales=(3.0, 7.0),
        steps=3,
        n_levels=3,
        descriptors=DescriptorSettings(k=8),
        grid_images=2,
        n_splits=20,
    ),
    "book": LevelSetBudget(
        n_images=240,
        guidance_scales=(3.0, 5.0, 7.0),
        steps=10,
        n_levels=5,
        descriptors=DescriptorSettings(k=16),
    ),
    "paper": LevelSetBudget(
        n_images=2000,
        guidance_scales=(3.0, 5.0, 7.0),
        steps=50,
        n_levels=5,
        # 8 VJPs per pass through SD's 512 px decoder bound the GPU memory
        descriptors=DescriptorSettings(k=120, chunk_size=8),
        batch_size=8,
    ),
}
