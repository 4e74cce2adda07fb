"""Run profiles shared by every notebook, typed budgets, the choice of device and of CPU threads.

``smoke``  seconds on a CPU: the budgets tests use to check that a notebook runs end to end.
``book``   minutes on a laptop CPU: what the published book shows.
``paper``  paper scale, meant for a GPU (Stable Diffusion 1.4 where a chapter uses it).

A chapter's budget is a frozen dataclass, one instance per profile, so the three profiles have the
same fields by construction: ``select_budget(CHAPTER_BUDGETS, profile)`` returns one of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

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


BudgetT = TypeVar("BudgetT")
#: The metadata key of a budget field's value in a dry run (see :func:`count`).
DRY_RUN = "dry_run"


def count(dry_run: Any) -> dict[str, Any]:
    """The metadata of a budget field that counts work (images, prompts, steps, seeds, grid
    points): its value in a dry run is ``dry_run``. ``n_images: int = field(metadata=count(2))``."""
    return {DRY_RUN: dry_run}


def shrink_counts(budget: BudgetT) -> BudgetT:
    """``budget`` with every :func:`count` field at its dry-run value and every other field (sketch
    sizes, radii, methods, chunk sizes, models) as it is: the same code path, in seconds."""
    if not dataclasses.is_dataclass(budget) or isinstance(budget, type):
        raise TypeError(f"a budget is a dataclass instance, got {type(budget).__name__}")
    dry = {f.name: f.metadata[DRY_RUN] for f in dataclasses.fields(budget) if DRY_RUN in f.metadata}
    return dataclasses.replace(budget, **dry)


def select_budget(budgets: Mapping[str, BudgetT], profile: str, *, dry_run: bool = False) -> BudgetT:
    """The budget of ``profile`` from a chapter's ``{"smoke": ..., "book": ..., "paper": ...}``.

    Every chapter keeps its budgets beside its code, as instances of one frozen dataclass, and reads
    them through this one switch, so ``profile="smoke"`` shrinks every loop, grid and sample count
    of the chapter at once. ``dry_run=True`` keeps the profile's settings and shrinks only its
    counts (:func:`shrink_counts`): the ``paper`` path, run on a CPU in seconds. Change a field for
    one run with ``dataclasses.replace(budget, k=32)``.
    """
    check_profile(profile)
    missing = [name for name in PROFILES if name not in budgets]
    if missing:
        raise ValueError(f"budgets lack the profiles {missing}")
    kinds = {type(budget) for budget in budgets.values()}
    if len(kinds) != 1 or not dataclasses.is_dataclass(next(iter(kinds))):
        raise TypeError(
            f"a chapter's budgets must be instances of one dataclass, got {sorted(map(str, kinds))}"
        )
    return shrink_counts(budgets[profile]) if dry_run else budgets[profile]


def set_torch_threads(n: int | None) -> int:
    """Use ``n`` PyTorch intra-op CPU threads from now on (``None``: unchanged); returns the number
    used before. The form of :func:`torch_threads` for a notebook or a script's ``main``."""
    before = torch.get_num_threads()
    if n is None:
        return before
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    torch.set_num_threads(n)
    return before


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` PyTorch intra-op CPU threads (``None``: unchanged), then restore.

    Small models gain nothing from intra-op parallelism, and on a busy 2-core CPU the threads'
    spin-waits made training 8-10x slower (measured): the toy trainers default to one thread.
    """
    before = set_torch_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
