"""ψ and ν over the whole spectrum of each sample's Jacobian by stochastic Lanczos quadrature.

Both descriptors are spectral sums, ``sum_i g(s_i)`` over the singular values of ``J`` (``D x E``):

* ψ: ``g(s) = log s`` over the values above a cutoff;
* ν = ``S exp(-T / S)`` with ``S = sum_i s_i`` and ``T = sum_i s_i log s_i``
  (``-sum_i a_i log a_i = log S - T / S`` for ``a_i = s_i / S``).

A spectral sum is the trace ``tr g(sqrt(J^T J))``. Hutchinson's estimator averages ``v^T g(.) v``
over random probes ``v``, and each quadratic form is Gauss quadrature from ``m`` steps of
Golub–Kahan bidiagonalisation started at ``v`` (Golub & Meurant 2010; Ubaru, Chen & Saad 2017):
if ``B_m = Y diag(theta) X^T``, then ``v^T g v ~ ||v||^2 sum_j X[0, j]^2 g(theta_j)``. Each step
costs one JVP and one VJP per probe, all probes batched with ``vmap``.

What makes it accurate on decoder spectra, whose values span three decades:

* Rademacher probes: their ``v^T v`` is exactly ``E``, so the mean of ``g`` costs no variance and
  only its spread across the spectrum does (Gaussian probes pay for both);
* deflation: the top ``deflate`` triplets are found by :func:`~geomlib.core.lanczos.lanczos_svd`
  and summed exactly; the probes see only the rest, which removes the largest terms of ``S`` and
  ``T`` from the variance (the top dominates ν; the bottom dominates ψ and needs no deflation);
* steps chosen by convergence: the quadrature runs until its estimate moves by less than a tenth
  of the requested accuracy between checks (or the Krylov space is exhausted, where it is exact),
  with every new vector reorthogonalised against the earlier ones in latent space, which is cheap
  (``E`` is small) and keeps the quadrature nodes free of spurious copies;
* probes chosen by the standard error: rounds of probes until the standard error of ψ is below
  ``accuracy * sum_i |log s_i|`` and that of ν below ``accuracy * ν``, with at least
  ``min_probes`` so that the standard errors themselves are trustworthy. The default accuracy,
  3e-3, puts 1 % of ``sum_i |log s_i|`` at more than three standard errors.

The standard errors are those of the probe average (the sample standard deviation over probes
divided by the square root of their number; ν's by the delta method from the covariance of the
per-probe ``S`` and ``T``). They do not include the quadrature's own error, which the stopping
rule keeps an order of magnitude smaller.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from geomlib.core.checks import non_negative_number, positive_int, positive_number
from geomlib.core.jacobian import (
    BatchFunction,
    _output_shape,
    check_independent_samples,
    check_latents,
    jvp_columns,
    vjp_rows,
)
from geomlib.core.lanczos import lanczos_svd

#: Default relative standard error of :func:`spectral_sums`: 1 % of ``sum_i |log s_i|`` is then
#: more than three standard errors.
SLQ_ACCURACY = 3e-3


class QuadratureNotConverged(UserWarning):
    """The Lanczos quadrature reached ``max_steps`` before its estimated error met the request."""


@dataclass
class SpectralSums:
    """ψ and ν of a batch from stochastic Lanczos quadrature, with their standard errors.

    Attributes
    ----------
    local_scaling, local_scaling_stderr : ``(B,)`` ψ and its standard error.
    local_rank, local_rank_stderr : ``(B,)`` ν and its standard error.
    top_singular_values : ``(B, deflate)`` the deflated top values, descending (each to 1e-4 of
        itself by :func:`~geomlib.core.lanczos.lanczos_svd`'s error bound).
    log_magnitude : ``(B,)`` the estimate of ``sum_i |log s_i|``, the yardstick of ψ's accuracy.
    probes, steps : probes used and the most Lanczos steps any probe took.
    jvps, vjps : products spent per sample, deflation included.
    """

    local_scaling: torch.Tensor
    local_scaling_stderr: torch.Tensor
    local_rank: torch.Tensor
    local_rank_stderr: torch.Tensor
    top_singular_values: torch.Tensor
    log_magnitude: torch.Tensor
    probes: int
    steps: int
    jvps: int
    vjps: int

    @property
    def products(self) -> int:
        """JVPs plus VJPs per sample."""
        return self.jvps + self.vjps


def _terms(nodes: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """The four spectral functions at quadrature nodes, ``(..., m) -> (..., m, 4)``: ``log s``,
    ``|log s|``, ``s``, ``s log s``, zero at or below ``cutoff`` (``(...,)`` per sample)."""
    kept = nodes > cutoff.unsqueeze(-1)
    safe = torch.where(kept, nodes, torch.ones_like(nodes))
    logs = torch.log(safe)
    stacked = torch.stack([logs, logs.abs(), safe, safe * logs], dim=-1)
    return torch.where(kept.unsqueeze(-1), stacked, 0.0)


def _quadrature(alphas: torch.Tensor, betas: torch.Tensor, norms: torch.Tensor, cutoff: torch.Tensor):
    """Per-probe estimates of ``v^T g v`` for the four functions of :func:`_terms`.

    alphas: (B, n, m) diagonal of the bidiagonal ``B_m``; betas: (B, n, m - 1) its superdiagonal;
    norms: (B, n) the probes' squared norms; cutoff: (B,). Returns (B, n, 4).
    """
    steps = alphas.shape[-1]
    bidiagonal = torch.diag_embed(alphas)
    if steps > 1:
        bidiagonal = bidiagonal + torch.diag_embed(betas, offset=1)
    _, nodes, right = torch.linalg.svd(bidiagonal)
    weights = right[..., :, 0] ** 2  # first components of the Ritz vectors of B_m^T B_m
    values = _terms(nodes, cutoff[:, None].expand(nodes.shape[:-1]))
    return norms.unsqueeze(-1) * (weights.unsqueeze(-1) * values).sum(dim=-2)


def _orthogonalise(block: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``block - basis basis^T block``, twice; block: (B, n, E), basis: (B, n or 1, E, j)."""
    for _ in range(2):
        block = block - (basis @ (basis.transpose(-1, -2) @ block.unsqueeze(-1))).squeeze(-1)
    return block


def _rank_and_stderr(
    sums: torch.Tensor, deflated: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ν and its delta-method standard error from per-probe sums.

    sums: (B, n, 2) per-probe estimates of the probed part of ``S`` and ``T``; deflated: (B, 2) the
    exact top part. ν = S exp(-T/S); dν/dS = exp(-T/S)(1 + T/S), dν/dT = -exp(-T/S).
    """
    count = sums.shape[1]
    mean = sums.mean(dim=1) + deflated  # (B, 2)
    s_total, t_total = mean[:, 0], mean[:, 1]
    ratio = t_total / s_total
    rank = s_total * torch.exp(-ratio)
    gradient = torch.stack([torch.exp(-ratio) * (1 + ratio), -torch.exp(-ratio)], dim=-1)  # (B, 2)
    centred = sums - sums.mean(dim=1, keepdim=True)
    covariance = centred.transpose(1, 2) @ centred / max(count - 1, 1)  # (B, 2, 2)
    variance = (gradient.unsqueeze(1) @ covariance @ gradient.unsqueeze(-1)).reshape(-1) / count
    stderr = variance.clamp_min(0).sqrt() if count > 1 else rank * math.inf
    return rank.clamp(1.0, float(dim)), stderr


#: Index of each spectral function in the last axis of the quadrature arrays.
PSI, LOG_MAGNITUDE, SUM, SUM_LOG = range(4)


@dataclass
class _Round:
    """One round of probes: per-probe quadratures ``(B, n, 4)`` at the last step, and which of
    the four functions had converged in steps (only those rounds count towards a function)."""

    values: torch.Tensor
    settled: torch.Tensor  # (4,) bool
    steps: int


class _Lanczos:
    """Golub–Kahan bidiagonalisation of ``J`` from ``n`` probes per sample at once, with the
    latent-side vectors reorthogonalised against all earlier ones and the deflated subspace."""

    def __init__(self, f, z, probes, deflated, largest, cutoff_of, chunk_size):
        self.f, self.z, self.chunk_size, self.deflated = f, z, chunk_size, deflated
        self.largest: torch.Tensor | None = largest  # (B,) the largest singular value seen
        self.cutoff_of = cutoff_of  # largest (B,) -> ψ's cutoff (B,)
        self.norms = (probes**2).sum(-1)  # (B, n)
        self.vector = probes / self.norms.sqrt().unsqueeze(-1)  # (B, n, E)
        # the latent-side vectors so far, (B, n, E, capacity), grown by doubling
        self.basis = self.vector.new_zeros(*self.vector.shape, 64)
        self.basis[..., 0] = self.vector
        self.filled = 1
        self.alphas: list[torch.Tensor] = []
        self.betas: list[torch.Tensor] = []
        self.previous_u: torch.Tensor | None = None
        self.exhausted = torch.zeros_like(self.norms, dtype=torch.bool)

    def forward(self) -> None:
        """``alpha_j u_j = J v_j - beta_{j-1} u_{j-1}``: one JVP per probe."""
        tangents = self.vector.transpose(0, 1).to(self.z.dtype)
        u = jvp_columns(self.f, self.z, tangents, self.chunk_size).double().transpose(1, 2)
        if self.previous_u is not None:
            u = u - self.betas[-1].unsqueeze(-1) * self.previous_u
        alpha = u.norm(dim=-1)
        self.u = u / alpha.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
        self.alphas.append(alpha)
        seen = alpha.amax(dim=1)
        self.largest = seen if self.largest is None else torch.maximum(self.largest, seen)

    def backward(self) -> None:
        """``beta_j v_{j+1} = J^T u_j - alpha_j v_j``, reorthogonalised: one VJP per probe."""
        cotangents = self.u.transpose(0, 1).to(self.z.dtype)
        rows = vjp_rows(self.f, self.z, cotangents, self.chunk_size).double()
        rows = rows - self.alphas[-1].unsqueeze(-1) * self.vector
        if self.deflated.shape[-1]:
            rows = _orthogonalise(rows, self.deflated.unsqueeze(1))
        rows = _orthogonalise(rows, self.basis[..., : self.filled])
        beta = rows.norm(dim=-1)
        assert self.largest is not None  # set by forward()
        # an invariant subspace: the quadrature of this probe is exact from here on
        self.exhausted |= beta <= 1e-12 * self.largest.unsqueeze(-1)
        beta = torch.where(self.exhausted, 0.0, beta)
        self.vector = torch.where(
            self.exhausted.unsqueeze(-1), 0.0, rows / beta.clamp_min(1e-300).unsqueeze(-1)
        )
        if self.filled == self.basis.shape[-1]:
            grown = self.basis.new_zeros(*self.basis.shape[:-1], 2 * self.filled)
            grown[..., : self.filled] = self.basis
            self.basis = grown
        self.basis[..., self.filled] = self.vector
        self.filled += 1
        self.betas.append(beta)
        self.previous_u = self.u

    def run(self, steps: int, exact_at: int, check, check_every: int) -> torch.Tensor:
        """Up to ``steps`` steps, stopping early when ``check(history)`` says the functions that
        matter have settled; returns which of the four functions settled, (4,) bool (all of them
        when the Krylov space ran out or reached ``exact_at``, where the quadrature is exact)."""
        history: list[torch.Tensor] = []
        for step in range(1, steps + 1):
            self.forward()
            if step == steps:
                return torch.full((4,), steps == exact_at)
            self.backward()
            if bool(self.exhausted.all()):
                return torch.ones(4, dtype=torch.bool)
            if step % check_every == 0:
                history.append(self.quadrature(self.cutoff_of(self.largest)).mean(dim=1))
                settled, enough = check(history)
                if enough:
                    return settled
        raise AssertionError("unreachable: the last step returns")

    def quadrature(self, cutoff: torch.Tensor) -> torch.Tensor:
        """(B, n, 4) per-probe estimates from the steps so far."""
        steps = len(self.alphas)
        betas = torch.stack(self.betas[: steps - 1], -1) if steps > 1 else self.norms[..., None][..., :0]
        return _quadrature(torch.stack(self.alphas, -1), betas, self.norms, cutoff)


def _tail(history: list[torch.Tensor]) -> torch.Tensor:
    """How far the quadrature may still be from its limit, per function, from its values
    (B, 4) at equally spaced steps.

    The change over the last third of the history, ``d``, and over the third before it, ``d'``,
    give the rate ``r = |d| / |d'|`` (at most 0.95) and the tail of a geometric series,
    ``|d| r / (1 - r)``. Windows that grow with the history, because Gauss quadrature of a
    spectrum converges in stairs: over a few steps a flat stretch can come before a steep one
    (seen on decoders), over a third of the steps so far the stairs average out.
    """
    span = len(history) // 3
    if span == 0:
        return torch.full_like(history[-1], float("inf"))
    last = (history[-1] - history[-1 - span]).abs()
    before = (history[-1 - span] - history[-1 - 2 * span]).abs()
    rate = torch.where(before > 0, last / before.clamp_min(1e-300), 0.0).clamp(max=0.95)
    return last * rate / (1 - rate)


def _scales(estimate: torch.Tensor) -> torch.Tensor:
    """What each function's error is measured against, (B, 4): ψ and ``sum |log s|`` against
    ``sum |log s|``; ``S`` against itself; ``T`` against ``|T| + S``."""
    magnitude = estimate[:, LOG_MAGNITUDE].abs()
    total = estimate[:, SUM].abs()
    return torch.stack([magnitude, magnitude, total, estimate[:, SUM_LOG].abs() + total], dim=-1)


@torch.no_grad()
def spectral_sums(
    f: BatchFunction,
    z: torch.Tensor,
    *,
    accuracy: float = SLQ_ACCURACY,
    tol: float | None = None,
    deflate: int | None = None,
    probes_per_round: int = 8,
    min_probes: int = 16,
    max_probes: int = 128,
    check_every: int = 8,
    max_steps: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
) -> SpectralSums:
    """ψ and ν of every sample's Jacobian over its whole spectrum, by stochastic Lanczos quadrature.

    Parameters
    ----------
    f, z
        as in :func:`~geomlib.core.spectrum.jacobian_singular_values`; ``z: (B, *in_shape)``.
    accuracy
        the standard errors asked for, relative: ψ's to ``sum_i |log s_i|`` (ψ itself can be
        near 0), ν's to ν. Probes are added in rounds until both are met or ``max_probes``; each
        round's quadrature runs until its estimated remaining error is below a quarter of that.
    tol
        absolute cutoff: ψ sums ``log s`` over the quadrature nodes above it. Default
        ``s_max * min(E, D) * eps``, as :func:`~geomlib.core.descriptors.local_scaling`. That
        suits a Jacobian of full rank ``min(E, D)`` (a decoder's). Where ``J`` has zero singular
        values, a quadrature node approaches 0 only as fast as the quadrature converges, so pass
        a cutoff between 0 and the smallest non-zero value.
    deflate
        top triplets computed by Lanczos and summed exactly (default ``min(64, min(E, D) // 8)``;
        0 for none).
    probes_per_round, min_probes, max_probes
        probes batched per round, the fewest in all (the standard errors are themselves estimated
        from the probes: below about 16 they are too noisy to stop on), and the most in all.
    check_every, max_steps
        Lanczos steps between convergence checks, and the most per probe (default: all
        ``min(E, D) - deflate``, where the quadrature is exact).
    seed
        seed of the probes and of the deflation's start (a local generator).
    chunk_size
        at most this many vectors per batched pass.
    """
    check_latents(z)
    check_independent_samples(f)
    accuracy = positive_number("accuracy", accuracy)
    if tol is not None:
        tol = non_negative_number("tol", tol)
    for name, value in (
        ("probes_per_round", probes_per_round),
        ("min_probes", min_probes),
        ("max_probes", max_probes),
        ("check_every", check_every),
    ):
        positive_int(name, value)
    positive_int("max_steps", max_steps, optional=True)
    positive_int("chunk_size", chunk_size, optional=True)
    if deflate is not None and (isinstance(deflate, bool) or not isinstance(deflate, int) or deflate < 0):
        raise ValueError(f"deflate must be an integer >= 0, got {deflate!r}")
    batch, in_dim = z.shape[0], math.prod(z.shape[1:])
    out_dim = math.prod(_output_shape(f, z))
    full = min(in_dim, out_dim)
    deflate = min(64, full // 8) if deflate is None else deflate
    if deflate >= full:
        raise ValueError(f"deflate={deflate} leaves nothing to probe: min(E, D) = {full}")
    steps_cap = min(max_steps or full, full - deflate)

    jvps = vjps = 0
    top_values = z.new_zeros(batch, 0, dtype=torch.float64)
    top_vectors = z.new_zeros(batch, in_dim, 0, dtype=torch.float64)
    if deflate:
        top = lanczos_svd(f, z, deflate, tol=1e-4, seed=seed, chunk_size=chunk_size)
        jvps, vjps = top.jvps, top.vjps
        top_values, top_vectors = top.S.double(), top.V.double()
    generator = torch.Generator().manual_seed(seed + 1)
    largest = top_values[:, 0] if deflate else None
    needed = torch.ones(4, dtype=torch.bool)

    def cutoff_of(largest: torch.Tensor) -> torch.Tensor:
        return _cutoff(tol, largest, full, z.dtype)

    def check(history: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """Which functions have settled, and whether all that still need probes have; the pairs
        (ψ, sum |log s|) and (S, T) settle together."""
        settled = (_tail(history) <= accuracy / 4 * _scales(history[-1])).all(dim=0)
        settled[PSI] = settled[LOG_MAGNITUDE] = bool(settled[PSI] & settled[LOG_MAGNITUDE])
        settled[SUM] = settled[SUM_LOG] = bool(settled[SUM] & settled[SUM_LOG])
        return settled, bool(settled[needed].all())

    rounds: list[_Round] = []
    while True:
        count = min(probes_per_round, max_probes - sum(r.values.shape[1] for r in rounds))
        # the same probes for every sample: a sample's estimate does not depend on its neighbours'
        # draws (only on how many rounds the slowest of them needs)
        signs = torch.randint(0, 2, (count, in_dim), generator=generator, dtype=torch.float64)
        probes = (2 * signs - 1).to(z.device).expand(batch, -1, -1)
        if deflate:
            probes = _orthogonalise(probes, top_vectors.unsqueeze(1))
        lanczos = _Lanczos(f, z, probes, top_vectors, largest, cutoff_of, chunk_size)
        settled = lanczos.run(steps_cap, in_dim - deflate, check, check_every)
        jvps, vjps = jvps + count * len(lanczos.alphas), vjps + count * len(lanczos.betas)
        largest = lanczos.largest
        assert largest is not None  # set by the first step
        cutoff = cutoff_of(largest)
        rounds.append(_Round(lanczos.quadrature(cutoff), settled, len(lanczos.alphas)))
        result, needed = _summarise(rounds, top_values, cutoff, full, accuracy)
        probes_used = sum(r.values.shape[1] for r in rounds)
        if (not bool(needed.any()) and probes_used >= min_probes) or probes_used >= max_probes:
            break
    return SpectralSums(
        **result,
        top_singular_values=top_values.to(torch.float64 if z.dtype == torch.float64 else torch.float32),
        probes=probes_used,
        steps=max(r.steps for r in rounds),
        jvps=jvps,
        vjps=vjps,
    )


def _cutoff(tol: float | None, largest: torch.Tensor, full: int, dtype: torch.dtype) -> torch.Tensor:
    """ψ's cutoff per sample, (B,): ``tol``, or ``s_max * min(E, D) * eps`` of the products' dtype."""
    if tol is not None:
        return torch.full_like(largest, tol)
    eps = torch.finfo(dtype if dtype == torch.float64 else torch.float32).eps
    return largest * full * eps


def _summarise(
    rounds: list[_Round], top_values: torch.Tensor, cutoff: torch.Tensor, full: int, accuracy: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Estimates and standard errors from the rounds so far, and which functions need more probes.

    A function is averaged over the rounds whose quadrature of it converged (all rounds if none
    did, with a warning); the deflated values add their exact terms.
    """
    top = _terms(top_values, cutoff).sum(dim=-2)  # (B, 4)

    def probes_for(function: int) -> torch.Tensor:
        chosen = [r.values for r in rounds if bool(r.settled[function])]
        if not chosen:
            chosen = [r.values for r in rounds]
            if len(rounds) == 1:
                warnings.warn(
                    "spectral_sums: the quadrature did not converge within max_steps; the"
                    " estimate is biased beyond its standard error (raise max_steps)",
                    QuadratureNotConverged,
                    stacklevel=4,
                )
        return torch.cat(chosen, dim=1)

    psi_probes = probes_for(PSI)[..., :SUM]  # (B, n, 2): ψ and sum |log s|
    count = psi_probes.shape[1]
    psi = psi_probes.mean(dim=1) + top[:, :SUM]
    psi_stderr = psi_probes[..., 0].std(dim=1) / math.sqrt(count) if count > 1 else psi[:, 0] * math.inf
    rank, rank_stderr = _rank_and_stderr(probes_for(SUM)[..., SUM:], top[:, SUM:], full)
    psi_needed = bool((~(psi_stderr <= accuracy * psi[:, 1].abs())).any())
    rank_needed = bool((~(rank_stderr <= accuracy * rank)).any())
    needed = torch.tensor([psi_needed, psi_needed, rank_needed, rank_needed])
    result = {
        "local_scaling": psi[:, 0],
        "local_scaling_stderr": psi_stderr,
        "local_rank": rank,
        "local_rank_stderr": rank_stderr,
        "log_magnitude": psi[:, 1],
    }
    return result, needed
