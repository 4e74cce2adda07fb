"""How good are the Jacobian sketches? Exact, projected and randomized spectra side by side.

The book's theory chapter uses this to measure, on a real decoder, what each method of
:func:`geomlib.jacobian_singular_values` returns: the error of the top singular values, how well
the sketched ψ and ν rank latents compared with the exact ones, and what each costs.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from geomlib.descriptors import local_rank, local_scaling
from geomlib.jacobian import BatchFunction, jacobian_singular_values

#: Budgets of the theory chapter's measurements.
SKETCHING_BUDGETS: dict[str, dict] = {
    "smoke": dict(n_latents=3, ks=[4, 8], power_iters=[0, 1], latent_size=4, widths=[32, 32, 32]),
    "book": dict(
        n_latents=12, ks=[8, 16, 32, 64, 120], power_iters=[0, 1, 2], latent_size=8, widths=[32, 32, 64, 64]
    ),
    "paper": dict(
        n_latents=64,
        ks=[8, 16, 32, 64, 120, 240],
        power_iters=[0, 1, 2, 4],
        latent_size=8,
        widths=[32, 32, 64, 64],
    ),
}


def random_vae_decoder(
    latent_size: int, widths: list[int], *, seed: int = 0
) -> tuple[BatchFunction, tuple[int, int, int]]:
    """A Stable-Diffusion-architecture decoder (diffusers ``AutoencoderKL``) with random weights.

    Returns the function ``(B, 4, s, s) -> (B, 3, s * 2^(len(widths)-1), ...)`` and the latent shape.
    Random weights are enough to compare numerical methods on a realistic architecture.
    """
    from diffusers import AutoencoderKL

    # diffusers initialises weights from the global RNG: seed a fork of it, leave the caller's alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * len(widths),
            up_block_types=["UpDecoderBlock2D"] * len(widths),
            block_out_channels=widths,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=min(32, min(widths)),
            sample_size=latent_size * 2 ** (len(widths) - 1),
        ).eval()
    return _Decode(vae), (4, latent_size, latent_size)


class _Decode(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def sketch_accuracy(
    f: BatchFunction,
    z: torch.Tensor,
    ks: list[int],
    power_iters: list[int],
    *,
    top: int = 10,
    seed: int = 0,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """Compare the projected and randomized methods with the exact spectrum at ``z: (B, *in)``.

    For every ``k`` (and every number of power iterations for ``randomized``) it records the
    median relative error of the top ``min(top, k)`` singular values, the Spearman correlation
    across latents of the method's ψ and ν with the exact ones, and the wall time.

    Returns
    -------
    ``(table, exact_sigma)``: one row per (method, k, power_iters); ``exact_sigma: (B, m)``.
    """
    exact, exact_seconds = _timed(lambda: jacobian_singular_values(f, z, method="exact"))
    exact_psi, exact_nu = local_scaling(exact).numpy(), local_rank(exact).numpy()
    rows = [_row("exact", exact.shape[1], 0, exact, exact, exact_psi, exact_nu, exact_seconds, top)]
    for k in ks:
        sigma, seconds = _timed(
            lambda k=k: jacobian_singular_values(f, z, method="projected", k=k, seed=seed)
        )
        rows.append(_row("projected", k, 0, sigma, exact, exact_psi, exact_nu, seconds, top))
        for q in power_iters:
            sigma, seconds = _timed(
                lambda k=k, q=q: jacobian_singular_values(
                    f, z, method="randomized", k=k, power_iters=q, seed=seed
                )
            )
            rows.append(_row("randomized", k, q, sigma, exact, exact_psi, exact_nu, seconds, top))
    return pd.DataFrame(rows), exact


def _row(method, k, q, sigma, exact, exact_psi, exact_nu, seconds, top) -> dict:
    n = min(top, sigma.shape[1])
    relative = ((sigma[:, :n] - exact[:, :n]).abs() / exact[:, :n]).numpy()
    psi, nu = local_scaling(sigma).numpy(), local_rank(sigma).numpy()
    return dict(
        method=method,
        k=k,
        power_iters=q,
        top_sigma_rel_error=float(np.median(relative)),
        psi_spearman=_spearman(psi, exact_psi),
        nu_spearman=_spearman(nu, exact_nu),
        seconds=seconds,
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
