"""geomlib.chapters.corruptions: corruptions against ImageNet-C's published definitions, reproducibility,
the small-image round trip, the paired statistics against closed forms, the image-folder sampler,
and the cached measurement against a direct call of the descriptor kernels."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geomlib.chapters import corruptions as C
from geomlib.core import stats
from geomlib.runtime.cache import ResultCache, model_fingerprint
from geomlib.sd import decoder, pipelines
from geomlib.sd.decoder import DescriptorSettings, encode_images, latent_decoder
from geomlib.sd.images import ImageFolderImages
from geomlib.sd.pipelines import tiny_random_pipeline


def _random_image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_contrast_follows_the_imagenet_c_formula():
    image = _random_image(32)
    out = C.corrupt_image(image, "contrast", 5, seed=0)
    x = image / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    expected = np.uint8(np.clip((x - means) * 0.05 + means, 0, 1) * 255)  # severity 5: c = 0.05
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_gaussian_noise_has_the_published_strength():
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    residual = C.corrupt_image(grey, "gaussian_noise", 1, seed=3).astype(float) - 128
    assert residual.std() == pytest.approx(0.08 * 255, rel=0.05)  # severity 1: sigma = 0.08
    assert abs(residual.mean()) < 1.5


def test_small_images_go_through_a_round_trip():
    grey = np.full((16, 16, 3), 128, dtype=np.uint8)
    assert np.array_equal(C.corrupt_image(grey, C.CLEAN, 0, seed=0), grey)  # a constant survives resizing
    noisy = C.corrupt_image(grey, "gaussian_noise", 1, seed=1)
    assert noisy.shape == (16, 16, 3)
    # noise added at 32 px, then 2x2 box averages: the standard deviation halves
    assert (noisy.astype(float) - 128).std() == pytest.approx(0.08 * 255 / 2, rel=0.12)
    image = _random_image(16)
    up = Image.fromarray(image).resize((32, 32), Image.Resampling.BICUBIC)
    expected = np.asarray(up.resize((16, 16), Image.Resampling.BOX))
    assert np.array_equal(C.corrupt_image(image, "shot_noise", 0, seed=0), expected)


def test_corruption_is_reproducible_per_image_and_leaves_numpy_alone():
    images = np.stack([_random_image(32, seed) for seed in range(3)])
    legacy = np.random  # the package draws from numpy's global generator: check it is left alone
    legacy.seed(123)
    expected_next = legacy.random()
    legacy.seed(123)
    batch = C.corrupt_images(images, "speckle_noise", 4, seed=7)
    assert legacy.random() == expected_next
    alone = [
        C.corrupt_images(images[i : i + 1], "speckle_noise", 4, seed=7, first_index=i)[0] for i in range(3)
    ]
    assert np.array_equal(batch, np.stack(alone))
    assert not np.array_equal(batch, C.corrupt_images(images, "speckle_noise", 4, seed=8))
    impulse = [C.corrupt_images(images, "impulse_noise", 2, seed=1) for _ in range(2)]
    assert np.array_equal(*impulse)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="unknown corruptions"):
        C.check_corruptions(["gaussian_noise", "rain"])
    with pytest.raises(ValueError, match="list of names"):
        C.check_corruptions("contrast")
    with pytest.raises(ValueError, match="severity"):
        C.corrupt_image(_random_image(32), "contrast", 6, seed=0)
    with pytest.raises(ValueError, match="square"):
        C.corrupt_image(np.zeros((32, 40, 3), np.uint8), "contrast", 1, seed=0)
    assert len(C.PAPER_CORRUPTIONS) == 16 and C.EXTRA_CORRUPTION not in C.BENCHMARK_CORRUPTIONS


def test_paired_change_matches_the_t_interval_by_hand():
    before = np.zeros(5)
    effect = stats.paired_change(before, np.array([1.0, 2, 3, 4, 5]))
    half = 2.776445 * np.sqrt(2.5) / np.sqrt(5)  # t_{0.975, 4} from tables, sd^2 = 2.5
    assert effect["change"] == pytest.approx(3.0)
    assert (effect["low"], effect["high"]) == pytest.approx((3 - half, 3 + half), rel=1e-5)
    assert effect["p_value"] == pytest.approx(0.01324, abs=2e-4)  # t = 4.243, 4 df


def _synthetic_table(shifts: dict[str, float], n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=n)
    rows = []
    for name, shift in shifts.items():
        wobble = np.tile([0.1, -0.1], n // 2)
        for severity, values in ((0, clean), (5, clean + shift + wobble)):
            rows += [
                {"corruption": name, "severity": severity, "image": i, "local_scaling": v}
                for i, v in enumerate(values)
            ]
    return pd.DataFrame(rows)


def test_severity_effects_and_group_claims_recover_planted_shifts():
    table = _synthetic_table({"gaussian_noise": 2.0, "shot_noise": -1.0, "defocus_blur": -3.0, "snow": 0.0})
    effects = C.severity_effects(table).set_index("corruption")
    assert effects.loc["gaussian_noise", "change"] == pytest.approx(2.0)
    assert effects.loc["defocus_blur", "change"] == pytest.approx(-3.0)
    assert list(effects["direction"]) == ["down", "up", "down", "n.s."]  # groupby sorts by name
    assert effects.loc["snow", "group"] == "other"
    assert list(effects["verdict"].fillna("-")) == ["as claimed", "as claimed", "opposite", "-"]
    assert (effects["detectable"].dropna() > 0).all() and (effects["images_to_detect"].dropna() >= 6).all()
    claims = C.group_claims(effects.reset_index()).set_index("group")
    assert claims.loc["noise-like", "as claimed"] == 1 and claims.loc["noise-like", "opposite"] == 1
    assert claims.loc["blur/contrast-like", "as claimed"] == 1
    # no shift: with a large effect of interest the sample rules it out; with a tiny one it cannot
    flat = _synthetic_table({"gaussian_noise": 0.0})
    assert C.severity_effects(flat, smallest_effect=1.0)["verdict"][0] == "no effect larger than"
    assert C.severity_effects(flat, smallest_effect=1e-3)["verdict"][0] == "undecided at this sample size"
    with pytest.raises(ValueError, match="severities"):
        C.severity_effects(table, high=3)


def _save(path, size, colour=(0, 128, 0)):
    Image.new("RGB", size, colour).save(path)


def test_image_folder_samples_classes_uniformly_and_crops_the_centre(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(3):
            _save(tmp_path / name / f"{i}.png", (60, 40))
        _save(tmp_path / name / "small.png", (30, 30))  # under min_side: never drawn
    wide = Image.new("RGB", (60, 40), (0, 200, 0))
    wide.paste((255, 0, 0), (0, 0, 10, 40))
    wide.paste((0, 0, 255), (50, 0, 60, 40))
    wide.save(tmp_path / "a" / "0.png")
    images = ImageFolderImages(tmp_path, 7, size=40, seed=0)
    assert sorted(images.labels) == ["a", "a", "a", "b", "b", "c", "c"]
    assert all(p.name != "small.png" for p in images.paths)
    crops = images[0:7]
    assert crops.shape == (7, 40, 40, 3) and crops.dtype == np.uint8
    first = crops[images.paths.index(tmp_path / "a" / "0.png")]
    assert np.abs(first.astype(int) - [0, 200, 0]).max() <= 2  # the red and blue margins are cut off
    with pytest.raises(ValueError, match="only 9 images"):
        ImageFolderImages(tmp_path, 10, size=40)


def test_result_cache_round_trip(tmp_path):
    cache = ResultCache(tmp_path, {"k": 8})
    assert cache.load(("x", 1)) is None
    cache.save(("x", 1), {"psi": [1.5, 2.5]})
    cache.save_tensors(("x", 1), {"z": torch.arange(3)})
    assert cache.load(("x", 1)) == {"psi": [1.5, 2.5]}
    assert torch.equal(cache.load_tensors(("x", 1))["z"], torch.arange(3))
    assert len(cache) == 2 and not list(tmp_path.rglob("*.partial"))
    assert ResultCache(tmp_path, {"k": 16}).load(("x", 1)) is None  # other settings, other folder


def test_measurement_matches_the_kernels_and_resumes(tiny_pipe, tmp_path, monkeypatch, describe_each):
    world = pipelines.world_for_model("tiny-random", pipelines.pipeline_resolution(tiny_pipe))
    images = C.in_domain_images(world, 2, seed=0)
    settings = DescriptorSettings(k=6, n_dirs=2, radius=0.05)
    cache = ResultCache(tmp_path, settings.key())
    table = C.corruption_descriptors(
        tiny_pipe, images, ["contrast"], [0, 5], settings, cache=cache, progress=False
    )
    assert len(table) == 4 and set(table["severity"]) == {0, 5}

    clean = C.corrupt_images(images, C.CLEAN, 0)  # the 32-px round trip of the 16-px images
    pixels = torch.from_numpy(clean.astype(np.float32) / 255).permute(0, 3, 1, 2)
    latents = encode_images(tiny_pipe, pixels, batch_size=1)  # one image per call, as the chapter
    direct = describe_each(
        latent_decoder(tiny_pipe), latents, method="projected", k=6, seed=0, radius=0.05, n_dirs=2
    )
    measured = table[table["severity"] == 0].sort_values("image")
    np.testing.assert_allclose(measured["local_scaling"], direct.local_scaling.numpy(), rtol=1e-6)
    assert measured["local_complexity"].tolist() == direct.local_complexity.tolist()

    calls = []
    original = decoder.decoder_descriptors
    monkeypatch.setattr(decoder, "decoder_descriptors", lambda *a, **k: calls.append(1) or original(*a, **k))
    cache.path(("contrast", 5, 0, 2)).unlink()  # lose one chunk, as an interrupted run would
    again = C.corruption_descriptors(
        tiny_pipe, images, ["contrast"], [0, 5], settings, cache=cache, progress=False
    )
    assert len(calls) == 1
    pd.testing.assert_frame_equal(again, table)


def test_command_line_path_equals_the_in_process_measurement_and_resumes(tiny_pipe, tmp_path):
    """The ``paper`` profile's path (PNG files, ``python -m geomlib describe``) gives the in-process
    table row for row; a second call reuses the images and the parquet rows."""
    world = pipelines.world_for_model("tiny-random", pipelines.pipeline_resolution(tiny_pipe))
    images = C.in_domain_images(world, 3, seed=0)
    settings = DescriptorSettings(k=6, n_dirs=2, radius=0.05)
    arguments = (images, ["gaussian_noise", "contrast"], [0, 3], settings)
    direct = C.corruption_descriptors(tiny_pipe, *arguments, seed=4, progress=False)
    via_cli = C.corruption_descriptors_cli("tiny-random", *arguments, tmp_path, seed=4, progress=False)
    assert sorted(
        p.relative_to(tmp_path / "images").as_posix() for p in (tmp_path / "images").rglob("*.png")
    )[:4] == ["clean/0/000000.png", "clean/0/000001.png", "clean/0/000002.png", "contrast/3/000000.png"]
    # the same images (PNG is lossless for uint8), each encoded and described in calls of its own
    # on both paths, so even δ agrees exactly
    assert via_cli["local_complexity"].tolist() == direct["local_complexity"].tolist()
    pd.testing.assert_frame_equal(via_cli, direct, check_exact=False, rtol=1e-6)

    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = C.corruption_descriptors_cli("tiny-random", *arguments, tmp_path, seed=4, progress=False)
    pd.testing.assert_frame_equal(again, via_cli)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rewritten


def test_world_for_model_finds_the_training_world(tmp_path):
    from geomlib.sd.mini.world import World

    assert pipelines.world_for_model("tiny-random", 16).image_size == 16
    world = World(seed=3, n_memorised=5)
    (tmp_path / "world.json").write_text(json.dumps(world.description()))
    assert pipelines.world_for_model(str(tmp_path)).memorised_captions == world.memorised_captions
    assert pipelines.world_for_model("CompVis/stable-diffusion-v1-4") is None  # a hub id: no world


def test_model_fingerprint_sees_weights_and_configs_not_paths(tiny_pipe):
    other = tiny_random_pipeline()  # the same weights, saved to another temporary folder
    assert model_fingerprint(other) == model_fingerprint(tiny_pipe)
    vae_only = model_fingerprint(other, ["vae"])
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    assert model_fingerprint(other) != model_fingerprint(tiny_pipe)
    assert model_fingerprint(other, ["vae"]) == vae_only  # chapter 04's key ignores the UNet
    other.vae.register_to_config(scaling_factor=0.5)
    assert model_fingerprint(other, ["vae"]) != vae_only
