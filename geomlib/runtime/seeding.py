"""Reproducible initialisation without touching the caller's random state.

Library code never calls ``torch.manual_seed`` on the global generator: a model built from a
``seed`` must not change what the caller's next ``torch.randn`` returns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def seed_from(*parts: int) -> int:
    """One 32-bit seed from integer ``parts`` (e.g. seed, phase, item index), mixed by numpy's
    ``SeedSequence``: nearby parts give unrelated streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def generator_for(*parts: int) -> torch.Generator:
    """A CPU generator seeded with :func:`seed_from` ``(*parts)``: one stream per item or step,
    whatever batch or order it is computed in."""
    return torch.Generator().manual_seed(seed_from(*parts))


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed the global CPU RNG only inside the block, then restore the caller's state.

    For code that draws from the global RNG and takes no generator (diffusers and transformers
    initialise their models that way).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def reinitialise(module: ModuleT, generator: torch.Generator) -> ModuleT:
    """Re-draw every ``nn.Linear`` and ``nn.Conv2d`` with PyTorch's default initialisation
    (Kaiming-uniform weights with ``a = sqrt(5)``, biases uniform in ``±1/sqrt(fan_in)``) from
    ``generator``; returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1 / math.sqrt(layer.weight[0].numel())  # fan_in
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return module
