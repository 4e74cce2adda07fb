"""geomlib.runtime.seeding against PyTorch's own default initialisation and global generator."""

import torch
from torch import nn

from geomlib.runtime.seeding import reinitialise, seeded_global_rng


def test_seeded_global_rng_is_reproducible_and_restores_the_callers_state():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded_global_rng(7):
        first = torch.rand(4)
    with seeded_global_rng(7):
        second = torch.rand(4)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(torch.rand(3), expected_next)  # the caller's stream is untouched


def test_reinitialise_draws_what_pytorchs_reset_parameters_draws():
    """With a generator seeded like the global RNG, the weights equal nn.Linear's / nn.Conv2d's own
    default initialisation (``reset_parameters``)."""
    for make in (lambda: nn.Linear(5, 4), lambda: nn.Conv2d(3, 2, 3)):
        with seeded_global_rng(11):
            reference = make()
        redrawn = reinitialise(make(), torch.Generator().manual_seed(11))
        for ours, theirs in zip(redrawn.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs)
