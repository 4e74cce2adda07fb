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


@pytest.fixture
def linear_map():
    """Factory for matrices with known singular values: the closed-form truth of many tests."""
    return _linear_map
