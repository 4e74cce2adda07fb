"""The Hugging Face libraries, imported once and quietly: the pipeline class and its type.

The lowest module of :mod:`geomlib.sd`: the builders of :mod:`geomlib.sd.mini` and the loaders of
:mod:`geomlib.sd.pipelines` both take the pipeline class from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeAlias

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging


@contextlib.contextmanager
def quiet_hub_libraries() -> Iterator[None]:
    """Silence diffusers/transformers progress bars and warnings (e.g. "requires torchvision")
    inside the block, restoring their settings after."""
    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


with quiet_hub_libraries():  # importing the pipeline warns that torchvision is missing: it is not needed
    from diffusers import StableDiffusionPipeline

#: A diffusers ``StableDiffusionPipeline``. Its components (``vae``, ``unet``, ...) are registered at
#: run time, which static type checkers cannot follow, hence ``Any`` in annotations.
SDPipeline: TypeAlias = Any

__all__ = ["SDPipeline", "StableDiffusionPipeline", "quiet_hub_libraries"]
