"""Run profiles shared by every notebook, the choice of device and of CPU threads.

``smoke``  seconds on a CPU: the budgets tests use to check that a notebook runs end to end.
``book``   minutes on a laptop CPU: what the published book shows.
``paper``  paper scale, meant for a GPU (Stable Diffusion 1.4 where a chapter uses it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

PROFILES: tuple[str, ...] = ("smoke", "book", "paper")


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is one of :data:`PROFILES`, else raise ``ValueError``."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


def default_device(requested: str | None = None) -> torch.device:
    """The device to compute on: ``requested``, else ``$GEOMLIB_DEVICE``, else CUDA when present.

    Asking for CUDA on a machine without it raises ``ValueError`` instead of failing later.
    """
    name = requested or os.environ.get("GEOMLIB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def select_budget(budgets: dict[str, dict], profile: str) -> dict:
    """The budget of ``profile`` from a chapter's ``{"smoke": {...}, "book": {...}, "paper": {...}}``.

    Every chapter keeps its budgets beside its code and reads them through this one switch, so
    ``profile="smoke"`` shrinks every loop, grid and sample count of the chapter at once.
    """
    check_profile(profile)
    missing = [name for name in PROFILES if name not in budgets]
    if missing:
        raise ValueError(f"budgets lack the profiles {missing}")
    return dict(budgets[profile])


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` PyTorch intra-op CPU threads (``None``: unchanged), then restore.

    Small models gain nothing from intra-op parallelism, and on a busy 2-core CPU the threads'
    spin-waits made training 8-10x slower (measured): the toy trainers default to one thread.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1 or None, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
