"""Prompt sets for memorisation studies: memorised vs normal captions, from the offline model's world
(with the two controls that separate memorisation from wording) or from two prompt files (e.g. Wen
et al. 2024's memorised prompts vs COCO captions). Chapters 05 and 08 draw their prompts here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from geomlib.sd.images import read_prompts
from geomlib.sd.mini.world import ATTRIBUTES, Attributes, World, caption, made_up_names


@dataclass
class PromptSets:
    """The two prompt sets of the comparison, and where they came from."""

    memorised: list[str]
    normal: list[str]
    source: str


def _draw(count: int, pool_size: int, rng: np.random.Generator) -> list[int]:
    """``min(count, pool_size)`` distinct indices of the pool, in pool order."""
    return sorted(int(i) for i in rng.permutation(pool_size)[: min(count, pool_size)])


def mini_prompt_sets(world: World, n_memorised: int, n_normal: int, seed: int = 0) -> PromptSets:
    """Memorised captions (each names one memorised training image) vs captions of *novel*
    attribute combinations (never seen in training), drawn with ``seed``; at most as many
    memorised captions as the world has."""
    rng = np.random.default_rng([seed, 5])
    memorised = [world.memorised_captions[i] for i in _draw(n_memorised, len(world.memorised_captions), rng)]
    novel = [caption(world.novel_attributes[i]) for i in _draw(n_normal, len(world.novel_attributes), rng)]
    return PromptSets(memorised, novel, "the offline model's memorised captions vs novel captions")


def file_prompt_sets(
    memorised_file: str | Path, normal_file: str | Path, n_memorised: int, n_normal: int, seed: int = 0
) -> PromptSets:
    """``n_memorised`` and ``n_normal`` prompts drawn (with ``seed``) from two prompt files."""
    rng = np.random.default_rng([seed, 5])
    sets = []
    for path, n in ((memorised_file, n_memorised), (normal_file, n_normal)):
        prompts = list(dict.fromkeys(read_prompts(path)))  # unique, in file order
        sets.append([prompts[i] for i in _draw(n, len(prompts), rng)])
    return PromptSets(sets[0], sets[1], f"{Path(memorised_file).name} vs {Path(normal_file).name}")


def unused_names(world: World, count: int) -> list[str]:
    """``count`` made-up names of the same kind as the memorised ones that no caption of the
    training data contains (the world's name generator, continued past the memorised names)."""
    names = made_up_names(len(world.memorised_names) + count, world.seed)
    unused = [name for name in names if name not in set(world.memorised_names)]
    return unused[:count]


def named_novel_captions(world: World, novel: list[str]) -> list[str]:
    """Control 1 (wording without memorisation): each novel caption followed by ``named <word>``,
    with a made-up word that training never showed, so the caption reads like a memorised one."""
    return [f"{text} named {name}" for text, name in zip(novel, unused_names(world, len(novel)), strict=True)]


def _changed(attributes: Attributes, rng: np.random.Generator) -> tuple[Attributes, str]:
    """``attributes`` with one captioned attribute replaced by another value (the foreground
    colour kept distinct from the background, as in every scene of the world)."""
    names = [f.name for f in fields(Attributes)]
    while True:
        name = names[int(rng.integers(len(names)))]
        choices = [v for v in ATTRIBUTES[name] if v != getattr(attributes, name)]
        changed = replace(attributes, **{name: choices[int(rng.integers(len(choices)))]})
        if changed.colour != changed.background:
            return changed, name


def changed_attribute_captions(world: World, memorised: list[str], seed: int = 0) -> list[str]:
    """Control 2 (memorised wording, other content): each memorised caption with one attribute
    (shape, colour, background, size, position or texture) changed and its trained name kept.

    The caption is rebuilt from the scene's attributes by the world's grammar, so it differs from
    the memorised one in exactly that attribute's words."""
    rng = np.random.default_rng([seed, 11])
    by_caption = dict(zip(world.memorised_captions, world.memorised, strict=True))
    names = dict(zip(world.memorised_captions, world.memorised_names, strict=True))
    unknown = [text for text in memorised if text not in by_caption]
    if unknown:
        raise ValueError(f"not memorised captions of this world: {unknown[:3]}")
    changed = []
    for text in memorised:
        attributes, _ = _changed(by_caption[text].attributes, rng)
        changed.append(f"{caption(attributes)} named {names[text]}")
    return changed
