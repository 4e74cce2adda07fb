"""Chapter 09: level sets by rank, the claimed shapes, the claim checks on sources of known shape,
the grids, and the world's sources."""

import numpy as np
import pandas as pd
import pytest
import torch

from geomlib.chapters import level_sets as L
from geomlib.core.diversity import vendi_diversity


def test_level_sets_are_equally_populated_and_ordered_by_value():
    rng = np.random.default_rng(0)
    for n, levels in [(10, 3), (48, 5), (7, 7)]:
        values = rng.normal(size=n)
        sets = L.level_sets(values, levels)
        counts = np.bincount(sets, minlength=levels)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
        for a in range(n):  # brute force: a higher value is never in a lower set
            assert all(sets[a] >= sets[b] for b in range(n) if values[a] > values[b])
    assert (L.level_sets(np.zeros(6), 3) == [0, 0, 1, 1, 2, 2]).all()  # ties by position
    with pytest.raises(ValueError, match="finite"):
        L.level_sets(np.array([0.0, np.nan, 1.0]), 2)
    with pytest.raises(ValueError, match="at least"):
        L.level_sets(np.zeros(2), 3)


def test_a_peak_needs_both_a_rise_and_a_fall():
    assert L.shape_contrast("peak", [1, 3, 4, 3, 1]) == pytest.approx(2.333333, rel=1e-5)
    assert L.shape_contrast("peak", [1, 2, 3, 4, 5]) == pytest.approx(-2.0)  # keeps rising
    assert L.shape_contrast("top", [1, 2, 0, 4]) == 3
    assert L.rise_and_fall([1, 2, 3, 4, 5]) == (2.0, -2.0)
    with pytest.raises(ValueError, match="shape"):
        L.shape_contrast("valley", [1, 2, 3])


def _source(name, psi, features, labels=None):
    """A source whose latents are ``features`` reshaped to (N, 4, h, w)."""
    n = len(psi)
    latents = torch.as_tensor(features, dtype=torch.float32).reshape(n, 4, 2, -1)
    images = np.full((n, 8, 8, 3), 0.5) + 0.1 * np.random.default_rng(1).normal(size=(n, 8, 8, 3))
    table = pd.DataFrame({"source": name, "image": np.arange(n), "local_scaling": psi, "local_rank": psi})
    return L.LevelSetSource(name, images.clip(0, 1), latents, labels), table


def _peaked_features(n_levels, per_level, widths, seed=0):
    """Features whose spread per level set follows ``widths``: near-identical vectors (a small
    spread) have a Vendi score near 1, widely spread ones a larger score."""
    rng = np.random.default_rng(seed)
    centre = np.ones(16)
    rows = [centre + width * rng.normal(size=(per_level, 16)) for width in widths]
    psi = np.repeat(np.arange(n_levels, dtype=float), per_level) + rng.uniform(0, 0.5, n_levels * per_level)
    return psi, np.concatenate(rows)


def test_claim_checks_find_a_known_peak_and_call_a_monotone_rise_opposite():
    peak_psi, peak = _peaked_features(5, 40, [0.05, 0.5, 1.5, 0.5, 0.05])
    rise_psi, rise = _peaked_features(5, 40, [0.05, 0.2, 0.5, 1.0, 2.0], seed=1)
    peaked, peaked_table = _source("peaked", peak_psi, peak)
    rising, rising_table = _source("rising", rise_psi, rise)
    table = pd.concat([peaked_table, rising_table])
    claims = L.level_set_claims([peaked, rising], table, 5, {}, n_splits=60)
    latents = claims[claims["measure"] == "vendi_latents"].set_index("source")
    assert latents.loc["peaked", "verdict"] == "as claimed"
    assert latents.loc["rising", "verdict"] == "opposite" and latents.loc["rising", "fall"] < 0
    assert set(claims["measure"]) == {"vendi_pixels", "vendi_latents"}  # no fidelity without scores
    # the summary's Vendi score per set is the score of that set's latents
    summary = L.level_set_summary([peaked], table, "local_scaling", 5, {})
    first = L.level_sets(peak_psi, 5) == 0
    assert summary.loc[0, "vendi_latents"] == pytest.approx(vendi_diversity(peak[first]))
    assert list(summary["n"]) == [40] * 5


def test_fidelity_claims_use_the_per_image_scores():
    psi = np.arange(60, dtype=float)
    accuracy = np.where((psi >= 12) & (psi < 48), 1.0, 0.5) + 0.01 * np.random.default_rng(2).normal(size=60)
    source, table = _source("scored", psi, np.random.default_rng(3).normal(size=(60, 16)))
    fidelity = {"scored": {"accuracy": accuracy, "confidence": accuracy}}
    claims = L.level_set_claims([source], table, 5, fidelity, n_splits=60).set_index(
        ["descriptor", "measure"]
    )
    assert claims.loc[("local_scaling", "accuracy"), "verdict"] == "as claimed"
    assert claims.loc[("local_scaling", "accuracy"), "effect"] == pytest.approx(0.5, abs=0.02)
    assert claims.loc[("local_rank", "accuracy"), "shape"] == "highest in the top level set"
    summary = L.level_set_summary([source], table, "local_scaling", 5, fidelity)
    assert summary.loc[2, "accuracy_low"] < summary.loc[2, "accuracy"] < summary.loc[2, "accuracy_high"]


def test_a_table_that_misses_images_is_refused():
    source, table = _source("short", np.arange(10.0), np.ones((10, 16)))
    with pytest.raises(ValueError, match="not its 10 images"):
        L.descriptor_values(table.iloc[:-1], source, "local_scaling")


def test_grid_columns_are_level_sets_in_rank_order():
    values = np.random.default_rng(4).normal(size=50)
    grid = L.grid_indices(values, 5, 3)
    sets = L.level_sets(values, 5)
    assert grid.shape == (3, 5)
    assert (sets[grid] == np.arange(5)).all()
    assert (np.diff(values[grid], axis=0) >= 0).all()  # within a column, increasing


def test_world_sources_share_prompts_and_noises_across_scales(tiny_pipe):
    from geomlib.sd.mini.world import World

    world = World(seed=0, n_memorised=4, image_size=16)
    prompts, labels = L.world_prompts(world, 4)
    assert labels.shape == (4, 6) and len(set(prompts)) > 1
    sources = L.generated_sources(tiny_pipe, prompts, (1.0, 1.0, 3.0), steps=2, labels=labels)
    assert [s.name for s in sources] == ["guidance 1", "guidance 1", "guidance 3"]
    torch.testing.assert_close(sources[0].latents, sources[1].latents)  # same prompts, same noises
    assert not torch.allclose(sources[0].latents, sources[2].latents)
    assert sources[0].images.shape == (4, 16, 16, 3) and sources[0].images.min() >= 0
    real = L.world_real_source(tiny_pipe, world, train_size=100, n=5)
    assert real.name == L.REAL and real.latents.shape[0] == 5 and real.labels.shape == (5, 6)
    with pytest.raises(ValueError, match="non-empty"):
        L.generated_sources(tiny_pipe, "a prompt", (1.0,), steps=2)


def test_budgets_need_a_rise_and_a_fall():
    from geomlib.sd.decoder import DescriptorSettings

    with pytest.raises(ValueError, match="at least 3"):
        L.LevelSetBudget(
            n_images=20, guidance_scales=(3.0,), steps=2, n_levels=2, descriptors=DescriptorSettings(k=4)
        )
    with pytest.raises(ValueError, match="fewer than 2"):
        L.LevelSetBudget(
            n_images=5, guidance_scales=(3.0,), steps=2, n_levels=3, descriptors=DescriptorSettings(k=4)
        )


def test_descriptors_resume_from_the_cache_and_never_read_other_latents(tiny_pipe, tmp_path, monkeypatch):
    from geomlib.runtime.cache import ResultCache
    from geomlib.sd.decoder import DescriptorSettings

    settings = DescriptorSettings(k=3)
    latents = torch.randn(5, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    source = L.LevelSetSource("a", np.zeros((5, 16, 16, 3)), latents)
    cache = ResultCache(tmp_path, {"k": 3})
    first = L.describe_sources(tiny_pipe, [source], settings, batch_size=2, cache=cache, progress=False)
    assert list(first["image"]) == [0, 1, 2, 3, 4] and first["local_scaling"].notna().all()
    calls = []
    original = DescriptorSettings.describe
    monkeypatch.setattr(
        DescriptorSettings,
        "describe",
        lambda self, pipe, z, **k: calls.append(len(z)) or original(self, pipe, z, **k),
    )
    again = L.describe_sources(tiny_pipe, [source], settings, batch_size=2, cache=cache, progress=False)
    assert calls == [] and again.equals(first)  # every chunk read back
    other = L.LevelSetSource("a", source.images, latents + 1.0)  # same name, other latents
    L.describe_sources(tiny_pipe, [other], settings, batch_size=2, cache=cache, progress=False)
    assert calls == [2, 2, 1]
