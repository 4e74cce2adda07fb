"""Descriptors against closed forms and analytic counts."""

import copy
import math
import re

import pytest
import torch
from torch import nn

from geomlib import (
    cross_polytope_directions,
    describe,
    jacobian_singular_values,
    local_complexity,
    local_complexity_by_layer,
    local_rank,
    local_scaling,
)


def closed_form_rank(values):
    weights = [v / sum(values) + 1e-30 for v in values]
    return math.exp(-sum(w * math.log(w) for w in weights))


def test_local_scaling_and_rank_closed_form(diagonal_quadratic):
    truths = [[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [10.0, 1e-3, 1e-3, 1e-3]]
    # singular values of this map at z are |z|: each sample gets its own known spectrum
    sigma = jacobian_singular_values(diagonal_quadratic(4, 6), torch.tensor(truths, dtype=torch.float64))
    expected_psi = torch.tensor([sum(math.log(v) for v in t) for t in truths], dtype=torch.float64)
    expected_nu = torch.tensor([closed_form_rank(t) for t in truths], dtype=torch.float64)
    torch.testing.assert_close(local_scaling(sigma), expected_psi)
    torch.testing.assert_close(local_rank(sigma), expected_nu)
    assert local_rank(sigma)[1].item() == pytest.approx(4.0)  # isotropic: full effective rank


def test_rank_deficient_jacobian_ignores_zero_singular_values(linear_map):
    matrix = linear_map([3.0, 0.5], 5, 7)  # rank 2 in a 7 x 5 map: three zero singular values
    sigma = jacobian_singular_values(lambda z: z @ matrix.T, torch.randn(2, 5, dtype=torch.float64))
    assert sigma.shape == (2, 5) and (sigma[:, 2:] < 1e-12).all()
    torch.testing.assert_close(local_scaling(sigma), torch.full((2,), math.log(1.5), dtype=torch.float64))
    torch.testing.assert_close(
        local_rank(sigma), torch.full((2,), closed_form_rank([3.0, 0.5]), dtype=torch.float64)
    )


def test_local_scaling_tolerance_and_degenerate_spectra():
    sigma = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        local_scaling(sigma, tol=0.5), torch.tensor([math.log(2.0), 0.0], dtype=torch.float64)
    )
    assert local_rank(sigma)[1].item() == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        local_scaling(torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="finite"):
        local_rank(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(ValueError, match="tol"):
        local_scaling(sigma, tol=-1.0)


def one_hidden_layer(activation, in_dim=5, hidden=64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_dim, hidden), activation, nn.Linear(hidden, 3)).double()


def analytic_first_layer_count(linear, z, directions, radius):
    """|w.z + c| < r max_i |w.b_i|: the sign changes on the cross-polytope's vertices."""
    centre = z @ linear.weight.T + linear.bias  # (B, N)
    reach = radius * (directions @ linear.weight.T).abs().amax(dim=0)  # (N,)
    return (centre.abs() < reach).sum(dim=1)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.1), nn.GELU(), nn.SiLU()])
@pytest.mark.parametrize("radius", [0.05, 0.3, 2.0])
def test_first_layer_count_matches_analytic(activation, radius):
    net = one_hidden_layer(activation)
    z = torch.randn(50, 5, dtype=torch.float64)
    directions = cross_polytope_directions(5, 3, seed=1, dtype=torch.float64)
    delta = local_complexity(net, z, radius=radius, directions=directions)
    expected = analytic_first_layer_count(net[0], z, directions, radius)
    assert torch.equal(delta, expected)
    assert delta.sum() > 0  # the radii are chosen so the test is not vacuous


def test_n_dirs_draws_the_same_directions_as_the_helper():
    net = one_hidden_layer(nn.ReLU())
    z = torch.randn(20, 5, dtype=torch.float64)
    directions = cross_polytope_directions(5, 4, seed=9, dtype=torch.float64)
    by_seed = local_complexity(net, z, radius=0.5, n_dirs=4, seed=9)
    assert torch.equal(by_seed, analytic_first_layer_count(net[0], z, directions, 0.5))


def test_deeper_layers_against_manual_vertex_evaluation():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    z = torch.randn(30, 3, dtype=torch.float64)
    directions = cross_polytope_directions(3, 3, seed=0, dtype=torch.float64)
    by_layer = local_complexity_by_layer(net, z, radius=0.4, directions=directions, chunk_size=12)
    vertices = z[:, None, :] + 0.4 * torch.cat([directions, -directions])[None]  # (B, 6, 3)
    with torch.no_grad():
        first = vertices @ net[0].weight.T + net[0].bias
        second = torch.relu(first) @ net[2].weight.T + net[2].bias
    for name, pre in [("1", first), ("3", second)]:
        positive = pre > 0
        expected = (positive.any(1) & ~positive.all(1)).sum(1)
        assert torch.equal(by_layer[name], expected), name
    assert torch.equal(
        local_complexity(net, z, radius=0.4, directions=directions), by_layer["1"] + by_layer["3"]
    )


class SharedActivation(nn.Module):
    """One SiLU module called twice per forward, as in diffusers' ResnetBlock2D."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 8), nn.Linear(8, 8)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.second(self.act(self.first(x))))


def test_module_called_twice_counts_each_call():
    torch.manual_seed(0)
    model = SharedActivation().double()
    z = torch.randn(10, 4, dtype=torch.float64)
    by_layer = local_complexity_by_layer(model, z, radius=1.0, n_dirs=4)
    assert set(by_layer) == {"act", "act#1"}
    directions = cross_polytope_directions(4, 4, dtype=torch.float64)
    assert torch.equal(by_layer["act"], analytic_first_layer_count(model.first, z, directions, 1.0))


def test_named_layers_and_image_shaped_inputs():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1))
    z = torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match="no nonlinearity"):
        local_complexity(decoder, z, radius=0.1, n_dirs=2)
    delta = local_complexity(decoder, z, radius=0.5, n_dirs=2, layers=["1"])
    assert delta.shape == (3,) and (delta > 0).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"radius": 0.0, "n_dirs": 2}, "radius"),
        ({"radius": -1.0, "n_dirs": 2}, "radius"),
        ({"radius": math.nan, "n_dirs": 2}, "radius"),
        ({"radius": 0.1}, "n_dirs"),
        ({"radius": 0.1, "n_dirs": 9}, "n_dirs=9 is more directions than the latent dimension E=5"),
        ({"radius": 0.1, "directions": torch.ones(2, 5, dtype=torch.float64)}, "orthonormal"),
        ({"radius": 0.1, "directions": torch.eye(4, dtype=torch.float64)}, "shape"),
        ({"radius": 0.1, "n_dirs": 2, "layers": ["nope"]}, "not found"),
    ],
)
def test_complexity_bad_input(kwargs, message):
    net = one_hidden_layer(nn.ReLU())
    with pytest.raises(ValueError, match=message):
        local_complexity(net, torch.randn(2, 5, dtype=torch.float64), **kwargs)


def test_complexity_rejects_non_finite_latents():
    net = one_hidden_layer(nn.ReLU())
    with pytest.raises(ValueError, match="NaN or inf"):
        local_complexity(net, torch.full((2, 5), math.inf, dtype=torch.float64), radius=0.1, n_dirs=2)


def test_describe_bundles_the_three_descriptors():
    net = one_hidden_layer(nn.ReLU(), in_dim=3)
    z = torch.randn(6, 3, dtype=torch.float64)
    result = describe(net, z, radius=0.2, n_dirs=3)
    sigma = jacobian_singular_values(net, z)
    torch.testing.assert_close(result.singular_values, sigma)
    torch.testing.assert_close(result.local_scaling, local_scaling(sigma))
    torch.testing.assert_close(result.local_rank, local_rank(sigma))
    assert torch.equal(result.local_complexity, local_complexity(net, z, radius=0.2, n_dirs=3))
    assert set(result.as_dict()) == {"local_scaling", "local_rank", "local_complexity"}
    assert describe(net, z).local_complexity is None
    with pytest.raises(ValueError, match="nn.Module"):
        describe(lambda x: net(x), z, radius=0.2, n_dirs=3)


# ------------------------------------------------------------------------------- bad inputs


def _relu_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def _complexity(**options):
    defaults = dict(radius=0.1, n_dirs=2)
    return local_complexity(_relu_net(), options.pop("z", torch.zeros(2, 3)), **{**defaults, **options})


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: local_scaling(torch.ones(2, 3), tol=float("nan")), ValueError, "tol must be a finite"),
        (lambda: local_scaling(torch.ones(2, 3, dtype=torch.int64)), TypeError, "floating tensor"),
        (lambda: local_rank(torch.tensor([[True, False]])), TypeError, "floating tensor"),
        (lambda: _complexity(radius=1e39), ValueError, "overflows"),
        (lambda: _complexity(layers="1"), TypeError, "layers=['1']"),
        (lambda: _complexity(n_dirs=2.0), TypeError, "n_dirs"),
        (lambda: _complexity(n_dirs=5), ValueError, "n_dirs=5 is more"),
        (lambda: _complexity(z=torch.zeros(0, 3)), ValueError, "empty"),
        (lambda: describe(_relu_net(), torch.zeros(2, 3), method="projected", k=2.0), TypeError, "k must be"),
        (lambda: describe(_relu_net(), torch.zeros(2, 3), chunk_size=1.5), TypeError, "chunk_size"),
        (lambda: describe(_relu_net(), torch.zeros(2, 3), radius=math.inf, n_dirs=2), ValueError, "radius"),
    ],
    ids=[
        "tol-nan", "int-sigma", "bool-sigma", "radius-overflow", "layers-string", "n_dirs-float",
        "n_dirs-too-many", "empty-batch", "k-float", "chunk-float", "radius-inf",
    ],
)  # fmt: skip
def test_bad_arguments_name_themselves(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


class _WithSpareUnit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.spare = _relu_net(), torch.nn.ReLU()  # spare: registered, never called

    def forward(self, x):
        return self.net(x)


def test_a_hooked_module_that_never_runs_is_an_error():
    with pytest.raises(ValueError, match="never called"):
        local_complexity(_WithSpareUnit(), torch.zeros(2, 3), radius=0.1, n_dirs=2, layers=["spare"])


def test_batch_norm_in_training_mode_is_refused_and_eval_mode_is_fine():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU())
    with pytest.raises(ValueError, match="model.eval"):
        describe(net, torch.randn(4, 3))
    assert describe(net.eval(), torch.randn(4, 3)).local_scaling.shape == (4,)


def test_nan_latents_are_named_by_their_index():
    z = torch.zeros(5, 3)
    z[3, 1] = float("nan")
    with pytest.raises(ValueError, match=re.escape("samples [3]")):
        describe(_relu_net(), z)


def test_chunked_vertex_passes_count_what_one_pass_counts():
    """δ from vertices split over passes of 3 equals δ from one pass (float64: no rounding in the way)."""
    net = _relu_net().double()
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = local_complexity(net, z, radius=0.5, n_dirs=3)
    parts = local_complexity(net, z, radius=0.5, n_dirs=3, chunk_size=2)  # 2 of 6 vertices a pass
    assert torch.equal(whole, parts)


def test_half_precision_counts_signs_in_float32():
    """A bfloat16 model and latents give the float32 count of the same (bfloat16-rounded) points,
    and the model's own dtype is restored afterwards."""
    net = _relu_net()
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    half = copy.deepcopy(net).to(torch.bfloat16)
    counted = local_complexity(half, z.to(torch.bfloat16), radius=0.3, n_dirs=3)
    reference = local_complexity(
        copy.deepcopy(half).float(), z.to(torch.bfloat16).float(), radius=0.3, n_dirs=3
    )
    assert torch.equal(counted, reference)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
