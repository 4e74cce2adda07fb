"""geomlib.chapters.memorisation: every detector against a direct computation by another route (the
full Jacobian by autograd, the noise from the v-prediction closed form, brute-force distances, the
kernels' own call), the cache's resume, and the benchmark's statistics on planted scores."""

import dataclasses

import numpy as np
import pytest
import torch

from geomlib import describe
from geomlib.chapters import memorisation as M
from geomlib.chapters.memorisation import detectors
from geomlib.core import stats
from geomlib.core.descriptors import local_rank, local_scaling
from geomlib.core.diffusion import predicted_x0
from geomlib.runtime.cache import ResultCache
from geomlib.sd.decoder import DescriptorSettings, latent_decoder
from geomlib.sd.mini.world import World
from geomlib.sd.sampling import generate, initial_latents

PROMPTS = ["a red circle on a blue background", "a green star on a white background named zovu"]
SEEDS = (3, 4)


@pytest.fixture(scope="module")
def sampled(tiny_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("memorisation")
    keys = [(p, s) for p in PROMPTS for s in SEEDS]
    cache = ResultCache(root / "samples", {"model": "tiny", "steps": 3})
    samples = M.generate_samples(tiny_pipe, keys, cache, steps=3, guidance=5.0, batch_size=3, progress=False)
    return samples, cache, root


def test_samples_are_the_samplers_own_from_each_seeds_noise_and_resume(tiny_pipe, sampled, monkeypatch):
    samples, cache, _ = sampled
    assert samples.trajectories.shape[:2] == (4, 4) and samples.images.shape[0] == 4
    noise = initial_latents(tiny_pipe, 1, seed=4)
    assert torch.equal(samples.trajectories[0, 1], noise[0])  # (prompt 0, seed 4)
    out = generate(tiny_pipe, PROMPTS[1:], guidance_scale=5.0, num_inference_steps=3, latents=noise)
    torch.testing.assert_close(samples.trajectories[-1, 3], out.latents[0], rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(detectors, "generate", lambda *a, **k: pytest.fail("cached samples regenerated"))
    again = M.generate_samples(
        tiny_pipe, samples.keys, cache, steps=3, guidance=5.0, batch_size=3, progress=False
    )
    assert torch.equal(again.trajectories, samples.trajectories) and (again.seconds == samples.seconds).all()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_noise_difference_matches_each_prediction_types_closed_form(tiny_pipe, sampled, prediction):
    samples, _, root = sampled
    original = tiny_pipe.scheduler.config.prediction_type
    tiny_pipe.scheduler.register_to_config(prediction_type=prediction)  # the same net, read as eps or v
    try:
        cache = ResultCache(root / "noise", {"n": 2, "prediction": prediction})
        scores = M.noise_difference_scores(tiny_pipe, samples, cache, 2, batch_size=4, progress=False)
    finally:
        tiny_pipe.scheduler.register_to_config(prediction_type=original)
    i = 2  # (prompt 1, seed 3)
    conditional, unconditional = tiny_pipe.encode_prompt([PROMPTS[1]], "cpu", 1, True)
    total = 0.0
    with torch.no_grad():
        for step in range(2):
            x_t, t = samples.trajectories[step][i : i + 1], int(samples.timesteps[step])
            alpha_bar = tiny_pipe.scheduler.alphas_cumprod[t]
            out = [
                tiny_pipe.unet(x_t, t, encoder_hidden_states=e).sample for e in (conditional, unconditional)
            ]
            # eps is the output itself, or sqrt(abar) v + sqrt(1 - abar) x_t
            scale = 1.0 if prediction == "epsilon" else alpha_bar.sqrt()
            total += float((scale * (out[0] - out[1])).norm())
    assert scores["noise_difference"][i] == pytest.approx(total / 2, rel=1e-4)
    assert scores["noise_difference"].shape == (4,) and (scores["seconds"] > 0).all()


def test_posterior_mean_scores_equal_the_full_jacobians_with_a_full_sketch(tiny_pipe, sampled):
    samples, _, root = sampled
    dimension = int(np.prod(samples.trajectories.shape[2:]))
    cache = ResultCache(root / "posterior", {"k": dimension})
    scores = M.posterior_mean_scores(tiny_pipe, samples, cache, 2, dimension, batch_size=2, progress=False)
    i = 1  # (prompt 0, seed 4)
    t = int(samples.timesteps[1])
    alpha_bar = tiny_pipe.scheduler.alphas_cumprod[t]
    conditional, _ = tiny_pipe.encode_prompt([PROMPTS[0]], "cpu", 1, False)

    def posterior_mean(x):  # (4, h, w) -> (4 h w,)
        out = tiny_pipe.unet(x[None], t, encoder_hidden_states=conditional).sample
        return predicted_x0(x[None], out, alpha_bar, tiny_pipe.scheduler.config.prediction_type).flatten()

    jacobian = torch.autograd.functional.jacobian(posterior_mean, samples.trajectories[1][i]).reshape(
        dimension, -1
    )
    sigma = torch.linalg.svdvals(jacobian.double())[None]
    # a sketch with as many orthonormal rows as outputs keeps every singular value
    assert scores["posterior_scaling"][i] == pytest.approx(float(local_scaling(sigma)), rel=1e-3)
    assert scores["posterior_rank"][i] == pytest.approx(float(local_rank(sigma)), rel=1e-3)


def test_decoder_scores_are_the_kernels_at_the_described_steps(tiny_pipe, sampled):
    samples, _, root = sampled
    settings = DescriptorSettings(k=5, n_dirs=2, radius=0.05)
    steps = M.described_steps(3, 2)
    assert steps == [2, 3] and M.described_steps(10, 3) == [3, 7, 10]
    rows = M.decoder_scores(
        tiny_pipe,
        samples,
        ResultCache(root / "decoder", {"k": 5}),
        settings,
        steps,
        batch_size=3,
        progress=False,
    )
    assert rows["local_scaling"].shape == (4, 2)
    direct = describe(
        latent_decoder(tiny_pipe),
        samples.trajectories[3][2:3],
        method="projected",
        k=5,
        seed=0,
        radius=0.05,
        n_dirs=2,
    )
    assert rows["local_scaling"][2, 1] == pytest.approx(float(direct.local_scaling[0]), rel=1e-5)
    assert rows["local_complexity"][2, 1] == float(direct.local_complexity[0])


def test_nearest_training_images_match_brute_force_and_the_training_renders():
    world = World(seed=0, n_memorised=4, image_size=16)
    training = M.world_training_images(world, train_size=30, count=10)
    renders, _ = world.dataset(30, seed=0)
    assert np.array_equal(training.images[4:], renders[:10]) and len(training.images) == 14
    assert training.memorised_index == {text: i for i, text in enumerate(world.memorised_captions)}
    rng = np.random.default_rng(0)
    queries = rng.uniform(0, 1, (5, 16, 16, 3))
    queries[2] = training.images[7] / 255  # a copy
    samples = M.Samples([(str(i), 0) for i in range(5)], torch.zeros(1), torch.zeros(1), queries, np.zeros(5))
    scores = M.nearest_training_scores(samples, training)
    distances = np.sqrt(((queries[:, None] - training.images[None] / 255) ** 2).mean(axis=(2, 3, 4)))
    np.testing.assert_allclose(scores["nearest_distance"], distances.min(axis=1), rtol=1e-5, atol=1e-6)
    assert list(scores["nearest_index"]) == list(distances.argmin(axis=1)) and scores["nearest_index"][2] == 7


def _planted(rng, n=20, seeds=(0, 1)):
    """Per-sample rows of four kinds with one perfect detector (the distance), one reversed (the
    posterior rank: memorised higher though claimed lower) and one noise-only (the noise difference)."""
    kinds = {kind: [f"{kind} {i}" for i in range(n)] for kind in M.KINDS}
    keys = [(p, s) for prompts in kinds.values() for p in prompts for s in seeds]
    memorised = np.array([p.startswith("memorised") for p, _ in keys])
    size = len(keys)
    rows = {
        "decoder": {
            name: rng.normal(size=(size, 3)) for name in ("local_scaling", "local_rank", "local_complexity")
        },
        "noise_difference": {"noise_difference": rng.normal(size=size)},
        "posterior_mean": {
            "posterior_scaling": rng.normal(size=size) - 2 * memorised,
            "posterior_rank": rng.normal(size=size) + 3 * memorised,
        },
        "nearest": {
            "nearest_distance": np.where(memorised, 0.01, 0.5) + 0.001 * rng.uniform(size=size),
            "nearest_index": np.zeros(size, int),
        },
    }
    for family in rows.values():
        family["seconds"] = np.full(size, 0.5)
    return keys, kinds, rows


def test_per_prompt_scores_average_seeds_and_sum_their_seconds():
    keys, kinds, rows = _planted(np.random.default_rng(0), n=3)
    table, trajectories = M.per_prompt_scores(keys, kinds, rows, last_steps=2)
    assert len(table) == 12 and set(table["kind"]) == set(M.KINDS)
    first = [i for i, (p, _) in enumerate(keys) if p == "novel 1"]
    row = table.set_index("prompt").loc["novel 1"]
    assert row["noise_difference"] == pytest.approx(
        rows["noise_difference"]["noise_difference"][first].mean()
    )
    assert row["decoder_local_rank"] == pytest.approx(rows["decoder"]["local_rank"][first, -2:].mean())
    assert row["seconds_decoder"] == pytest.approx(1.0)  # two seeds of 0.5 s
    assert trajectories["novel 1"].shape == (9,)
    with pytest.raises(ValueError, match="without a kind"):
        M.per_prompt_scores(keys + [("stray", 0)], kinds, rows, last_steps=1)


def test_benchmark_finds_the_planted_detectors_and_their_directions():
    keys, kinds, rows = _planted(np.random.default_rng(1))
    table, trajectories = M.per_prompt_scores(keys, kinds, rows, last_steps=1)
    contrasts = ["novel", "named_novel", "changed_attribute"]
    benchmark = M.benchmark_table(table, trajectories, contrasts, n_resamples=300)
    assert len(benchmark) == 3 * len(M.DETECTORS)
    by = benchmark.set_index(["contrast", "detector"])
    distance = by.loc[("novel", "nearest training image (pixels)")]
    assert distance["auc"] == 1.0 and distance["tpr"] == 1.0 and distance["best"]
    assert by.loc[("novel", "posterior-mean Jacobian ψ"), "auc"] > 0.95  # lower, as claimed
    assert by.loc[("novel", "posterior-mean Jacobian ν"), "auc"] < 0.05  # higher: against its claim
    noise = by.loc[("novel", "text-conditional noise (Wen et al.)")]
    assert noise["low"] < 0.5 < noise["high"] and noise["difference_high"] < 0
    assert (benchmark["seconds_per_prompt"] == 1.0).all()
    # the four-way verdicts of the claimed directions
    assert distance["verdict"] == "as claimed"
    assert by.loc[("novel", "posterior-mean Jacobian ν"), "verdict"] == "opposite"
    # pure noise: its interval reaches less than the effect of interest (0.1) above 0.5
    assert (noise["verdict"] == "no effect larger than") == (noise["high"] < 0.6) and noise[
        "detectable"
    ] > 0.1
    assert benchmark.loc[benchmark["direction"] == 0, "verdict"].isna().all()
    lines = M.verdict_lines(benchmark, 20, contrasts, M.KIND_LABELS)
    assert len(lines) == 3 and "best nearest training image" in lines[0]
    view = M.benchmark_view(benchmark, M.KIND_LABELS)
    assert (
        list(view.columns)[:2] == ["memorised vs", "detector"]
        and (view["vs best [95 %]"] == "best").sum() >= 3
        and "no direction claimed" in set(view["claim (AUC > 0.5)"])
    )


def test_nearest_image_shares_count_copies_of_own_and_any_memorised_image():
    kinds = {"memorised": ["m0", "m1"], "novel": ["n0"], "changed_attribute": ["c0", "c1"]}
    keys = [(p, 0) for prompts in kinds.values() for p in prompts]
    nearest = np.array([0, 1, 5, 1, 7])  # m0 -> own, m1 -> own, n0 -> a render, c0 -> m1's, c1 -> a render
    shares = M.nearest_image_shares(keys, kinds, nearest, {"m0": 0, "m1": 1}).set_index("kind")
    assert shares.loc["memorised", "own_image"] == 1.0 and shares.loc["novel", "any_memorised"] == 0.0
    assert shares.loc["changed_attribute", "any_memorised"] == 0.5
    assert shares.loc["changed_attribute", "own_image"] == 0.0  # c0 copies m1, not its own m0
    assert np.isnan(shares.loc["novel", "own_image"])


def test_roc_points_trace_the_auc():
    rng = np.random.default_rng(5)
    positive, negative = rng.normal(1, 1, 25), rng.normal(0, 1, 30)
    fpr, tpr = M.roc_points(positive, negative)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(stats.roc_auc(positive, negative))


def test_budgets_are_consistent_and_refuse_impossible_steps():
    for budget in M.MEMORISATION_BUDGETS.values():
        assert len(M.described_steps(budget.steps, budget.described_steps)) == budget.described_steps
    book = M.MEMORISATION_BUDGETS["book"]
    assert book.n_memorised >= 40 and book.n_novel >= 40 and book.n_seeds >= 2
    with pytest.raises(ValueError, match="jacobian_step"):
        dataclasses.replace(book, jacobian_step=book.steps + 1)
    with pytest.raises(ValueError, match="exceeds described_steps"):
        dataclasses.replace(book, last_steps=book.described_steps + 1)


def test_world_benchmark_prompts_hold_every_kind():
    world = World(seed=0, n_memorised=6)
    kinds = M.benchmark_prompts(world, 6, 8, seed=1)
    assert list(kinds) == list(M.KINDS)
    assert [len(kinds[k]) for k in M.KINDS] == [6, 8, 8, 6]
    assert len({p for prompts in kinds.values() for p in prompts}) == 28  # no prompt of two kinds


def test_detectors_refuse_steps_the_trajectories_do_not_have(tiny_pipe, sampled):
    samples, cache, root = sampled
    with pytest.raises(ValueError, match="steps must lie"):
        M.posterior_mean_scores(tiny_pipe, samples, ResultCache(root / "bad", {}), 4, 2, batch_size=2)
    with pytest.raises(ValueError, match="steps must lie"):
        M.noise_difference_scores(tiny_pipe, samples, ResultCache(root / "bad", {}), 0, batch_size=2)
    with pytest.raises(ValueError, match="distinct"):
        M.generate_samples(tiny_pipe, [("a", 0), ("a", 0)], cache, steps=3, guidance=5.0, batch_size=2)
