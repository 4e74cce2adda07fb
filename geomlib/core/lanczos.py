"""Top singular triplets of each sample's Jacobian by block Golub–Kahan–Lanczos bidiagonalisation.

Krylov methods find the top of a flat spectrum, where randomized subspace iteration stalls: on a
diffusers decoder whose top 20 singular values lie within a factor of two, two power iterations
leave them 3e-2 off, while Lanczos reaches the accuracy of the products themselves. This is the
method of ARPACK and of PROPACK (Larsen 1998), in blocks so that each step's products are batched
with ``vmap`` (one batched JVP pass and one batched VJP pass per block) instead of one call each.

For each sample, with ``J = J_b`` of size ``D x E``, the iteration keeps orthonormal bases ``V``
(``E x n``) and ``U`` (``D x n``) and the small matrix ``H = U^T J V`` with

    J V = U H              (exactly, up to rounding)
    J^T U = V H^T + V_+ L E_last^T

where ``V_+`` is the next block and ``L`` its coupling to the last block of ``U``. A Ritz triplet
``(sigma, U x, V y)`` from the SVD ``H = X diag(sigma) Y^T`` then has ``J (V y) = sigma (U x)``
and ``||J^T (U x) - sigma (V y)|| = ||L x_last||``: the residual from which each value's error
bound, and so when to stop, is judged.
Every new block is orthogonalised against all earlier ones twice (classical Gram–Schmidt, twice
is enough: Giraud et al. 2005), so no spurious copies of converged values appear; when the basis
reaches ``max_dim`` vectors the iteration restarts thick, keeping the best Ritz vectors and the
residual block (as in IRLBA, Baglama & Reichel 2005).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from geomlib.core.checks import positive_int, positive_number
from geomlib.core.jacobian import (
    BatchFunction,
    SingularTriplets,
    _output_shape,
    _svd_ready,
    check_independent_samples,
    check_latents,
    jvp_columns,
    vjp_rows,
)

#: Vectors per block when none is given. Measured for the top 20 of a diffusers decoder (E = 256,
#: D = 12 288, 2 CPU cores, tol 1e-6): blocks of 1, 2, 4, 6 spent 114, 144, 176, 192 products in
#: 8.0, 6.6, 4.5, 3.8 s (a busy machine; ARPACK: 208 products). A block Krylov space grows less
#: per product, but its products are batched; on a GPU, where a batch of 8 costs about one
#: product, prefer 8 or more.
DEFAULT_BLOCK_SIZE = 4


#: Default error bound of ``method="lanczos"``, relative to each value.
LANCZOS_TOL = 1e-6


class LanczosNoConvergence(UserWarning):
    """Some requested values did not reach their error bound within ``max_restarts``."""


@dataclass
class LanczosSVD(SingularTriplets):
    """:class:`~geomlib.core.jacobian.SingularTriplets` (``U, S, V``) from :func:`lanczos_svd`,
    with how far each value is from converged.

    Attributes
    ----------
    residuals : ``(B, k)`` ``||J_b^T u_i - s_i v_i||``; ``J_b v_i = s_i u_i`` holds by construction,
        so some singular value of ``J_b`` lies within ``residuals[b, i]`` of ``S[b, i]``.
    error_bounds : ``(B, k)`` the smaller of the residual and ``residual^2 / gap`` (the gap to the
        nearest other Ritz value): how far ``S`` is from a singular value once the values are
        separated, and what convergence is judged by.
    converged : ``(B, k)`` whether ``error_bounds <= tol * S``.
    jvps, vjps : products spent per sample (every sample spends the same).
    """

    residuals: torch.Tensor
    error_bounds: torch.Tensor
    converged: torch.Tensor
    jvps: int
    vjps: int

    @property
    def products(self) -> int:
        """JVPs plus VJPs per sample."""
        return self.jvps + self.vjps


def _orthogonalise(block: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove ``span(basis)`` from ``block`` by classical Gram–Schmidt twice.

    block: (B, N, w); basis: (B, N, n). Returns the remainder (B, N, w) and the coefficients
    ``basis^T block`` (B, n, w).
    """
    if basis.shape[-1] == 0:
        return block, block.new_zeros(block.shape[0], 0, block.shape[-1])
    first = basis.transpose(1, 2) @ block
    block = block - basis @ first
    second = basis.transpose(1, 2) @ block
    return block - basis @ second, first + second


def _orthonormal_block(
    block: torch.Tensor, basis: torch.Tensor, scale: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block = Q R`` with ``Q`` orthonormal and orthogonal to ``basis``; block: (B, N, w).

    A block that is (nearly) inside ``span(basis)`` has no direction of its own left: its
    dependent columns are replaced by random vectors orthogonalised against everything (the
    Krylov space has found an invariant subspace), and ``R = Q^T block`` keeps the relation exact
    up to the dropped remainder, smaller than ``scale`` times a few rounding units.
    """
    q, r = torch.linalg.qr(block)
    floor = 64 * torch.finfo(block.dtype).eps * max(scale, torch.finfo(block.dtype).tiny)
    weak = torch.diagonal(r, dim1=1, dim2=2).abs() <= floor  # (B, w)
    if not bool(weak.any()):
        return q, r
    for b, column in weak.nonzero().tolist():
        fresh = torch.randn(block.shape[1], 1, generator=generator, dtype=torch.float64)
        fresh = fresh.to(block)
        others = torch.cat([basis[b], q[b, :, :column], q[b, :, column + 1 :]], dim=1)
        for _ in range(2):
            fresh = fresh - others @ (others.T @ fresh)
        q[b, :, column] = (fresh / fresh.norm()).squeeze(1)
    return q, q.transpose(1, 2) @ block


def _error_bounds(ritz: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
    """How far each of the top ``k`` Ritz values can be from a singular value, (B, k).

    ritz: (B, n) all Ritz values, descending; residuals: (B, k). A residual ``r`` puts a singular
    value within ``r``, and within ``r^2 / gap`` when the others are at least ``gap`` away
    (Kahan–Parlett–Jiang); the gap is taken to the nearest other Ritz value.
    """
    k = residuals.shape[-1]
    if ritz.shape[-1] <= k:  # no value beyond the top k yet: no gap to trust
        return residuals
    distance = (ritz[:, :k, None] - ritz[:, None, :]).abs()  # (B, k, n)
    distance[:, torch.arange(k), torch.arange(k)] = math.inf
    gap = distance.amin(dim=-1)
    quadratic = residuals**2 / gap.clamp_min(torch.finfo(ritz.dtype).tiny)
    return torch.where(residuals < gap, torch.minimum(residuals, quadratic), residuals)


@torch.no_grad()
def lanczos_svd(
    f: BatchFunction,
    z: torch.Tensor,
    k: int,
    *,
    tol: float = LANCZOS_TOL,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_dim: int | None = None,
    max_restarts: int = 100,
    seed: int = 0,
    chunk_size: int | None = None,
) -> LanczosSVD:
    """Top ``k`` singular triplets of every sample's Jacobian by block Golub–Kahan–Lanczos.

    Parameters
    ----------
    f, z
        as in :func:`~geomlib.core.spectrum.jacobian_singular_values`; ``z: (B, *in_shape)``.
    k
        number of triplets, at most ``min(E, D)``.
    tol
        stop when every one of the top ``k`` values is within ``tol * s`` of a singular value by
        its error bound (:attr:`LanczosSVD.error_bounds`: the residual ``||J^T u - s v||``, or its
        square over the gap to the next Ritz value, the smaller). Products in float32 carry
        relative errors of about 1e-7 of the largest value, so for float32 keep
        ``tol * s_k / s_1`` above about 1e-7.
    block_size
        vectors per block: ``block_size`` JVPs and as many VJPs per step, each set in one batched
        pass. Larger blocks batch better and converge in fewer steps, at some more products.
    max_dim
        the largest basis before a thick restart (default ``max(4 k, k + 4 block_size)``, at most
        ``min(E, D)``): ``max_dim`` vectors of ``D`` float64 numbers per sample. More memory, fewer
        restarts; each restart costs products.
    max_restarts
        give up after this many restarts, warn with :class:`LanczosNoConvergence` and return what
        was reached (``converged`` says which values).
    seed
        seed of the starting block (a local generator; the global RNG is untouched).
    chunk_size
        at most this many vectors per batched pass.

    Returns
    -------
    :class:`LanczosSVD`; vectors and values in ``z``'s dtype (float32 for half precision). The
    vectors are as accurate as their ``residuals``, the values as their ``error_bounds``, which
    fall with the residuals' square: ask a smaller ``tol`` where the directions matter.
    """
    check_latents(z)
    check_independent_samples(f)
    positive_int("k", k)
    tol = positive_number("tol", tol)
    positive_int("block_size", block_size)
    positive_int("max_dim", max_dim, optional=True)
    positive_int("max_restarts", max_restarts)
    positive_int("chunk_size", chunk_size, optional=True)
    batch, in_dim = z.shape[0], math.prod(z.shape[1:])
    out_dim = math.prod(_output_shape(f, z))
    full = min(in_dim, out_dim)
    if k > full:
        raise ValueError(f"k={k} must be between 1 and min(E, D) = {full}")
    width = min(block_size, full)
    if max_dim is None:
        max_dim = max(4 * k, k + 4 * width)
    max_dim = min(max_dim, full)
    if max_dim < k + width and max_dim < full:
        raise ValueError(f"max_dim={max_dim} must be at least k + block_size = {k + width}")
    keep = min(max(k + width, max_dim // 2), max_dim - width)  # Ritz vectors kept on restart

    dtype = torch.float64  # the recurrence; products run in z's dtype
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, in_dim, width, generator=generator, dtype=torch.float64)
    v_basis = torch.linalg.qr(start.to(dtype=dtype, device=z.device)).Q  # (B, E, n + w)
    u_basis = v_basis.new_zeros(batch, out_dim, 0)  # (B, D, n)
    small = v_basis.new_zeros(batch, 0, 0)  # (B, n, n) = U^T J V
    newest = v_basis
    jvps = vjps = restarts = 0
    scale = 0.0  # largest norm seen, the yardstick for "no direction left"
    while True:
        # forward half-step: J V_new, orthogonalised against U, gives U's next block
        columns = jvp_columns(f, z, newest.permute(2, 0, 1).to(z.dtype), chunk_size).to(dtype)
        jvps += newest.shape[-1]
        scale = max(scale, float(columns.norm(dim=1).max()))
        columns, coupling = _orthogonalise(columns, u_basis)
        u_new, diagonal = _orthonormal_block(columns, u_basis, scale, generator)
        n, w = small.shape[1], u_new.shape[-1]
        grown = small.new_zeros(batch, n + w, n + w)
        grown[:, :n, :n] = small
        grown[:, :n, n:] = coupling
        grown[:, n:, n:] = diagonal
        small, u_basis = grown, torch.cat([u_basis, u_new], dim=2)
        # backward half-step: J^T U_new, orthogonalised against V, gives V's next block
        room = min(width, full - small.shape[1])
        rows = vjp_rows(f, z, u_new.permute(2, 0, 1).to(z.dtype), chunk_size).to(dtype)
        vjps += w
        rows, _ = _orthogonalise(rows.transpose(1, 2), v_basis)
        if room > 0:
            v_new, link = _orthonormal_block(rows[..., :room], v_basis, scale, generator)
            link = torch.cat([link, v_new.transpose(1, 2) @ rows[..., room:]], dim=2)
        else:  # V spans the whole input space: nothing can be left over
            v_new, link = v_basis.new_zeros(batch, in_dim, 0), v_basis.new_zeros(batch, 0, w)
        x, sigma, y_t = torch.linalg.svd(small)
        residuals = (link @ x[:, -w:, :k]).norm(dim=1)  # (B, k)
        bounds = _error_bounds(sigma, residuals)
        converged = bounds <= tol * sigma[:, :k]
        done = bool(converged.all()) or room == 0
        if done or (small.shape[1] + room > max_dim and restarts == max_restarts):
            if not done:
                warnings.warn(
                    f"lanczos_svd: {int((~converged).sum())} of {converged.numel()} values did not"
                    f" reach tol={tol:g} after {restarts} restarts ({jvps} JVPs and {vjps} VJPs per"
                    " sample); raise max_restarts or max_dim, or loosen tol",
                    LanczosNoConvergence,
                    stacklevel=2,
                )
            out = _svd_ready(z).dtype
            return LanczosSVD(
                U=(u_basis @ x[:, :, :k]).to(out),
                S=sigma[:, :k].to(out),
                V=(v_basis @ y_t[:, :k].transpose(1, 2)).to(out),
                residuals=residuals.to(out),
                error_bounds=bounds.to(out),
                converged=converged,
                jvps=jvps,
                vjps=vjps,
            )
        if small.shape[1] + room > max_dim:  # thick restart: best Ritz vectors plus V_new
            restarts += 1
            v_basis = v_basis @ y_t[:, :keep].transpose(1, 2)
            u_basis = u_basis @ x[:, :, :keep]
            small = torch.diag_embed(sigma[:, :keep])
        v_basis = torch.cat([v_basis, v_new], dim=2)
        newest = v_new
