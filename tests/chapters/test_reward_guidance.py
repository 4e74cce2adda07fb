"""Reward guidance: level sets, forward noise, shards, training, gradients and guided sampling.

Truth comes from ranks (not quantile code), diffusers' own ``add_noise`` and DDIM step, finite
differences, a hand-written classifier-guided DDIM loop, and rewards whose gradient is known.
"""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from geomlib.chapters import reward_guidance as reward
from geomlib.chapters.reward_guidance import data as rdata
from geomlib.chapters.reward_guidance import model as rmodel
from geomlib.sd import decoder, pipelines, sampling
from geomlib.sd.decoder import DescriptorSettings
from geomlib.sd.mini.world import World


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small models are up to 100x slower with two threads' spin-waits on
    a busy 2-core CPU (measured), and no faster on an idle one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pipe():
    """The tiny random SD-architecture pipeline (DDIM, 16x16 images, 4x8x8 latents)."""
    return pipelines.tiny_random_pipeline()


@pytest.fixture(scope="module")
def net():
    """A small random reward model in float64 (for finite differences)."""
    return reward.RewardNet(reward.RewardNetConfig(width=8, depth=2, time_dim=16), seed=0).double().eval()


@pytest.fixture(scope="module")
def net32(net):
    """The same reward model in float32, as a sampler uses it."""
    return copy.deepcopy(net).float()


# ----------------------------------------------------------------------------------- level sets


@pytest.mark.parametrize("n_bins, count", [(5, 100), (10, 1000)])
def test_bin_labels_are_rank_groups(n_bins, count):
    """Equally populated level sets: with distinct values, the label is ``rank * n_bins // count``."""
    psi = np.random.default_rng(0).normal(size=count) * 7 + 3
    ranks = np.argsort(np.argsort(psi))
    labels = reward.bin_labels(psi, reward.bin_edges(psi, n_bins))
    np.testing.assert_array_equal(labels, ranks * n_bins // count)


def test_bin_labels_of_new_values_use_the_training_edges():
    """A value equal to an edge goes to the upper level set; values outside the range to the ends."""
    edges = reward.bin_edges(np.arange(10.0), 2)  # median 4.5
    np.testing.assert_array_equal(reward.bin_labels([-100, 4.4999, 4.5, 100], edges), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        reward.bin_edges(np.arange(3.0), 5)


def test_forward_noise_matches_diffusers():
    """x_t of every item equals DDPMScheduler.add_noise with SD's betas."""
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    clean = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    steps, noise = reward.item_noise(range(6), clean.shape[1:], 1000, seed=3)
    expected = scheduler.add_noise(clean, noise, steps)
    actual = reward.add_forward_noise(clean, steps, noise, scheduler.alphas_cumprod)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    again = reward.item_noise([4, 5], clean.shape[1:], 1000, seed=3)  # item i does not depend on the batch
    torch.testing.assert_close(again[1], noise[4:])


# ----------------------------------------------------------------------------------- the shards


def _data_equal(a, b):
    for name in ("clean", "psi", "noisy", "timesteps"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.ids == b.ids


def test_interrupted_preparation_resumes_to_the_same_data(pipe, tmp_path, monkeypatch):
    source = reward.WorldImages(World(seed=0, image_size=16, n_memorised=0), seed=1)
    psi = DescriptorSettings(k=4)
    full = reward.prepare_reward_data(pipe, source, tmp_path / "a", 6, psi=psi, shard_size=2, progress=False)
    assert len(full) == 6 and full.psi.dtype == torch.float64

    calls = {"n": 0}
    real_psi = rdata.decoder_psi

    def killed_on_second_shard(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_psi(*args, **kwargs)

    monkeypatch.setattr(rdata, "decoder_psi", killed_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        reward.prepare_reward_data(pipe, source, tmp_path / "b", 6, psi=psi, shard_size=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "shard-00000.pt"]
    resumed_calls = []
    monkeypatch.setattr(rdata, "decoder_psi", lambda *a, **k: resumed_calls.append(1) or real_psi(*a, **k))
    resumed = reward.prepare_reward_data(
        pipe, source, tmp_path / "b", 6, psi=psi, shard_size=2, progress=False
    )
    _data_equal(resumed, full)
    assert len(resumed_calls) == 2  # shards 1 and 2; the finished shard 0 was not recomputed
    monkeypatch.setattr(rdata, "decoder_psi", real_psi)

    other_shards = reward.prepare_reward_data(
        pipe, source, tmp_path / "c", 6, psi=psi, shard_size=4, progress=False
    )
    _data_equal(other_shards, full)  # items do not depend on the shard size
    with pytest.raises(ValueError, match="other settings"):
        reward.prepare_reward_data(pipe, source, tmp_path / "b", 6, psi=DescriptorSettings(k=5), shard_size=2)
    labels = reward.bin_labels(full.psi.numpy(), reward.bin_edges(full.psi.numpy(), 3))
    assert np.bincount(labels).tolist() == [2, 2, 2]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["psi"]["k"] == 4


def test_data_psi_is_the_decoder_psi_at_the_clean_latent(pipe, tmp_path):
    """ψ labels the clean latent; the noisy latent is x_t of that clean latent."""
    source = reward.WorldImages(World(seed=0, image_size=16, n_memorised=0), seed=2)
    psi = DescriptorSettings(k=4)
    data = reward.prepare_reward_data(pipe, source, tmp_path, 3, psi=psi, shard_size=3, progress=False)
    images, _ = source(0, 3)
    clean = decoder.encode_images(pipe, images, batch_size=1).float()  # one image per call, as the data
    torch.testing.assert_close(data.clean, clean)
    torch.testing.assert_close(data.psi, reward.decoder_psi(pipe, clean, psi))
    steps, noise = reward.item_noise(range(3), clean.shape[1:], 1000, seed=0)
    torch.testing.assert_close(
        data.noisy, reward.add_forward_noise(clean, steps, noise, pipe.scheduler.alphas_cumprod)
    )


# ------------------------------------------------------------------------------ training


def _synthetic_data(n, seed):
    """Clean latents whose ψ is their mean: a level set the net can read from x_t at low noise."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, 4, 4, 4, generator=generator) + torch.randn(n, 1, 1, 1, generator=generator)
    steps, noise = reward.item_noise(range(seed * n, seed * n + n), clean.shape[1:], 1000, seed)
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    noisy = reward.add_forward_noise(clean, steps, noise, alphas)
    return reward.RewardData(
        clean, clean.mean((1, 2, 3)).double(), noisy, steps, [str(i) for i in range(n)]
    ), alphas


def test_training_learns_and_resumes_exactly(tmp_path, monkeypatch):
    train, alphas = _synthetic_data(512, 0)
    val, _ = _synthetic_data(256, 1)
    net_config = reward.RewardNetConfig(width=8, depth=2, time_dim=16)
    config = reward.RewardTrainConfig(steps=160, batch_size=64, lr=3e-3, eval_every=80, checkpoint_every=80)
    kwargs = dict(net_config=net_config, config=config, progress=False)
    full = reward.train_reward_model(train, val, alphas, checkpoint=tmp_path / "a.pt", **kwargs)
    assert full.val_accuracy > 0.4  # chance is 0.2; high-noise items are unpredictable
    low_noise = val.timesteps < 300
    labels = torch.from_numpy(reward.bin_labels(val.psi.numpy(), full.net.bin_edges.numpy()))
    accuracy = rmodel.evaluate_reward(
        full.net, val.noisy[low_noise], val.timesteps[low_noise], labels[low_noise]
    )[1]
    assert accuracy > 0.6

    real_batch = rmodel._training_batch

    def killed_at_step_130(data, labels, alphas, config, step):
        if step == 130:
            raise KeyboardInterrupt
        return real_batch(data, labels, alphas, config, step)

    monkeypatch.setattr(rmodel, "_training_batch", killed_at_step_130)
    with pytest.raises(KeyboardInterrupt):
        reward.train_reward_model(train, val, alphas, checkpoint=tmp_path / "b.pt", **kwargs)
    monkeypatch.setattr(rmodel, "_training_batch", real_batch)
    resumed = reward.train_reward_model(train, val, alphas, checkpoint=tmp_path / "b.pt", **kwargs)
    for name, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], value, rtol=0, atol=0)
    loaded = reward.load_reward_model(tmp_path / "b.pt")
    torch.testing.assert_close(loaded.net.bin_edges, torch.from_numpy(reward.bin_edges(train.psi.numpy())))


# --------------------------------------------------------------------------- gradient and guidance


@pytest.mark.parametrize(
    "objective, raise_psi", [("expected_bin", True), ("log_prob", True), ("log_prob", False)]
)
def test_reward_gradient_matches_finite_differences(net, objective, raise_psi):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 8, 8, generator=generator, dtype=torch.float64)
    gradient = reward.reward_gradient(net, x, 400, objective, raise_psi)
    assert gradient.shape == x.shape and gradient.abs().max() > 0
    step = 1e-5
    for _ in range(3):
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            plus = reward.reward_objective(net(x + step * direction, 400), objective, raise_psi)
            minus = reward.reward_objective(net(x - step * direction, 400), objective, raise_psi)
        finite = (plus - minus) / (2 * step)
        torch.testing.assert_close((gradient * direction).sum((1, 2, 3)), finite, rtol=1e-6, atol=1e-8)


def _prompts():
    return [
        "a large red circle in the center on a blue background",
        "a small green star on a white background",
    ]


def test_rho_zero_is_exactly_the_unguided_sampler(pipe, net32):
    unguided = sampling.generate(pipe, _prompts(), seed=5, guidance_scale=7.5, num_inference_steps=3)
    guided = reward.guided_generate(pipe, net32, _prompts(), 0.0, seed=5, num_inference_steps=3)
    assert torch.equal(guided.latents, unguided.latents)
    np.testing.assert_array_equal(guided.images, unguided.images)


class _LinearReward(torch.nn.Module):
    """ "Logits" ``(B, 1) = <a, x>``: with the identity objective, R is linear and ∇R = a."""

    def __init__(self, direction):
        super().__init__()
        self.direction = torch.nn.Parameter(direction, requires_grad=False)

    def forward(self, x, t):
        return (x.flatten(1) * self.direction.flatten()).sum(1, keepdim=True)


def test_linear_reward_moves_the_final_latent_along_its_gradient(pipe):
    direction = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(4))
    direction /= direction.norm()
    linear = _LinearReward(direction)
    kwargs = dict(seed=1, num_inference_steps=1, objective=lambda logits: logits[:, 0])
    base = reward.guided_generate(pipe, linear, _prompts(), 0.0, **kwargs).latents
    t = int(pipe.scheduler.timesteps[0])
    for rho in (2.0, -2.0):
        moved = reward.guided_generate(pipe, linear, _prompts(), rho, **kwargs).latents
        expected = (
            rho * reward.guidance_coefficient(pipe.scheduler, t) * direction
        )  # one step: exactly ρ c_t a
        torch.testing.assert_close(moved - base, expected.expand_as(base), rtol=1e-4, atol=1e-5)
    kwargs["num_inference_steps"] = 4
    base = reward.guided_generate(pipe, linear, _prompts(), 0.0, **kwargs).latents
    for rho in (1.0, -1.0):
        moved = reward.guided_generate(pipe, linear, _prompts(), rho, **kwargs).latents
        assert (np.sign(rho) * ((moved - base).flatten(1) @ direction.flatten()) > 0).all()


def test_callback_guidance_equals_classifier_guided_ddim_loop(pipe, net32):
    """The callback's shift equals replacing ε by ε - ρ sqrt(1 - ᾱ_t) ∇R in a hand-written DDIM loop."""
    prompts, rho, scale, steps = _prompts(), 3.0, 7.5, 4
    noise = sampling.initial_latents(pipe, 2, seed=3)
    guided = reward.guided_generate(
        pipe, net32, prompts, rho, latents=noise, guidance_scale=scale, num_inference_steps=steps
    )
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(prompts, "cpu", 1, True)
        embeddings = torch.cat([negative, positive])
    x = noise.clone()
    for t in scheduler.timesteps:
        with torch.no_grad():
            uncond, cond = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=embeddings).sample.chunk(2)
        epsilon = uncond + scale * (cond - uncond)
        probe = x.clone().requires_grad_(True)
        objective = reward.reward_objective(net32(probe, int(t)))
        (gradient,) = torch.autograd.grad(objective.sum(), probe)
        epsilon = epsilon - rho * (1 - scheduler.alphas_cumprod[t]).sqrt() * gradient
        with torch.no_grad():
            x = scheduler.step(epsilon, t, x).prev_sample
    assert (
        guided.latents - sampling.generate(pipe, prompts, latents=noise, num_inference_steps=steps).latents
    ).abs().max() > 1e-3
    torch.testing.assert_close(guided.latents, x, rtol=1e-4, atol=1e-5)


def test_guidance_on_a_zero_snr_v_prediction_schedule_equals_a_hand_written_ddim_loop(pipe, net32):
    """The mini model's schedule (v-prediction, ᾱ_T = 0, trailing spacing): the callback's result
    equals a DDIM loop written here from the formulas (guidance rescaled as in Lin et al. 2024 eqs.
    15-16, v -> ε and x̂0, ε̃ = ε - ρ sqrt(1 - ᾱ_t) ∇R, x̂0 re-implied by ε̃), with the first,
    pure-noise step unguided."""
    from geomlib.sd.mini.build import scheduler as mini_scheduler

    prompts, rho, scale, steps = _prompts(), 3.0, 7.5, 4
    phi = sampling.ZERO_SNR_GUIDANCE_RESCALE  # the default on this schedule
    original = pipe.scheduler
    pipe.scheduler = mini_scheduler(zero_terminal_snr=True)
    try:
        noise = sampling.initial_latents(pipe, 2, seed=3)
        guided = reward.guided_generate(
            pipe, net32, prompts, rho, latents=noise, guidance_scale=scale, num_inference_steps=steps
        )
        schedule = pipe.scheduler
        schedule.set_timesteps(steps)
        alphas = schedule.alphas_cumprod.double()
        assert int(schedule.timesteps[0]) == 999 and alphas[999] == 0
        with torch.no_grad():
            positive, negative = pipe.encode_prompt(prompts, "cpu", 1, True)
            embeddings = torch.cat([negative, positive])
            x = noise.double()
            for t in schedule.timesteps.tolist():
                both = pipe.unet(torch.cat([x, x]).float(), t, encoder_hidden_states=embeddings).sample
                v_u, v_c = both.chunk(2)
                v = (v_u + scale * (v_c - v_u)).double()
                matched = (
                    v * v_c.double().std(dim=(1, 2, 3), keepdim=True) / v.std(dim=(1, 2, 3), keepdim=True)
                )
                v = phi * matched + (1 - phi) * v
                a, previous = alphas[t], t - 1000 // steps
                a_prev = alphas[previous] if previous >= 0 else alphas[0]
                epsilon, x0 = a.sqrt() * v + (1 - a).sqrt() * x, a.sqrt() * x - (1 - a).sqrt() * v
                if a > 0:
                    with torch.enable_grad():
                        probe = x.float().requires_grad_(True)
                        objective = reward.reward_objective(net32(probe, t)).sum()
                        (gradient,) = torch.autograd.grad(objective, probe)
                    epsilon = epsilon - rho * (1 - a).sqrt() * gradient.double()
                    x0 = (x - (1 - a).sqrt() * epsilon) / a.sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * epsilon
        unguided = sampling.generate(pipe, prompts, latents=noise, num_inference_steps=steps).latents
    finally:
        pipe.scheduler = original
    assert (guided.latents - unguided).abs().max() > 1e-3
    torch.testing.assert_close(guided.latents.double(), x, rtol=1e-4, atol=1e-4)


def test_guidance_refuses_other_schedulers(pipe, net32):
    from diffusers import PNDMScheduler

    original = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(original.config)
    try:
        with pytest.raises(ValueError, match="DDIM"):
            reward.guided_generate(pipe, net32, _prompts(), 1.0, num_inference_steps=2)
    finally:
        pipe.scheduler = original


# ------------------------------------------------------------------------------ measurements


def test_image_statistics_closed_forms():
    grey = np.full((1, 8, 8, 3), 0.5)
    red = np.zeros((1, 8, 8, 3))
    red[..., 0] = 1.0
    halves = np.zeros((1, 8, 8, 3))
    halves[:, :, 4:] = 1.0  # black | white: luminance std 0.5
    stats = reward.image_statistics(np.concatenate([grey, red, halves]))
    np.testing.assert_allclose(stats["contrast"], [0, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(stats["colourfulness"], [0, 0.3 * np.hypot(255, 127.5), 0], atol=1e-9)
    assert stats["sharpness"][0] == 0 and stats["sharpness"][2] > 0
    blurred = halves.copy()
    blurred[:, :, 3:5] = 0.5
    assert reward.image_statistics(blurred)["sharpness"][0] < stats["sharpness"][2]


def test_prompts():
    sd = reward.guidance_prompts("CompVis/stable-diffusion-v1-4", 27)
    assert (
        sd[0] == "a dog in the jungle" and sd[24] == "a cube shaped dog" and sd[25] == "a cat in the jungle"
    )
    mini = reward.guidance_prompts("data/mini-sd", 4, seed=0, world=World(seed=0, n_memorised=0))
    assert len(set(mini)) == 4 and all(p.startswith("a ") and p.endswith("background") for p in mini)


def test_folder_images_with_describe_cli_give_the_decoder_psi(pipe, tmp_path):
    """The ``paper`` path (a folder of images, ψ by ``python -m geomlib describe``) gives the same
    data as encoding the files and computing ψ here."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    for index, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"img{index}.png")
    psi = DescriptorSettings(k=4)
    lookup = reward.psi_from_describe_cli("tiny-random", folder, tmp_path / "d.parquet", psi, size=(16, 16))
    source = reward.FolderImages(folder, (16, 16))
    data = reward.prepare_reward_data(
        pipe, source, tmp_path / "data", 3, psi=psi, shard_size=2, psi_lookup=lookup, progress=False
    )
    assert data.ids == ["img0.png", "img1.png", "img2.png"]
    pixels_tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    clean = decoder.encode_images(
        pipe, pixels_tensor, batch_size=1
    ).float()  # one image per call, as the data
    torch.testing.assert_close(data.clean, clean)
    torch.testing.assert_close(data.psi, reward.decoder_psi(pipe, clean, psi), rtol=1e-4, atol=1e-4)


def test_compare_by_bin_pairs_samples_by_seed():
    """Δψ per level set is the mean of paired differences; Vendi changes per feature set."""
    psi = np.arange(6.0)
    features = {"one": np.eye(6), "two": np.ones((6, 2))}
    stats = {name: np.zeros(6) for name in reward.STATISTICS}
    base = reward.SampleSet(psi, np.zeros((6, 4, 4, 3)), features, stats, 0.0)
    moved = reward.SampleSet(psi + [1, 3, 0, 0, -2, -2], np.zeros((6, 4, 4, 3)), features, stats, 2.0)
    table = reward.compare_by_bin(base, [moved], np.array([0, 0, 1, 1, 2, 2])).set_index("bin")
    np.testing.assert_allclose(table.loc[[0, 1, 2], "dpsi"], [2, 0, -2])
    assert table.loc["all", "dpsi"] == pytest.approx(0.0) and table.loc["all", "n"] == 6
    assert table.loc[0, "vendi_one_baseline"] == pytest.approx(2.0) and table.loc[0, "dvendi_two"] == 0
    claims = reward.claim_table(table.reset_index(), smallest_effect=0.5).set_index("bin")
    verdicts = claims["moves as claimed"]
    assert verdicts[0] == "undecided at this sample size"  # +2 from two samples: [-10.7, +14.7]
    assert verdicts[1] == "no effect larger than" and verdicts[2] == "opposite"  # zero-width intervals
    assert claims.loc[0, "detectable"] > 10 and claims.loc[1, "detectable"] == 0
