"""The prompt sets of chapter 05 (drawn by :mod:`geomlib.sd.prompts`, which chapter 08 shares) and
their labels in a table."""

from __future__ import annotations

import pandas as pd

from geomlib.sd.prompts import PromptSets, file_prompt_sets, mini_prompt_sets

__all__ = ["PromptSets", "file_prompt_sets", "label_prompts", "mini_prompt_sets"]


def label_prompts(table: pd.DataFrame, sets: PromptSets) -> pd.DataFrame:
    """``table`` with a ``kind`` column: ``"memorised"`` or ``"normal"`` by prompt set."""
    kinds = {**dict.fromkeys(sets.normal, "normal"), **dict.fromkeys(sets.memorised, "memorised")}
    return table.assign(kind=table["prompt"].map(kinds))
