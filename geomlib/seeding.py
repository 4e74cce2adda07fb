"""Reproducible initialisation without touching the caller's random state.

Library code never calls ``torch.manual_seed`` on the global generator: a model built from a
``seed`` must not change what the caller's next ``torch.randn`` returns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


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
