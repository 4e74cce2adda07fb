"""geomlib: local geometry of generative models.

The public API: Jacobian singular values of a batched generator (exact, projected sketch,
randomized SVD, block Lanczos), whole-spectrum ψ and ν by stochastic Lanczos quadrature, the
three local descriptors built on them, local scaling (ψ), local rank (ν) and local complexity (δ),
the exact partition of a 2-D ReLU network, and the loader of Stable-Diffusion pipelines. The
package's layers, bottom to top: :mod:`geomlib.core` (the maths), :mod:`geomlib.runtime`
(profiles, seeding, caches, figures), :mod:`geomlib.sd` (latent diffusion), :mod:`geomlib.chapters`
(one module or package per notebook), :mod:`geomlib.cli` and :mod:`geomlib.book`.
"""

from typing import Any

from geomlib.core.descriptors import (
    BATCH_TOLERANCE,
    DESCRIBE_METHODS,
    DESCRIPTOR_NAMES,
    NONLINEARITIES,
    Descriptors,
    cross_polytope_directions,
    describe,
    local_complexity,
    local_complexity_by_layer,
    local_rank,
    local_scaling,
)
from geomlib.core.jacobian import (
    RandomizedSVD,
    jacobian,
    jvp_columns,
    orthonormal_rows,
    projected_jacobian,
    randomized_svd,
    vjp_rows,
)
from geomlib.core.lanczos import LanczosSVD, lanczos_svd
from geomlib.core.partition import Partition, exact_partition
from geomlib.core.slq import SpectralSums, spectral_sums
from geomlib.core.spectrum import jacobian_singular_values
from geomlib.runtime.profiles import (
    PROFILES,
    check_profile,
    default_device,
    select_budget,
    set_torch_threads,
    torch_threads,
)

__version__ = "0.1.0"

#: Names imported on first use: they load diffusers and transformers, which ``import geomlib``
#: does not need for the kernels.
_LAZY = {
    "load_pipeline": "geomlib.sd.pipelines",
    "DescriptorSettings": "geomlib.sd.decoder",
    "decoder_descriptors": "geomlib.sd.decoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geomlib' has no attribute {name!r}")


__all__ = [
    "BATCH_TOLERANCE",
    "DESCRIBE_METHODS",
    "DESCRIPTOR_NAMES",
    "DescriptorSettings",
    "Descriptors",
    "NONLINEARITIES",
    "PROFILES",
    "Partition",
    "RandomizedSVD",
    "check_profile",
    "cross_polytope_directions",
    "decoder_descriptors",
    "default_device",
    "describe",
    "exact_partition",
    "jacobian",
    "jacobian_singular_values",
    "jvp_columns",
    "load_pipeline",
    "local_complexity",
    "local_complexity_by_layer",
    "local_rank",
    "local_scaling",
    "orthonormal_rows",
    "projected_jacobian",
    "randomized_svd",
    "lanczos_svd",
    "LanczosSVD",
    "spectral_sums",
    "SpectralSums",
    "select_budget",
    "set_torch_threads",
    "torch_threads",
    "vjp_rows",
]
