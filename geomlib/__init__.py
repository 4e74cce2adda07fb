"""geomlib: local geometry of generative models.

The public API: Jacobian singular values of a batched generator (exact, projected sketch,
randomized SVD) and the three local descriptors built on them, local scaling (ψ), local rank (ν)
and local complexity (δ).
"""

from geomlib.descriptors import (
    BATCH_TOLERANCE,
    NONLINEARITIES,
    Descriptors,
    cross_polytope_directions,
    describe,
    local_complexity,
    local_complexity_by_layer,
    local_rank,
    local_scaling,
)
from geomlib.jacobian import (
    RandomizedSVD,
    jacobian,
    jacobian_singular_values,
    jvp_columns,
    orthonormal_rows,
    projected_jacobian,
    randomized_svd,
    vjp_rows,
)
from geomlib.profiles import PROFILES, check_profile, default_device, select_budget, torch_threads

__version__ = "0.1.0"

__all__ = [
    "BATCH_TOLERANCE",
    "Descriptors",
    "NONLINEARITIES",
    "PROFILES",
    "RandomizedSVD",
    "check_profile",
    "cross_polytope_directions",
    "default_device",
    "describe",
    "jacobian",
    "jacobian_singular_values",
    "jvp_columns",
    "local_complexity",
    "local_complexity_by_layer",
    "local_rank",
    "local_scaling",
    "orthonormal_rows",
    "projected_jacobian",
    "randomized_svd",
    "select_budget",
    "torch_threads",
    "vjp_rows",
]
