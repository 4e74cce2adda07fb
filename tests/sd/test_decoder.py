"""geomlib.sd.decoder: the decoder as a function of the latent against diffusers' own
``vae.decode``, its spectrum against finite differences in float64, δ on its SiLUs, the encoder's
posterior means, and descriptors that do not depend on the batch."""

import math
import re

import pytest
import torch

import geomlib
from geomlib.sd import decoder, pipelines, sampling


def test_decoder_function_matches_vae_decode_with_the_scaling_factor(pipe):
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    function = decoder.latent_decoder(pipe)
    with torch.no_grad():
        expected = pipe.vae.decode(z / 0.5).sample
        got = function(z)
    assert got.shape == (3, 3, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # memory layouts differ: not bitwise


def test_decoder_spectrum_matches_finite_differences(pipe):
    """Exact and projected spectra against a central-difference Jacobian in float64."""
    pipe64 = pipelines.load_pipeline(pipe.name_or_path, device="cpu", dtype=torch.float64)
    function = decoder.latent_decoder(pipe64)
    z = torch.randn(
        1, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )  # small: E = 64
    eps = 1e-5
    basis = torch.eye(64, dtype=torch.float64).reshape(64, 4, 4, 4)
    with torch.no_grad():
        columns = (function(z + eps * basis) - function(z - eps * basis)).reshape(64, -1) / (2 * eps)
    jacobian = columns.T  # (D, E) = (192, 64)
    exact = decoder.decoder_descriptors(pipe64, z, method="exact", radius=None, progress=False)
    torch.testing.assert_close(
        exact.singular_values[0].double(), torch.linalg.svdvals(jacobian), rtol=1e-4, atol=1e-6
    )
    projected = decoder.decoder_descriptors(
        pipe64, z, method="projected", k=40, seed=3, radius=None, progress=False
    )
    w = geomlib.orthonormal_rows(40, 192, seed=3, dtype=torch.float64)
    truth = torch.linalg.svdvals(w @ jacobian)
    torch.testing.assert_close(projected.singular_values[0].double(), truth, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(projected.local_scaling[0].double(), truth.log().sum(), rtol=1e-4, atol=1e-4)


def test_complexity_counts_only_the_decoders_silu_calls(pipe):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))  # one latent: one call shape
    by_layer = geomlib.local_complexity_by_layer(decoder.latent_decoder(pipe), z, radius=0.5, n_dirs=4)
    assert by_layer and all(name.startswith("vae.decoder.") for name in by_layer)
    assert any(name.endswith("#1") for name in by_layer)  # one SiLU module, called twice per block
    silu_modules = {n for n, m in pipe.vae.decoder.named_modules() if isinstance(m, torch.nn.SiLU)}
    assert {name.split("#")[0].removeprefix("vae.decoder.") for name in by_layer} == silu_modules
    described = decoder.decoder_descriptors(pipe, z, k=16, radius=0.5, n_dirs=4, progress=False)
    torch.testing.assert_close(described.local_complexity, torch.stack(list(by_layer.values())).sum(0))


def test_encode_images_gives_posterior_means_in_diffusion_units(pipe):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    z = decoder.encode_images(pipe, images)
    with torch.no_grad():
        posterior = pipe.vae.encode(images * 2 - 1).latent_dist
    torch.testing.assert_close(z, posterior.mean * 0.5)
    assert not torch.allclose(z, posterior.mean)
    with pytest.raises(ValueError, match="shape"):
        decoder.encode_images(pipe, torch.rand(2, 16, 16, 3))


mini_model = pytest.mark.skipif(
    not (pipelines.MINI_MODEL / "model_index.json").exists(), reason="data/mini-sd not trained yet"
)


@pytest.fixture(scope="module")
def mini_batch():
    """The shipped decoder and 8 latents: a decoder big enough that batching moves its values."""
    from geomlib.runtime.profiles import torch_threads

    with torch_threads(2):
        pipe = pipelines.load_pipeline(pipelines.MINI_MODEL, device="cpu")
        yield pipe, sampling.initial_latents(pipe, 8, seed=5)


SETTINGS = dict(k=16, n_dirs=8, radius=0.5, progress=False)


@mini_model
def test_decoder_descriptors_of_a_latent_do_not_depend_on_its_batch(mini_batch):
    """One latent alone, the same latent among 8, and the 8 in another order: bit-identical
    (each latent is described in a call of its own, so this is the same computation)."""
    pipe, z = mini_batch
    together = decoder.decoder_descriptors(pipe, z, **SETTINGS)
    alone = decoder.decoder_descriptors(pipe, z[3:4], **SETTINGS)
    reversed_order = decoder.decoder_descriptors(pipe, z.flip(0), **SETTINGS)
    for name in ("local_scaling", "local_rank", "local_complexity", "singular_values"):
        assert torch.equal(getattr(alone, name)[0], getattr(together, name)[3]), name
        assert torch.equal(getattr(reversed_order, name).flip(0), getattr(together, name)), name


@mini_model
def test_batched_describe_stays_within_its_stated_tolerance(mini_batch):
    """describe on the batch of 8 against one latent per call: within BATCH_TOLERANCE."""
    pipe, z = mini_batch
    batched = geomlib.describe(
        decoder.latent_decoder(pipe), z, method="projected", k=16, radius=0.5, n_dirs=8
    )
    single = decoder.decoder_descriptors(pipe, z, **SETTINGS)
    for name, tolerance in geomlib.BATCH_TOLERANCE.items():
        got, want = getattr(batched, name).double(), getattr(single, name).double()
        assert ((got - want).abs() <= tolerance * want.abs()).all(), name


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8), TypeError, "images.float() / 255"),
        (torch.full((1, 3, 16, 16), 200.0), ValueError, "images / 255"),
        (torch.full((1, 3, 16, 16), -0.9), ValueError, "(images + 1) / 2"),
        (torch.full((1, 3, 16, 16), math.nan), ValueError, "NaN"),
        (torch.rand(1, 3, 15, 16), ValueError, "multiples of the VAE factor"),
        (torch.rand(1, 3, 1, 1), ValueError, "multiples of the VAE factor"),
    ],
    ids=["uint8", "0-255", "minus-one-to-one", "nan", "odd-size", "one-pixel"],
)
def test_encode_images_checks_dtype_range_finiteness_and_size(pipe, images, error, message):
    with pytest.raises(error, match=re.escape(message)):
        decoder.encode_images(pipe, images)


def test_nan_latents_and_empty_batches_are_refused_by_name(pipe):
    z = torch.zeros(3, 4, 8, 8)
    z[2, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=re.escape("latents contains NaN or inf values (samples [2])")):
        decoder.decode_latents(pipe, z)
    with pytest.raises(ValueError, match=re.escape("samples [2]")):  # its own index, not its batch's
        decoder.decoder_descriptors(pipe, z, k=4, radius=None, progress=False)
    with pytest.raises(ValueError, match="empty"):
        decoder.decoder_descriptors(pipe, torch.zeros(0, 4, 8, 8), k=4, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        decoder.encode_images(pipe, torch.rand(2, 3, 16, 16), batch_size=0)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        decoder.latent_shape(pipe, -8, 16)


def test_descriptor_settings_name_what_is_wrong():
    with pytest.raises(TypeError, match=r"k must be a positive integer.*use 8"):
        decoder.DescriptorSettings(k=8.0)
    with pytest.raises(ValueError, match="radius"):
        decoder.DescriptorSettings(radius=math.inf)
    with pytest.raises(ValueError, match="method must be one of"):
        decoder.DescriptorSettings(method="svd")
