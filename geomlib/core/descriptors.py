"""The three local descriptors of a generator ``G: R^E -> R^D`` at a latent ``z``.

* local scaling ``psi = sum_i log s_i`` over the non-zero singular values ``s_i`` of ``J = dG/dz``:
  the log of the volume change; under injectivity the density on the manifold is
  ``p(G(z)) = p(z) exp(-psi)``.
* local rank ``nu = exp(-sum_i a_i log a_i)``, ``a_i = s_i / sum_j s_j + 1e-30``: the effective rank
  (Roy & Vetterli 2007), between 1 and ``rank(J)``.
* local complexity ``delta``: the number of neurons whose pre-activation changes sign on the
  ``2P`` vertices ``z +- r b_i`` of a cross-polytope around ``z``, i.e. the number of the network's
  non-linearity boundaries that cross a small neighbourhood of ``z``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from geomlib.core.checks import non_negative_number, positive_int, positive_number
from geomlib.core.jacobian import (
    BatchFunction,
    check_independent_samples,
    check_latents,
    orthonormal_rows,
)
from geomlib.core.lanczos import LANCZOS_TOL
from geomlib.core.slq import SLQ_ACCURACY, spectral_sums
from geomlib.core.spectrum import METHODS, Method, jacobian_singular_values

#: Modules whose input is hooked by default: piecewise-linear units and their smooth relatives,
#: all of which bend at pre-activation 0.
NONLINEARITIES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Mish,
)


def _check_sigma(sigma: torch.Tensor) -> None:
    if not isinstance(sigma, torch.Tensor) or sigma.ndim < 1 or sigma.shape[-1] == 0:
        raise ValueError("sigma must be a tensor of singular values, shape (B, m)")
    if not sigma.is_floating_point():
        raise TypeError(f"sigma must be a floating tensor, got dtype {sigma.dtype} (use sigma.float())")
    if not torch.isfinite(sigma).all() or (sigma < 0).any():
        raise ValueError("singular values must be finite and non-negative")


def local_scaling(sigma: torch.Tensor, tol: float | None = None) -> torch.Tensor:
    """Local scaling ``psi = sum_i log s_i`` over the singular values above ``tol``.

    Parameters
    ----------
    sigma
        ``(B, m)`` singular values of each sample's Jacobian.
    tol
        absolute threshold below which a singular value counts as zero. Default: relative,
        ``s_max * m * eps`` as in ``torch.linalg.matrix_rank``.

    Returns
    -------
    ``(B,)`` log volume change (nats). A Jacobian with no singular value above ``tol`` gives 0.
    """
    _check_sigma(sigma)
    if tol is None:
        largest = sigma.amax(dim=-1, keepdim=True)
        threshold = largest * sigma.shape[-1] * torch.finfo(sigma.dtype).eps
    else:
        tol = non_negative_number("tol", tol)
        threshold = torch.as_tensor(tol, dtype=sigma.dtype, device=sigma.device)
    kept = sigma > threshold
    logs = torch.where(kept, torch.log(torch.where(kept, sigma, torch.ones_like(sigma))), 0.0)
    return logs.sum(dim=-1)


def local_rank(sigma: torch.Tensor) -> torch.Tensor:
    """Local rank ``nu = exp(-sum_i a_i log a_i)``, ``a_i = s_i / sum_j s_j + 1e-30``.

    Parameters
    ----------
    sigma
        ``(B, m)`` singular values.

    Returns
    -------
    ``(B,)`` effective rank, in ``[1, m]``; 0 for an all-zero Jacobian (no direction survives).
    """
    _check_sigma(sigma)
    total = sigma.sum(dim=-1, keepdim=True)
    weights = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny) + 1e-30
    entropy = -(weights * torch.log(weights)).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def cross_polytope_directions(
    dim: int, n_dirs: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """``(P, E)`` orthonormal directions ``b_i`` of a random cross-polytope (seeded, local RNG)."""
    return orthonormal_rows(n_dirs, dim, seed=seed, dtype=dtype, device=device)


def _hooked_modules(model: nn.Module, layers: Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    named = dict(model.named_modules())
    if layers is None:
        found = [(name, mod) for name, mod in named.items() if isinstance(mod, NONLINEARITIES)]
        if not found:
            kinds = ", ".join(cls.__name__ for cls in NONLINEARITIES)
            raise ValueError(
                f"{type(model).__name__} has no nonlinearity module to hook ({kinds});"
                " name the modules whose input is the pre-activation with layers=[...]"
            )
        return found
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of module names, not one string: use layers=[{layers!r}]")
    layers = list(layers)
    missing = [name for name in layers if name not in named]
    if missing or not layers:
        raise ValueError(f"layers not found in the model: {missing or '(empty list)'}")
    return [(name, named[name]) for name in layers]


def _vertex_batch(z: torch.Tensor, directions: torch.Tensor, radius: float) -> torch.Tensor:
    """``(B, 2P, *in_shape)``: for each sample, ``z + r b_1, ..., z + r b_P, z - r b_1, ...``."""
    flat = z.flatten(1)
    offsets = radius * torch.cat([directions, -directions]).to(z.dtype)  # (2P, E)
    vertices = flat.unsqueeze(1) + offsets.unsqueeze(0)  # (B, 2P, E)
    return vertices.reshape(len(z), len(offsets), *z.shape[1:])


def _resolve_directions(
    z: torch.Tensor, n_dirs: int | None, directions: torch.Tensor | None, seed: int
) -> torch.Tensor:
    dim = math.prod(z.shape[1:])
    if directions is None:
        if n_dirs is None:
            raise ValueError("give n_dirs (P random orthonormal directions) or directions (P, E)")
        positive_int("n_dirs", n_dirs)
        if n_dirs > dim:
            raise ValueError(f"n_dirs={n_dirs} is more directions than the latent dimension E={dim}")
        return cross_polytope_directions(dim, n_dirs, seed=seed, dtype=z.dtype, device=z.device)
    if directions.ndim != 2 or directions.shape[1] != dim:
        raise ValueError(f"directions must have shape (P, E={dim}), got {tuple(directions.shape)}")
    gram = directions.double() @ directions.double().T
    if not torch.allclose(gram, torch.eye(len(gram), dtype=gram.dtype, device=gram.device), atol=1e-4):
        raise ValueError("directions must have orthonormal rows (directions @ directions.T = I)")
    return directions.to(dtype=z.dtype, device=z.device)


#: Vertex passes of half-precision inputs run in float32: in bfloat16 a pre-activation within
#: rounding of zero changes sign between vertices that float32 keeps on one side. Measured on the
#: mini decoder (4 latents, 8 directions): δ in bfloat16 was 7.9 % above float32's; with this rule a
#: bfloat16 model gives δ within 0.6 % of float32's (its weights and latents are still rounded).
SIGN_PRECISION = torch.float32


@contextlib.contextmanager
def _in_float32(model: nn.Module, active: bool) -> Iterator[None]:
    """Run ``model`` in float32 inside the block when ``active``; every parameter and buffer gets
    its own dtype back afterwards (half precision to float32 and back is exact)."""
    if not active:
        yield
        return
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.dtype for t in tensors]
    model.to(SIGN_PRECISION)
    try:
        yield
    finally:
        for tensor, original in zip([*model.parameters(), *model.buffers()], saved, strict=True):
            tensor.data = tensor.data.to(original)
        del tensors


def local_complexity_by_layer(
    model: nn.Module,
    z: torch.Tensor,
    *,
    radius: float,
    n_dirs: int | None = None,
    directions: torch.Tensor | None = None,
    seed: int = 0,
    layers: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Local complexity per hooked call: ``{name: (B,) count}``.

    A module called several times in one forward pass (diffusers reuses one ``SiLU`` per block)
    gets one entry per call, named ``name``, ``name#1``, ``name#2``, ...

    Parameters
    ----------
    model
        module mapping ``(B, *in_shape)`` to anything; samples must not interact.
    z
        ``(B, *in_shape)`` centres of the neighbourhoods. Half-precision ``z`` is evaluated in
        float32 (:data:`SIGN_PRECISION`): signs near zero are what δ counts.
    radius
        half-diagonal ``r > 0`` of the cross-polytope, in the units of ``z``.
    n_dirs
        number ``P`` of random orthonormal directions (drawn from ``seed``), or
    directions
        ``(P, E)`` tensor with orthonormal rows.
    layers
        names of the modules whose *input* is the pre-activation (default: every
        ReLU, LeakyReLU, PReLU, GELU, SiLU, ELU, Mish module).
    chunk_size
        at most this many vertices per forward pass (bounds memory; a sample's ``2P`` vertices
        are split over several passes when ``chunk_size < 2P``).
    """
    check_latents(z)
    check_independent_samples(model)
    radius = positive_number("radius", radius, dtype=z.dtype)
    positive_int("chunk_size", chunk_size, optional=True)
    half = z.dtype in (torch.float16, torch.bfloat16)
    z = z.to(SIGN_PRECISION) if half else z  # vertices and signs in float32 (SIGN_PRECISION)
    basis = _resolve_directions(z, n_dirs, directions, seed)
    hooked = _hooked_modules(model, layers)
    n_vertices = 2 * basis.shape[0]
    per_pass = n_vertices * len(z) if chunk_size is None else chunk_size
    latents_per_pass = max(1, per_pass // n_vertices)
    vertices_per_pass = min(n_vertices, per_pass)
    counts: dict[str, list[torch.Tensor]] = {}
    with _in_float32(model, half):
        for start in range(0, len(z), latents_per_pass):
            vertices = _vertex_batch(z[start : start + latents_per_pass], basis, radius)
            for name, count in _count_sign_changes(model, hooked, vertices, vertices_per_pass).items():
                counts.setdefault(name, []).append(count)
    unused = [name for name, _ in hooked if name not in counts] if layers is not None else []
    if unused:
        raise ValueError(f"layers {unused} were never called in the model's forward pass: hook others")
    return {name: torch.cat(parts) for name, parts in counts.items()}


def _count_sign_changes(
    model: nn.Module,
    hooked: list[tuple[str, nn.Module]],
    vertices: torch.Tensor,
    vertices_per_pass: int,
) -> dict[str, torch.Tensor]:
    """Counts per hooked call for ``vertices: (b, 2P, *in_shape)``, in passes of at most
    ``vertices_per_pass`` vertices of each sample: a neuron counts when it is positive at some
    vertex and not at all of them."""
    batch = len(vertices)
    seen_positive: dict[str, torch.Tensor] = {}  # (b, N) per call: positive at some vertex so far
    all_positive: dict[str, torch.Tensor] = {}  # (b, N): positive at every vertex so far
    order: list[str] = []  # the calls of the current pass, in order
    current = [0]  # vertices per sample in the current pass

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            calls = sum(1 for key in order if key == name or key.startswith(name + "#"))
            key = name if calls == 0 else f"{name}#{calls}"
            order.append(key)
            positive = (inputs[0] > 0).reshape(batch, current[0], -1)
            if key in seen_positive:
                seen_positive[key] |= positive.any(dim=1)
                all_positive[key] &= positive.all(dim=1)
            else:
                seen_positive[key], all_positive[key] = positive.any(dim=1), positive.all(dim=1)

        return hook

    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in hooked]
    try:
        with torch.no_grad():
            for start in range(0, vertices.shape[1], vertices_per_pass):
                part = vertices[:, start : start + vertices_per_pass]
                current[0] = part.shape[1]
                order.clear()
                model(part.reshape(-1, *vertices.shape[2:]))
    finally:
        for handle in handles:
            handle.remove()
    return {key: (seen_positive[key] & ~all_positive[key]).sum(dim=1) for key in seen_positive}


def local_complexity(
    model: nn.Module,
    z: torch.Tensor,
    *,
    radius: float,
    n_dirs: int | None = None,
    directions: torch.Tensor | None = None,
    seed: int = 0,
    layers: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Local complexity ``delta``, ``(B,)``: neurons whose pre-activation changes sign on the
    cross-polytope ``{z +- radius * b_i}``, summed over layers.

    Exact for the first layer of a ReLU network (an affine pre-activation ``w.x + c`` changes sign
    on the vertices iff ``|w.z + c| < radius * max_i |w.b_i|``); a proxy for deeper layers and for
    smooth units. Arguments as in :func:`local_complexity_by_layer`, which gives the breakdown.
    """
    by_layer = local_complexity_by_layer(
        model,
        z,
        radius=radius,
        n_dirs=n_dirs,
        directions=directions,
        seed=seed,
        layers=layers,
        chunk_size=chunk_size,
    )
    return torch.stack(list(by_layer.values())).sum(dim=0)


#: The descriptors' names, in the book's order: the fields of :class:`Descriptors`, the columns of
#: every table of them, the keys of every figure's labels.
DESCRIPTOR_NAMES: tuple[str, ...] = ("local_scaling", "local_rank", "local_complexity")
#: Their symbols, for titles and printed claim checks.
DESCRIPTOR_SYMBOLS: dict[str, str] = {"local_scaling": "ψ", "local_rank": "ν", "local_complexity": "δ"}

#: How far one sample's descriptors may move with its batch neighbours in :func:`describe`, relative
#: to their size (ψ, ν) or to the count (δ). Measured on the mini decoder (32 latents, projected
#: k = 120, 16 directions; batches of 8 and 16 against one latent per call): ψ 1.9e-7 and ν 1.0e-6
#: relative, δ at most 2 of about 9 100 neurons (2.2e-4). The bounds leave a margin for other CPUs.
BATCH_TOLERANCE: dict[str, float] = {"local_scaling": 1e-5, "local_rank": 1e-5, "local_complexity": 1e-3}


@dataclass
class Descriptors:
    """ψ, ν (and δ) of a batch, with the singular values they came from.

    Attributes
    ----------
    local_scaling
        ``(B,)`` ψ.
    local_rank
        ``(B,)`` ν.
    singular_values
        ``(B, m)``.
    local_complexity
        ``(B,)`` δ, or ``None`` when not computed.
    local_scaling_stderr, local_rank_stderr
        ``(B,)`` standard errors of ψ and ν where they are estimates (``method="slq"``); ``None``
        for the deterministic methods.
    """

    local_scaling: torch.Tensor
    local_rank: torch.Tensor
    singular_values: torch.Tensor
    local_complexity: torch.Tensor | None = None
    local_scaling_stderr: torch.Tensor | None = None
    local_rank_stderr: torch.Tensor | None = None

    @classmethod
    def concatenate(cls, parts: Sequence[Descriptors]) -> Descriptors:
        """One record of the batches ``parts``, in order (δ kept when every part has it)."""
        if not parts:
            raise ValueError("nothing to concatenate: parts is empty")

        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            return torch.cat(values) if len(values) == len(parts) else None

        return cls(
            local_scaling=torch.cat([p.local_scaling for p in parts]),
            local_rank=torch.cat([p.local_rank for p in parts]),
            singular_values=torch.cat([p.singular_values for p in parts]),
            local_complexity=joined("local_complexity"),
            local_scaling_stderr=joined("local_scaling_stderr"),
            local_rank_stderr=joined("local_rank_stderr"),
        )

    def as_dict(self) -> dict[str, list[float]]:
        """Plain lists per descriptor (and standard error, where there is one), e.g. for
        ``pandas.DataFrame(d.as_dict())``."""
        names = [*DESCRIPTOR_NAMES, "local_scaling_stderr", "local_rank_stderr"]
        return {n: getattr(self, n).tolist() for n in names if getattr(self, n) is not None}


#: Methods of :func:`describe`: those of :func:`~geomlib.core.spectrum.jacobian_singular_values`
#: and ``"slq"``, which estimates ψ and ν without singular values.
DESCRIBE_METHODS: tuple[str, ...] = (*METHODS, "slq")


def describe(
    f: BatchFunction,
    z: torch.Tensor,
    *,
    method: Method | Literal["slq"] = "exact",
    k: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    tol: float | None = None,
    accuracy: float | None = None,
    radius: float | None = None,
    n_dirs: int | None = None,
    directions: torch.Tensor | None = None,
    complexity_model: nn.Module | None = None,
    layers: Iterable[str] | None = None,
) -> Descriptors:
    """ψ and ν of ``f`` at ``z: (B, *in_shape)``, and δ when ``radius`` is given.

    δ is computed on ``complexity_model`` (default: ``f`` itself when it is an ``nn.Module``).
    The other arguments are those of :func:`jacobian_singular_values`, :func:`local_scaling` and
    :func:`local_complexity`.

    ``method="slq"`` estimates ψ and ν over the whole spectrum by stochastic Lanczos quadrature
    (:func:`~geomlib.core.slq.spectral_sums`) with standard errors, to the relative ``accuracy``
    asked (default ``SLQ_ACCURACY``, 3e-3); its ``singular_values`` are the deflated top values
    only. For ``"lanczos"``, ``accuracy`` is the relative error bound of each top value (default
    1e-6); other methods take none.

    The batch is computed together, so a sample's values can change in the last digits with the
    rest of its batch: CPU kernels sum in another order for another batch shape, and a
    pre-activation within rounding of zero can flip. See :data:`BATCH_TOLERANCE` for how much; the
    same call on the same batch is bit-identical. For values that do not depend on the batch at
    all, describe one sample per call, as :func:`geomlib.sd.decoder.decoder_descriptors` does.
    """
    check_latents(z)
    if tol is not None:
        non_negative_number("tol", tol)
    if radius is not None:  # before the spectrum, which can take minutes
        positive_number("radius", radius, dtype=z.dtype)
        if directions is None:
            positive_int("n_dirs", n_dirs)
    if method not in DESCRIBE_METHODS:
        raise ValueError(f"method must be one of {DESCRIBE_METHODS}, got {method!r}")
    if accuracy is not None and method not in ("lanczos", "slq"):
        raise ValueError(f"accuracy is for method='lanczos' or 'slq'; method={method!r} takes none")
    if method == "slq":
        sums = spectral_sums(
            f,
            z,
            accuracy=SLQ_ACCURACY if accuracy is None else accuracy,
            tol=tol,
            seed=seed,
            chunk_size=chunk_size,
        )
        sigma = sums.top_singular_values
        spectral = {
            "local_scaling": sums.local_scaling.to(sigma.dtype),
            "local_rank": sums.local_rank.to(sigma.dtype),
            "local_scaling_stderr": sums.local_scaling_stderr.to(sigma.dtype),
            "local_rank_stderr": sums.local_rank_stderr.to(sigma.dtype),
        }
    else:
        sigma = jacobian_singular_values(
            f,
            z,
            method=method,
            k=k,
            seed=seed,
            chunk_size=chunk_size,
            tol=LANCZOS_TOL if accuracy is None else accuracy,
        )
        spectral = {"local_scaling": local_scaling(sigma, tol), "local_rank": local_rank(sigma)}
    delta = None
    if radius is not None:
        model = complexity_model if complexity_model is not None else f
        if not isinstance(model, nn.Module):
            raise ValueError("local complexity needs an nn.Module: pass complexity_model=")
        delta = local_complexity(
            model,
            z,
            radius=radius,
            n_dirs=n_dirs,
            directions=directions,
            seed=seed,
            layers=layers,
            chunk_size=chunk_size,
        )
    return Descriptors(singular_values=sigma, local_complexity=delta, **spectral)
