"""The prompt sets of chapter 05: memorised vs normal captions, from the offline model's world or
from two prompt files (e.g. Wen et al. 2024's memorised prompts vs COCO captions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geomlib.sd.images import read_prompts
from geomlib.sd.mini.world import World, caption


@dataclass
class PromptSets:
    """The two prompt sets of the comparison, and where they came from."""

    memorised: list[str]
    normal: list[str]
    source: str


def mini_prompt_sets(world: World, n_memorised: int, n_normal: int, seed: int = 0) -> PromptSets:
    """Memorised captions (each names one memorised training image) vs captions of *novel*
    attribute combinations (never seen in training), drawn with ``seed``; at most as many
    memorised captions as the world has."""
    rng = np.random.default_rng([seed, 5])
    n_memorised = min(n_memorised, len(world.memorised_captions))  # the tiny placeholder has only 4
    memorised = [
        world.memorised_captions[i]
        for i in sorted(rng.permutation(len(world.memorised_captions))[:n_memorised])
    ]
    novel = [
        caption(world.novel_attributes[i])
        for i in sorted(rng.permutation(len(world.novel_attributes))[:n_normal])
    ]
    return PromptSets(memorised, novel, "the offline model's memorised captions vs novel captions")


def file_prompt_sets(
    memorised_file: str | Path, normal_file: str | Path, n_memorised: int, n_normal: int, seed: int = 0
) -> PromptSets:
    """``n_memorised`` and ``n_normal`` prompts drawn (with ``seed``) from two prompt files."""
    rng = np.random.default_rng([seed, 5])
    sets = []
    for path, n in ((memorised_file, n_memorised), (normal_file, n_normal)):
        prompts = list(dict.fromkeys(read_prompts(path)))  # unique, in file order
        sets.append([prompts[i] for i in sorted(rng.permutation(len(prompts))[: min(n, len(prompts))])])
    return PromptSets(sets[0], sets[1], f"{Path(memorised_file).name} vs {Path(normal_file).name}")


def label_prompts(table: pd.DataFrame, sets: PromptSets) -> pd.DataFrame:
    """``table`` with a ``kind`` column: ``"memorised"`` or ``"normal"`` by prompt set."""
    kinds = {**dict.fromkeys(sets.normal, "normal"), **dict.fromkeys(sets.memorised, "memorised")}
    return table.assign(kind=table["prompt"].map(kinds))
