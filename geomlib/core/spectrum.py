"""Singular values of each sample's Jacobian by any of the methods, chosen by name.

``exact``       the full Jacobian from ``E`` JVPs or ``D`` VJPs (whichever is fewer), then an SVD.
``projected``   the paper's sketch: ``W J`` for a fixed ``k x D`` matrix ``W`` with orthonormal rows.
``randomized``  randomized SVD (Halko, Martinsson & Tropp 2011) with power iterations.
``lanczos``     block Golub–Kahan–Lanczos (:mod:`geomlib.core.lanczos`), to an error bound per value.

Which top-``k`` method: ``lanczos`` when the values themselves matter (it reaches the accuracy of
the products, 1e-7 relative in float32, where ``randomized`` with two power iterations is 3e-2 off
on a decoder's flat top); ``randomized`` when a subspace close to the top one is enough and a
fixed, predictable number of products matters more (edit directions, ranks of denoiser
Jacobians). Whole-spectrum ψ and ν without the full Jacobian: :mod:`geomlib.core.slq`.
"""

from __future__ import annotations

from typing import Literal

import torch

from geomlib.core.checks import positive_int
from geomlib.core.jacobian import (
    BatchFunction,
    _svd_ready,
    check_independent_samples,
    jacobian,
    projected_jacobian,
    randomized_svd,
)
from geomlib.core.lanczos import LANCZOS_TOL, lanczos_svd

Method = Literal["exact", "projected", "randomized", "lanczos"]
METHODS: tuple[str, ...] = ("exact", "projected", "randomized", "lanczos")


@torch.no_grad()
def jacobian_singular_values(
    f: BatchFunction,
    z: torch.Tensor,
    *,
    method: Method = "exact",
    k: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    oversample: int = 10,
    power_iters: int = 2,
    tol: float = LANCZOS_TOL,
) -> torch.Tensor:
    """Singular values of each sample's Jacobian ``J_b = d f(z)_b / d z_b``, descending.

    Parameters
    ----------
    f
        callable mapping ``(B, *in_shape) -> (B, *out_shape)``; samples must not interact
        (no batch norm in training mode). ``E = prod(in_shape)``, ``D = prod(out_shape)``.
    z
        ``(B, *in_shape)`` latents on the device of ``f``: float32, float64, or float16/bfloat16
        (products in half precision, SVD in float32).
    method
        ``"exact"`` (full Jacobian, ``m = min(E, D)`` values), ``"projected"`` (singular values
        of ``W J`` for a fixed ``k x D`` ``W`` with orthonormal rows, ``m = min(k, E)``; the paper's
        method, ``k = 120`` for Stable Diffusion), ``"randomized"`` (top ``k`` by randomized SVD)
        or ``"lanczos"`` (top ``k`` by block Lanczos, each to relative error bound ``tol``).
    k
        sketch size or number of values for ``projected``/``randomized``/``lanczos`` (required
        there; ignored by ``exact``).
    seed
        seed of ``W`` or of the randomized test vectors (a local generator).
    chunk_size
        at most this many JVPs/VJPs per batched pass; bounds memory.
    oversample, power_iters
        randomized SVD settings (see :func:`randomized_svd`).
    tol
        ``lanczos`` only: stop when each value's error bound is below ``tol`` times the value (see
        :func:`geomlib.core.lanczos.lanczos_svd`).

    Returns
    -------
    ``(B, m)`` singular values, descending, in ``z``'s dtype (float32 for half precision);
    detached (computed without a graph to the parameters, which saves memory).

    Notes
    -----
    The singular values of a random sketch ``W J`` are not estimates of ``J``'s top singular
    values; ``randomized`` targets those. ``projected`` with ``k = D`` gives the exact spectrum.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    positive_int("chunk_size", chunk_size, optional=True)
    check_independent_samples(f)
    if method == "exact":
        return torch.linalg.svdvals(_svd_ready(jacobian(f, z, chunk_size)))
    if k is None:
        raise ValueError(f"method={method!r} needs a positive sketch size k (the paper uses 120)")
    positive_int("k", k)
    if method == "projected":
        sketch = projected_jacobian(f, z, k, seed=seed, chunk_size=chunk_size)
        return torch.linalg.svdvals(_svd_ready(sketch))
    if method == "lanczos":
        return lanczos_svd(f, z, k, tol=tol, seed=seed, chunk_size=chunk_size).S
    svd = randomized_svd(
        f, z, k, oversample=oversample, power_iters=power_iters, seed=seed, chunk_size=chunk_size
    )
    return svd.S
