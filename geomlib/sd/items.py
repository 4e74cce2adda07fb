"""The inputs of a describe run: image files and (prompt, noise seed) samples, each with its
position in the full sorted input list (which decides its shard and names the part file of the
batch it starts), read and checked before any model is loaded."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from geomlib.sd.images import IMAGE_SUFFIXES, InputError, image_files, image_size, read_prompts


@dataclass(frozen=True)
class ImageItem:
    """An image file. ``index``: its position in the full sorted input list, which decides its
    shard (``index % world_size``) and names the part file of the batch it starts."""

    index: int
    id: str
    path: Path


@dataclass(frozen=True)
class PromptItem:
    """One generated sample: prompt number ``prompt_index`` from noise seed ``noise_seed``."""

    index: int
    id: str
    prompt_index: int
    prompt: str
    noise_seed: int


Item = ImageItem | PromptItem


def find_images(folder: Path) -> list[ImageItem]:
    """The images under ``folder`` as items, sorted by relative path, which is their id."""
    try:
        paths = image_files(folder)
    except InputError as error:
        raise InputError(f"--images {error}") from error
    if not paths:
        raise InputError(
            f"--images {folder}: no images found (looked for {' '.join(IMAGE_SUFFIXES)}, recursively)"
        )
    return [ImageItem(index=i, id=p.relative_to(folder).as_posix(), path=p) for i, p in enumerate(paths)]


def check_images(items: list[ImageItem], skip_unreadable: bool, resize: bool) -> list[ImageItem]:
    """Read every header: refuse unreadable files (or drop them) and, unless ``resize``, mixed sizes.

    Returns the readable items; raises :class:`InputError` naming the offending files.
    """
    sizes: dict[str, tuple[int, int]] = {}
    unreadable: list[str] = []
    for item in items:
        size = image_size(item.path)
        if isinstance(size, str):
            unreadable.append(f"{item.id} ({size})")
        else:
            sizes[item.id] = size
    if unreadable and not skip_unreadable:
        raise InputError(
            f"{len(unreadable)} unreadable image(s): "
            + _listing(unreadable)
            + "\nremove or fix them, or pass --skip-unreadable"
        )
    if unreadable:
        print(f"skipping {len(unreadable)} unreadable image(s): {_listing(unreadable)}", file=sys.stderr)
    counts = Counter(sizes.values())
    if len(counts) > 1 and not resize:
        parts = []
        for (height, width), count in counts.most_common():
            examples = [i for i, s in sizes.items() if s == (height, width)][:3]
            parts.append(f"{height}x{width}: {count} image(s), e.g. {', '.join(examples)}")
        raise InputError(
            "images of different sizes (height x width):\n  "
            + "\n  ".join(parts)
            + "\npass --resize to resize all to the model's size (or --height/--width)"
        )
    return [item for item in items if item.id in sizes]


def _listing(entries: list[str], most: int = 10) -> str:
    more = f" ... and {len(entries) - most} more" if len(entries) > most else ""
    return "; ".join(entries[:most]) + more


def prompt_items(path: Path, samples_per_prompt: int, first_noise_seed: int) -> list[PromptItem]:
    """One item per (prompt, noise seed): prompt ``i`` (its ``i``-th entry of the file) with seeds
    ``first_noise_seed + j``, ``j < samples_per_prompt``; ids ``prompt000012-seed3``."""
    try:
        prompts = read_prompts(path)
    except InputError as error:
        raise InputError(f"--prompts {error}") from error
    items: list[PromptItem] = []
    for i, prompt in enumerate(prompts):
        for seed in range(first_noise_seed, first_noise_seed + samples_per_prompt):
            items.append(
                PromptItem(
                    index=len(items),
                    id=f"prompt{i:06d}-seed{seed}",
                    prompt_index=i,
                    prompt=prompt,
                    noise_seed=seed,
                )
            )
    return items
