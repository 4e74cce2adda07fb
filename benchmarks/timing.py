"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def timed(fn: Callable[[], T], repeats: int, device: torch.device) -> tuple[float, T]:
    """Best wall time of ``repeats`` runs of ``fn`` after one warm-up, and its last result.

    CUDA work is synchronised around each run so that the time covers the kernels, not their launch.
    """
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result
