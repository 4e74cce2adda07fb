"""geomlib.latent on a tiny SD-architecture pipeline with random weights, built here, saved with
``save_pretrained`` and loaded back through ``load_pipeline`` (the hub's code path).

Truth: diffusers' own ``vae.decode`` and pipeline output, DDIM's update formula, finite
differences of the decoder in float64, and plain geometry for the latent planes.
"""

import time

import numpy as np
import pytest
import torch
from matplotlib.path import Path as PolygonPath

import geomlib
from geomlib import latent
from geomlib.mini.build import build_pipeline, scheduler
from geomlib.mini.world import World

PROMPTS = [
    "a red circle on a blue background",
    "a large green star on the left on a white background",
    "a cat",
]


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """(folder, pipeline as built): scaling_factor 0.5 so that forgetting it shows."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    built = build_pipeline(World(seed=0, n_memorised=4).vocabulary, "tiny", seed=3)
    built.vae.register_to_config(scaling_factor=0.5)
    built.save_pretrained(folder)
    return folder, built


@pytest.fixture(scope="module")
def pipe(saved_pipeline):
    return latent.load_pipeline(saved_pipeline[0], device="cpu")


def test_load_pipeline_round_trips_the_weights(saved_pipeline, pipe):
    _, built = saved_pipeline
    for name in ("vae", "unet", "text_encoder"):
        expected, loaded = getattr(built, name).state_dict(), getattr(pipe, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[key], loaded[key]) for key in expected), name
    assert pipe.vae.config.scaling_factor == 0.5
    assert pipe.tokenizer("a red circle").input_ids == built.tokenizer("a red circle").input_ids


def test_missing_local_directory_fails_at_once_with_a_clear_message(tmp_path):
    with pytest.raises(latent.WeightsNotFoundError, match="no such local directory"):
        latent.load_pipeline(tmp_path / "nowhere")
    with pytest.raises(latent.WeightsNotFoundError, match="model_index.json"):
        latent.load_pipeline(tmp_path)  # exists, but is no pipeline


@pytest.mark.parametrize("offline", [True, False])
def test_missing_hub_weights_fail_fast_and_say_what_to_download(monkeypatch, tmp_path, offline):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
        monkeypatch.setattr(latent, "_offline", lambda: False)
    started = time.monotonic()
    with pytest.raises(latent.WeightsNotFoundError) as error:
        latent.load_pipeline(latent.SD14)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert f"hf download {latent.SD14}" in message and "data/mini-sd" in message


def test_decoder_function_matches_vae_decode_with_the_scaling_factor(pipe):
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    decoder = latent.latent_decoder(pipe)
    with torch.no_grad():
        expected = pipe.vae.decode(z / 0.5).sample
        got = decoder(z)
    assert got.shape == (3, 3, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # memory layouts differ: not bitwise


def test_generate_reproduces_the_pipeline_and_is_deterministic(pipe):
    first = latent.generate(pipe, PROMPTS, seed=5, guidance_scale=3.0, num_inference_steps=4)
    second = latent.generate(pipe, PROMPTS, seed=5, guidance_scale=3.0, num_inference_steps=4)
    other = latent.generate(pipe, PROMPTS[:1], seed=6, guidance_scale=3.0, num_inference_steps=4)
    assert first.images.shape == (3, 16, 16, 3) and first.latents.shape == (3, 4, 8, 8)
    assert first.trajectory.shape == (5, 3, 4, 8, 8) and first.predicted_x0.shape == (4, 3, 4, 8, 8)
    np.testing.assert_array_equal(first.images, second.images)
    assert not torch.allclose(first.latents[:1], other.latents)
    # diffusers' own pipeline from the same noise gives the same image
    noise = latent.initial_latents(pipe, 3, seed=5)
    reference = pipe(
        PROMPTS, latents=noise, guidance_scale=3.0, num_inference_steps=4, output_type="np"
    ).images
    np.testing.assert_allclose(first.images, reference, atol=1e-5)
    # sample i depends on seed + i only, not on the batch it is in
    alone = latent.generate(pipe, PROMPTS[1:2], seed=6, guidance_scale=3.0, num_inference_steps=4)
    torch.testing.assert_close(alone.trajectory[0, 0], first.trajectory[0, 1])


def test_guidance_rescale_defaults_to_lin_et_al_on_zero_snr_schedules_only(pipe):
    """SD's schedule: plain guidance (rescale 0); a zero-terminal-SNR schedule: rescale 0.7, the
    same sample as asking for it, and not the plain-guidance one. Out-of-range values are refused."""
    kwargs = dict(seed=2, guidance_scale=7.5, num_inference_steps=3)
    plain = latent.generate(pipe, PROMPTS[:2], guidance_rescale=0.0, **kwargs)
    assert latent.default_guidance_rescale(pipe) == 0.0
    torch.testing.assert_close(latent.generate(pipe, PROMPTS[:2], **kwargs).latents, plain.latents)
    original = pipe.scheduler
    pipe.scheduler = scheduler(zero_terminal_snr=True)
    try:
        assert latent.default_guidance_rescale(pipe) == 0.7
        default = latent.generate(pipe, PROMPTS[:2], **kwargs)
        asked = latent.generate(pipe, PROMPTS[:2], guidance_rescale=0.7, **kwargs)
        unrescaled = latent.generate(pipe, PROMPTS[:2], guidance_rescale=0.0, **kwargs)
        with pytest.raises(ValueError, match="guidance_rescale"):
            latent.generate(pipe, PROMPTS[:2], guidance_rescale=1.5, **kwargs)
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(default.latents, asked.latents)
    assert (default.latents - unrescaled.latents).abs().max() > 1e-4


@pytest.mark.parametrize("zero_terminal_snr", [False, True], ids=["sd-epsilon", "zero-snr-v"])
def test_trajectory_follows_the_ddim_update(pipe, zero_terminal_snr):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with eps implied by x_t and x0 (DDIM, eta = 0),
    for SD's schedule (epsilon) and the mini model's (zero terminal SNR, v prediction)."""
    original = pipe.scheduler
    pipe.scheduler = scheduler(zero_terminal_snr)
    try:
        out = latent.generate(pipe, PROMPTS[:2], seed=0, guidance_scale=2.0, num_inference_steps=5)
        alphas = pipe.scheduler.alphas_cumprod.double()
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(out.trajectory[-1], out.latents)
    steps = out.timesteps.tolist()
    assert steps[0] == (999 if zero_terminal_snr else 801)
    for i, t in enumerate(steps):
        x_t, x0 = out.trajectory[i].double(), out.predicted_x0[i].double()
        a_t = alphas[t]
        a_prev = alphas[steps[i + 1]] if i + 1 < len(steps) else alphas[0]  # set_alpha_to_one=False
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        torch.testing.assert_close(out.trajectory[i + 1].double(), expected, rtol=1e-4, atol=1e-4)


def test_plane_contains_the_anchors_and_its_hull_is_their_triangle():
    anchors = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    plane = latent.latent_plane(anchors, resolution=25, padding=0.3)
    torch.testing.assert_close(plane.to_latent(plane.anchor_coords), anchors, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plane.basis @ plane.basis.T, torch.eye(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plane.to_latent(torch.zeros(1, 2))[0], anchors.mean(0))
    assert plane.grid_latents().shape == (625, 4, 8, 8)
    umin, umax, vmin, vmax = plane.extent
    assert (plane.anchor_coords[:, 0] > umin).all() and (plane.anchor_coords[:, 0] < umax).all()
    assert (plane.anchor_coords[:, 1] > vmin).all() and (plane.anchor_coords[:, 1] < vmax).all()
    triangle = PolygonPath(plane.anchor_coords.numpy())
    expected = triangle.contains_points(plane.grid_coords().reshape(-1, 2).numpy()).reshape(25, 25)
    inside = plane.inside_hull().numpy()
    assert 0 < inside.sum() < inside.size
    assert (inside == expected).mean() > 0.98  # points exactly on an edge may differ


def test_plane_rejects_collinear_anchors():
    a = torch.randn(4, 8, 8)
    with pytest.raises(ValueError, match="collinear"):
        latent.latent_plane(torch.stack([a, 2 * a, 3 * a]))
    with pytest.raises(ValueError, match="shape"):
        latent.latent_plane(torch.randn(2, 4, 8, 8))


def test_decoder_spectrum_matches_finite_differences(pipe):
    """Exact and projected spectra against a central-difference Jacobian in float64."""
    pipe64 = latent.load_pipeline(pipe.name_or_path, device="cpu", dtype=torch.float64)
    decoder = latent.latent_decoder(pipe64)
    z = torch.randn(
        1, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )  # small: E = 64
    eps = 1e-5
    basis = torch.eye(64, dtype=torch.float64).reshape(64, 4, 4, 4)
    with torch.no_grad():
        columns = (decoder(z + eps * basis) - decoder(z - eps * basis)).reshape(64, -1) / (2 * eps)
    jacobian = columns.T  # (D, E) = (192, 64)
    exact = latent.decoder_descriptors(pipe64, z, method="exact", radius=None, progress=False)
    torch.testing.assert_close(
        exact.singular_values[0].double(), torch.linalg.svdvals(jacobian), rtol=1e-4, atol=1e-6
    )
    projected = latent.decoder_descriptors(
        pipe64, z, method="projected", k=40, seed=3, radius=None, progress=False
    )
    w = geomlib.orthonormal_rows(40, 192, seed=3, dtype=torch.float64)
    truth = torch.linalg.svdvals(w @ jacobian)
    torch.testing.assert_close(projected.singular_values[0].double(), truth, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(projected.local_scaling[0].double(), truth.log().sum(), rtol=1e-4, atol=1e-4)


def test_complexity_counts_only_the_decoders_silu_calls(pipe):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))  # one latent: one call shape
    by_layer = geomlib.local_complexity_by_layer(latent.latent_decoder(pipe), z, radius=0.5, n_dirs=4)
    assert by_layer and all(name.startswith("vae.decoder.") for name in by_layer)
    assert any(name.endswith("#1") for name in by_layer)  # one SiLU module, called twice per block
    silu_modules = {n for n, m in pipe.vae.decoder.named_modules() if isinstance(m, torch.nn.SiLU)}
    assert {name.split("#")[0].removeprefix("vae.decoder.") for name in by_layer} == silu_modules
    described = latent.decoder_descriptors(pipe, z, k=16, radius=0.5, n_dirs=4, progress=False)
    torch.testing.assert_close(described.local_complexity, torch.stack(list(by_layer.values())).sum(0))


def test_encode_images_gives_posterior_means_in_diffusion_units(pipe):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    z = latent.encode_images(pipe, images)
    with torch.no_grad():
        posterior = pipe.vae.encode(images * 2 - 1).latent_dist
    torch.testing.assert_close(z, posterior.mean * 0.5)
    assert not torch.allclose(z, posterior.mean)
    with pytest.raises(ValueError, match="shape"):
        latent.encode_images(pipe, torch.rand(2, 16, 16, 3))


mini_model = pytest.mark.skipif(
    not (latent.MINI_MODEL / "model_index.json").exists(), reason="data/mini-sd not trained yet"
)


@pytest.fixture(scope="module")
def mini_batch():
    """The shipped decoder and 8 latents: a decoder big enough that batching moves its values."""
    from geomlib.profiles import torch_threads

    with torch_threads(2):
        pipe = latent.load_pipeline(latent.MINI_MODEL, device="cpu")
        yield pipe, latent.initial_latents(pipe, 8, seed=5)


SETTINGS = dict(k=16, n_dirs=8, radius=0.5, progress=False)


@mini_model
def test_decoder_descriptors_of_a_latent_do_not_depend_on_its_batch(mini_batch):
    """One latent alone, the same latent among 8, and the 8 in another order: bit-identical
    (each latent is described in a call of its own, so this is the same computation)."""
    pipe, z = mini_batch
    together = latent.decoder_descriptors(pipe, z, **SETTINGS)
    alone = latent.decoder_descriptors(pipe, z[3:4], **SETTINGS)
    reversed_order = latent.decoder_descriptors(pipe, z.flip(0), **SETTINGS)
    for name in ("local_scaling", "local_rank", "local_complexity", "singular_values"):
        assert torch.equal(getattr(alone, name)[0], getattr(together, name)[3]), name
        assert torch.equal(getattr(reversed_order, name).flip(0), getattr(together, name)), name


@mini_model
def test_batched_describe_stays_within_its_stated_tolerance(mini_batch):
    """describe on the batch of 8 against one latent per call: within BATCH_TOLERANCE."""
    pipe, z = mini_batch
    batched = geomlib.describe(latent.latent_decoder(pipe), z, method="projected", k=16, radius=0.5, n_dirs=8)
    single = latent.decoder_descriptors(pipe, z, **SETTINGS)
    for name, tolerance in geomlib.BATCH_TOLERANCE.items():
        got, want = getattr(batched, name).double(), getattr(single, name).double()
        assert ((got - want).abs() <= tolerance * want.abs()).all(), name
