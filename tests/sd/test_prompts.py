"""geomlib.sd.prompts: the world's prompt kinds against the world's own grammar and ground truth."""

from dataclasses import fields

import pytest

from geomlib.sd.mini.world import Attributes, World, all_attributes, caption
from geomlib.sd.prompts import (
    changed_attribute_captions,
    mini_prompt_sets,
    named_novel_captions,
    unused_names,
)


@pytest.fixture(scope="module")
def world():
    return World(seed=0, n_memorised=12)


def test_unused_names_are_new_names_of_the_same_kind(world):
    names = unused_names(world, 30)
    assert len(set(names)) == 30 and not set(names) & set(world.memorised_names)
    assert all(name.isalpha() and name.islower() for name in names)
    assert unused_names(world, 5) == names[:5]  # the generator continued, not redrawn


def test_named_novel_captions_are_novel_captions_with_an_unused_name(world):
    novel = mini_prompt_sets(world, 4, 6, seed=2).normal
    named = named_novel_captions(world, novel)
    unused = set(unused_names(world, 6))
    for text, plain in zip(named, novel, strict=True):
        head, name = text.rsplit(" named ", 1)
        assert head == plain and name in unused
    assert len({text.rsplit(" ", 1)[1] for text in named}) == 6  # a different name for each


def test_changed_attribute_captions_differ_in_exactly_one_attribute(world):
    by_caption = {caption(a): a for a in all_attributes()}  # the grammar's captions are unique
    memorised = mini_prompt_sets(world, 12, 1, seed=0).memorised
    changed = changed_attribute_captions(world, memorised, seed=3)
    scene_of = dict(zip(world.memorised_captions, world.memorised, strict=True))
    name_of = dict(zip(world.memorised_captions, world.memorised_names, strict=True))
    for original, text in zip(memorised, changed, strict=True):
        head, name = text.rsplit(" named ", 1)
        assert name == name_of[original]  # the trained name is kept
        attributes: Attributes = by_caption[head]
        differing = [
            f.name
            for f in fields(Attributes)
            if getattr(attributes, f.name) != getattr(scene_of[original].attributes, f.name)
        ]
        assert len(differing) == 1 and attributes.colour != attributes.background
    assert changed_attribute_captions(world, memorised, seed=3) == changed
    with pytest.raises(ValueError, match="not memorised"):
        changed_attribute_captions(world, ["a red circle on a blue background"])
