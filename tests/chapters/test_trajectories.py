"""geomlib.chapters.trajectories: prompts, the statistics against brute force and closed forms, and the
cached per-step descriptors against a direct call of the kernels at generate()'s latents."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from geomlib import describe
from geomlib.chapters import trajectories as T
from geomlib.chapters.trajectories import store as trajectory_store
from geomlib.core import stats
from geomlib.sd import decoder
from geomlib.sd.decoder import DescriptorSettings, latent_decoder
from geomlib.sd.images import read_prompts
from geomlib.sd.mini.world import World, caption
from geomlib.sd.sampling import generate, initial_latents


def test_read_prompts_from_each_format(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.json").write_text(json.dumps([{"caption": "a cat"}, {"prompt": "a dog"}]))
    pd.DataFrame({"id": [1, 2], "Caption": ["a cat", "a dog"]}).to_csv(tmp_path / "p.csv", index=False)
    for name in ("p.txt", "p.json", "p.csv"):
        assert read_prompts(tmp_path / name) == ["a cat", "a dog"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_mini_prompt_sets_are_memorised_and_novel_captions():
    world = World(seed=0, n_memorised=6)
    sets = T.mini_prompt_sets(world, 4, 5, seed=1)
    assert len(set(sets.memorised)) == 4 and set(sets.memorised) <= set(world.memorised_captions)
    novel = {caption(a) for a in world.novel_attributes}
    training = {caption(a) for a in world.training_attributes}
    assert len(set(sets.normal)) == 5 and set(sets.normal) <= novel and not set(sets.normal) & training
    assert T.mini_prompt_sets(world, 4, 5, seed=1) == sets
    assert sorted(T.mini_prompt_sets(world, 9, 1).memorised) == sorted(world.memorised_captions)


def test_roc_auc_equals_pairwise_counting():
    rng = np.random.default_rng(0)
    positive, negative = rng.integers(0, 5, 9).astype(float), rng.integers(0, 5, 7).astype(float)  # many ties
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(positive, negative)]
    assert stats.roc_auc(positive, negative) == pytest.approx(np.mean(pairs))
    assert stats.roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0 and stats.roc_auc([1.0], [2.0]) == 0.0


def _planted_table(scores: dict[tuple[str, float], np.ndarray], seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for (prompt, scale), curve in scores.items():
        for seed, step in itertools.product(seeds, range(1, len(curve) + 1)):
            value = curve[step - 1] + 0.01 * seed
            rows.append(
                {
                    "prompt": prompt,
                    "seed": seed,
                    "guidance_scale": scale,
                    "step": step,
                    "local_scaling": value,
                }
            )
    return pd.DataFrame(rows)


def test_separation_finds_a_planted_late_gap():
    flat = np.zeros(6)
    late = np.array([0, 0, 0, 0, 2.0, 3.0])
    scores = {(f"m{i}", 7.5): late + 0.1 * i for i in range(4)} | {
        (f"n{i}", 7.5): flat + 0.1 * i for i in range(4)
    }
    result = T.separation(_planted_table(scores), [f"m{i}" for i in range(4)], last_steps=2)
    assert result["auc_last_steps"] == 1.0
    assert result["auc_per_step"][0] == pytest.approx(0.5)  # identical early steps: chance
    assert result["auc_trajectory"] == pytest.approx(1.0)
    reversed_result = T.separation(_planted_table(scores), [f"n{i}" for i in range(4)], last_steps=2)
    assert reversed_result["auc_last_steps"] == 0.0


def test_guidance_trend_detects_a_planted_decrease_and_not_an_increase():
    scales = (1.0, 3.0, 5.0, 7.5)
    falling = {(f"p{i}", s): np.full(3, 10.0 * i - s) for i in range(4) for s in scales}
    trend = T.guidance_trend(_planted_table(falling), last_steps=2)
    assert trend["page_decreasing_p"] < 0.01 and trend["spearman"] < 0
    assert trend["change_low_to_high"]["change"] == pytest.approx(-6.5)
    assert list(trend["per_scale"]["guidance_scale"]) == list(scales)
    rising = {(f"p{i}", s): np.full(3, 10.0 * i + s) for i in range(4) for s in scales}
    assert T.guidance_trend(_planted_table(rising), last_steps=2)["page_decreasing_p"] > 0.5
    assert trend["claim"] is None  # no claim asked
    claimed = T.guidance_trend(_planted_table(falling), last_steps=2, claimed_sign=-1)
    assert claimed["claim"].verdict == "as claimed"  # every block falls by 6.5
    against = T.guidance_trend(_planted_table(rising), last_steps=2, claimed_sign=-1, smallest_effect=1.0)
    assert against["claim"].verdict == "opposite" and against["claim"].n == against["n_blocks"]


def test_mean_curves_give_the_t_interval():
    table = pd.DataFrame({"group": "a", "step": 1, "local_scaling": [1.0, 2, 3, 4, 5]})
    row = T.mean_curves(table, "group", ["local_scaling"]).iloc[0]
    half = 2.776445 * np.sqrt(2.5) / np.sqrt(5)
    assert (row["mean"], row["low"], row["high"], row["n"]) == pytest.approx(
        (3, 3 - half, 3 + half, 5), rel=1e-5
    )


def test_step_descriptors_match_the_kernels_share_noise_and_resume(tiny_pipe, tmp_path, monkeypatch):
    settings = DescriptorSettings(k=5, n_dirs=2, radius=0.05)
    store = T.TrajectoryStore(tmp_path, "tiny", steps=2, settings=settings)
    prompts = ["a red circle on a blue background", "a green star on a white background"]
    table = T.trajectory_descriptors(tiny_pipe, store, prompts, [4], [1.0, 3.0], progress=False)
    assert len(table) == 2 * 2 * 2 and sorted(set(table["step"])) == [1, 2]

    noise = initial_latents(tiny_pipe, 1, seed=4)
    starts = [store.trajectory(p, 4, s)["latents"][0] for p in prompts for s in (1.0, 3.0)]
    assert all(torch.equal(start, noise[0]) for start in starts)  # same seed, same noise everywhere

    cached = store.trajectory(prompts[0], 4, 3.0)["latents"]
    out = generate(tiny_pipe, prompts[:1], guidance_scale=3.0, num_inference_steps=2, latents=noise)
    torch.testing.assert_close(out.latents, cached[-1:])  # the sampler's own result
    # the table's last step is the kernels' value at the cached latent: one latent per call in both
    direct = describe(
        latent_decoder(tiny_pipe), cached[-1:], method="projected", k=5, seed=0, radius=0.05, n_dirs=2
    )
    last = table[(table["prompt"] == prompts[0]) & (table["guidance_scale"] == 3.0) & (table["step"] == 2)]
    assert last["local_scaling"].item() == pytest.approx(direct.local_scaling.item(), rel=1e-6)
    assert last["local_complexity"].item() == direct.local_complexity.item()

    key = (prompts[1], 4, 1.0)
    records = store.step_records(*key)
    del records["1"]  # an interrupted run: step 1 of one trajectory is missing
    store.descriptors.save(key, records)
    described = []
    original = decoder.decoder_descriptors
    monkeypatch.setattr(
        decoder,
        "decoder_descriptors",
        lambda pipe, z, **k: described.append(len(z)) or original(pipe, z, **k),
    )
    monkeypatch.setattr(
        trajectory_store,
        "generate",
        lambda *a, **k: pytest.fail("cached trajectories must not be regenerated"),
    )
    again = T.trajectory_descriptors(tiny_pipe, store, prompts, [4], [1.0, 3.0], progress=False)
    assert described == [1]
    pd.testing.assert_frame_equal(again, table, rtol=1e-6)
    other_k = T.TrajectoryStore(
        tmp_path, "tiny", steps=2, settings=DescriptorSettings(k=3, n_dirs=2, radius=0.05)
    )
    assert other_k.trajectory(*key) is not None and other_k.step_records(*key) == {}


def test_chosen_steps_are_the_only_ones_described_and_equal_the_full_run(tiny_pipe, tmp_path):
    settings = DescriptorSettings(k=4, n_dirs=2, radius=0.05)
    prompts = ["a red circle on a blue background"]
    last = T.trajectory_descriptors(
        tiny_pipe, T.TrajectoryStore(tmp_path / "last", "tiny", steps=3, settings=settings),
        prompts, [1], [1.0, 2.0], steps=[3], progress=False,
    )  # fmt: skip
    assert sorted(set(last["step"])) == [3] and len(last) == 2
    full = T.trajectory_descriptors(
        tiny_pipe, T.TrajectoryStore(tmp_path / "full", "tiny", steps=3, settings=settings),
        prompts, [1], [1.0, 2.0], progress=False,
    )  # fmt: skip
    same = full[full["step"] == 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(last.reset_index(drop=True), same, rtol=1e-5)
    with pytest.raises(ValueError, match="steps must lie"):
        T.trajectory_descriptors(
            tiny_pipe, T.TrajectoryStore(tmp_path / "bad", "tiny", steps=3, settings=settings),
            prompts, [1], [1.0], steps=[4], progress=False,
        )  # fmt: skip


def test_file_prompt_sets_draw_unique_prompts_from_each_file(tmp_path):
    (tmp_path / "m.txt").write_text("\n".join(["mona lisa", "starry night", "mona lisa", "the scream"]))
    (tmp_path / "n.txt").write_text("\n".join(f"caption {i}" for i in range(10)))
    sets = T.file_prompt_sets(tmp_path / "m.txt", tmp_path / "n.txt", 5, 4, seed=2)
    assert sorted(sets.memorised) == ["mona lisa", "starry night", "the scream"]  # 3 unique < 5 asked
    assert len(set(sets.normal)) == 4 and all(p.startswith("caption ") for p in sets.normal)
    frame = pd.DataFrame({"prompt": ["mona lisa", sets.normal[0], "other"]})
    assert list(T.label_prompts(frame, sets)["kind"].fillna("-")) == ["memorised", "normal", "-"]
