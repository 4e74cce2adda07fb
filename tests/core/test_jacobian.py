"""Jacobian kernels against closed forms, finite differences and autograd loops."""

import math

import pytest
import torch
from torch import nn

from geomlib import (
    jacobian,
    jacobian_singular_values,
    orthonormal_rows,
    projected_jacobian,
    randomized_svd,
)

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def smooth_mlp(in_dim=6, out_dim=9, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_dim, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, out_dim)
    ).double()


def finite_difference_jacobian(f, z, eps=1e-6):
    """(B, D, E) by central differences, one input coordinate at a time."""
    flat = z.flatten(1)
    columns = []
    for j in range(flat.shape[1]):
        step = torch.zeros_like(flat)
        step[:, j] = eps
        plus = f((flat + step).reshape(z.shape)).flatten(1)
        minus = f((flat - step).reshape(z.shape)).flatten(1)
        columns.append((plus - minus) / (2 * eps))
    return torch.stack(columns, dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dim,out_dim", [(4, 7), (7, 4), (5, 5)])
def test_exact_matches_known_singular_values(diagonal_quadratic, dtype, device, in_dim, out_dim):
    rank = min(in_dim, out_dim)
    z = torch.randn(3, in_dim, dtype=dtype, device=device)
    sigma = jacobian_singular_values(diagonal_quadratic(in_dim, out_dim), z)
    truth = z[:, :rank].abs().sort(dim=1, descending=True).values  # a different spectrum per sample
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert sigma.shape == (3, rank) and sigma.dtype == dtype
    torch.testing.assert_close(sigma.cpu().double(), truth.cpu().double(), rtol=tol, atol=tol)


def test_jacobian_matches_finite_differences_float64():
    net = smooth_mlp()
    z = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = finite_difference_jacobian(net, z)
    torch.testing.assert_close(jacobian(net, z), expected, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(
        jacobian_singular_values(net, z), torch.linalg.svdvals(expected), rtol=1e-7, atol=1e-8
    )


def test_wide_input_uses_reverse_mode_and_matches_finite_differences():
    net = smooth_mlp(in_dim=12, out_dim=3)  # E > D: the reverse-mode branch
    z = torch.randn(4, 12, dtype=torch.float64)
    with torch.no_grad():
        expected = finite_difference_jacobian(net, z)
    torch.testing.assert_close(jacobian(net, z, chunk_size=2), expected, rtol=1e-7, atol=1e-8)


def test_image_shaped_decoder_matches_autograd_per_sample():
    torch.manual_seed(0)
    decoder = nn.Sequential(  # GroupNorm: its forward-mode rule once broke on expanded tangents
        nn.ConvTranspose2d(2, 4, 4, stride=2, padding=1),
        nn.GroupNorm(2, 4),
        nn.SiLU(),
        nn.Conv2d(4, 3, 3, padding=1),
    ).double()
    z = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    full = jacobian(decoder, z)
    assert full.shape == (2, 3 * 6 * 6, 2 * 3 * 3)
    for b in range(2):
        reference = torch.autograd.functional.jacobian(lambda x: decoder(x[None])[0], z[b])
        torch.testing.assert_close(full[b], reference.reshape(3 * 6 * 6, -1))


@pytest.mark.parametrize("in_dim,out_dim", [(5, 8), (8, 5)])
def test_projected_with_full_orthogonal_w_is_exact(in_dim, out_dim):
    net = smooth_mlp(in_dim, out_dim)
    z = torch.randn(3, in_dim, dtype=torch.float64)
    exact = jacobian_singular_values(net, z)
    projected = jacobian_singular_values(net, z, method="projected", k=out_dim, chunk_size=3)
    torch.testing.assert_close(projected[:, : exact.shape[1]], exact, rtol=1e-10, atol=1e-12)


def test_projected_sketch_interlaces_exact_spectrum():
    # W has orthonormal rows, so sigma_i(W J) <= sigma_i(J) for every i (Cauchy interlacing).
    net = smooth_mlp(6, 40)
    z = torch.randn(4, 6, dtype=torch.float64)
    exact = jacobian_singular_values(net, z)
    sketch = jacobian_singular_values(net, z, method="projected", k=10)
    assert sketch.shape == (4, 6)
    assert (sketch <= exact + 1e-12).all()
    sketch_rows = projected_jacobian(net, z, 10)
    w = orthonormal_rows(10, 40, seed=0, dtype=torch.float64)
    torch.testing.assert_close(sketch_rows, w @ jacobian(net, z))


def test_orthonormal_rows_are_orthonormal_and_seeded():
    w = orthonormal_rows(12, 50, seed=3, dtype=torch.float64)
    torch.testing.assert_close(w @ w.T, torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(w, orthonormal_rows(12, 50, seed=3, dtype=torch.float64))
    assert not torch.allclose(w, orthonormal_rows(12, 50, seed=4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_randomized_defaults_recover_decaying_spectrum(linear_map, dtype):
    truth = 0.7 ** torch.arange(60, dtype=torch.float64)
    matrix = linear_map(truth, 80, 120)
    z = torch.randn(2, 80, dtype=dtype)
    top = jacobian_singular_values(lambda x: x @ matrix.T.to(x.dtype), z, method="randomized", k=10)
    relative = ((top.double() - truth[:10]) / truth[:10]).abs().max()
    assert relative <= 1e-3, relative


def test_randomized_svd_vectors_reconstruct_jacobian():
    net = smooth_mlp(6, 9)
    z = torch.randn(3, 6, dtype=torch.float64)
    svd = randomized_svd(net, z, k=6, oversample=0, power_iters=1)
    full = jacobian(net, z)
    torch.testing.assert_close(svd.U @ torch.diag_embed(svd.S) @ svd.V.transpose(1, 2), full)
    eye = torch.eye(6, dtype=torch.float64).expand(3, -1, -1)
    torch.testing.assert_close(svd.V.transpose(1, 2) @ svd.V, eye)


def test_chunking_does_not_change_results():
    net = smooth_mlp(6, 30)
    z = torch.randn(3, 6, dtype=torch.float64)
    for method, k in [("exact", None), ("projected", 12), ("randomized", 4)]:
        whole = jacobian_singular_values(net, z, method=method, k=k)
        chunked = jacobian_singular_values(net, z, method=method, k=k, chunk_size=5)
        torch.testing.assert_close(whole, chunked)


def test_seeded_methods_leave_global_rng_alone():
    net = smooth_mlp()
    z = torch.randn(2, 6, dtype=torch.float64)
    state = torch.get_rng_state()
    first = jacobian_singular_values(net, z, method="randomized", k=3, seed=7)
    second = jacobian_singular_values(net, z, method="randomized", k=3, seed=7)
    jacobian_singular_values(net, z, method="projected", k=5, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first, second)


def test_results_carry_no_graph():
    net = smooth_mlp()
    z = torch.randn(2, 6, dtype=torch.float64)
    assert not jacobian_singular_values(net, z).requires_grad


@pytest.mark.parametrize(
    "z,kwargs,message",
    [
        (torch.randn(6), {}, "batch axis"),
        (torch.tensor([[0.0, math.nan, 0, 0, 0, 0]]), {}, "NaN or inf"),
        (torch.tensor([[0.0, math.inf, 0, 0, 0, 0]]), {}, "NaN or inf"),
        (torch.randn(2, 6), {"method": "projected", "k": 10}, "larger than the output"),
        (torch.randn(2, 6), {"method": "projected"}, "needs a positive sketch size"),
        (torch.randn(2, 6), {"method": "randomized", "k": 7}, "min\\(E, D\\)"),
        (torch.randn(2, 6), {"method": "svd"}, "method must be one of"),
        (torch.randn(2, 6), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_raises_clear_value_error(z, kwargs, message):
    net = smooth_mlp(6, 9).float()
    with pytest.raises(ValueError, match=message):
        jacobian_singular_values(net, z, **kwargs)


def test_wrong_kinds_of_argument_raise_type_errors_that_say_the_fix():
    net = smooth_mlp(6, 9).float()
    with pytest.raises(TypeError, match=r"floating tensor.*z.float\(\)"):
        jacobian_singular_values(net, torch.zeros(2, 6, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"k must be a positive integer.*use 4"):
        jacobian_singular_values(net, torch.randn(2, 6), method="projected", k=4.0)


def test_function_with_wrong_batch_contract_is_rejected():
    with pytest.raises(ValueError, match="must map"):
        jacobian_singular_values(lambda z: z.sum(), torch.randn(3, 4))


def test_bfloat16_products_give_float32_singular_values_close_to_float64():
    import copy

    net = smooth_mlp(6, 20)
    low_net = copy.deepcopy(net).to(torch.bfloat16)
    z = torch.randn(3, 6, dtype=torch.float64)
    for method, k in [("projected", 12), ("randomized", 4), ("exact", None)]:
        low = jacobian_singular_values(low_net, z.to(torch.bfloat16), method=method, k=k)
        reference = jacobian_singular_values(net, z, method=method, k=k)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low.double(), reference, rtol=5e-2, atol=1e-2)


def test_products_through_a_diffusers_decoder_with_a_batch():
    # Both modes once failed inside diffusers' VAE with a real batch > 1 (group norm after
    # attention, a memory-format query under vmap); the products map samples one at a time.
    # Checked against torch.autograd.functional.jacobian, one sample at a time.
    from geomlib.chapters.jacobian_sketches import random_vae_decoder

    decoder, shape = random_vae_decoder(2, [32, 32])
    decoder = decoder.double()
    z = torch.randn(2, *shape, dtype=torch.float64)
    references = [
        torch.autograd.functional.jacobian(lambda x: decoder(x[None])[0], sample).reshape(-1, z[0].numel())
        for sample in z
    ]
    full, sketch = jacobian(decoder, z), projected_jacobian(decoder, z, 5, chunk_size=2)
    w = orthonormal_rows(5, full.shape[1], dtype=torch.float64)
    for b, reference in enumerate(references):
        torch.testing.assert_close(full[b], reference, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(sketch[b], w @ reference, rtol=1e-9, atol=1e-10)
