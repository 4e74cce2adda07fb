import pytest
import torch


def _linear_map(singular_values, in_dim, out_dim, *, seed=0, dtype=torch.float64):
    """A random ``out_dim x in_dim`` matrix with exactly the given singular values."""
    generator = torch.Generator().manual_seed(seed)
    rank = len(singular_values)
    left = torch.linalg.qr(torch.randn(out_dim, rank, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(in_dim, rank, generator=generator, dtype=torch.float64)).Q
    sigma = torch.as_tensor(singular_values, dtype=torch.float64)
    return ((left * sigma) @ right.T).to(dtype)


def _diagonal_quadratic(in_dim, out_dim, *, seed=0):
    """f(z) = U (z[:m]^2 / 2), ``m = min(E, D)``, U with orthonormal columns.

    J_b = U diag(z_b[:m]) (padded with zero columns), so the singular values of sample b are the
    sorted |z_b[:m]|: a closed form that differs from sample to sample.
    """
    generator = torch.Generator().manual_seed(seed)
    rank = min(in_dim, out_dim)
    basis = torch.linalg.qr(torch.randn(out_dim, rank, generator=generator, dtype=torch.float64)).Q
    return lambda z: (z[:, :rank] ** 2 / 2) @ basis.T.to(device=z.device, dtype=z.dtype)


@pytest.fixture
def diagonal_quadratic():
    """Factory for maps whose per-sample singular values are |z_b| (see ``_diagonal_quadratic``)."""
    return _diagonal_quadratic


@pytest.fixture
def linear_map():
    """Factory for matrices with known singular values: the closed-form truth of many tests."""
    return _linear_map


def _describe_each(f, z, **options):
    """``geomlib.describe`` one sample per call: the truth for code that describes latents one by
    one (their δ is then the same computation; batched calls move it, see BATCH_TOLERANCE)."""
    from geomlib import Descriptors, describe

    return Descriptors.concatenate([describe(f, z[i : i + 1], **options) for i in range(len(z))])


@pytest.fixture
def describe_each():
    """``describe_each(f, z, **options)``: :func:`geomlib.describe` of each sample alone."""
    return _describe_each


@pytest.fixture(scope="module")
def tiny_pipe():
    """The untrained tiny SD-architecture pipeline, on one CPU thread (a tiny model: threads only
    add overhead, and much more on a busy CPU)."""
    from geomlib.runtime.profiles import torch_threads
    from geomlib.sd.pipelines import tiny_random_pipeline

    with torch_threads(1):
        yield tiny_random_pipeline()
