"""Chapter 03: 2-D slices of the latent space through three generated latents (paper section 3.2,
Fig. 3), and the decoder's ψ, ν, δ on a grid over each slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from geomlib.core.checks import finite_tensor, non_negative_number, positive_int
from geomlib.core.descriptors import DESCRIPTOR_NAMES
from geomlib.runtime.profiles import count
from geomlib.sd.decoder import DescriptorSettings, decode_latents
from geomlib.sd.hub import SDPipeline
from geomlib.sd.pipelines import world_for_model
from geomlib.sd.sampling import generate


@dataclass(frozen=True)
class SliceBudget:
    """A profile of chapter 03: ``resolution`` grid points per axis of the slice, the decoder's
    ``descriptors`` there (δ's ``radius`` in latent units), ``steps`` sampler steps for the three
    anchors, a ``mosaic x mosaic`` grid of decoded images, and the live widget's resolution."""

    resolution: int = field(metadata=count(3))
    descriptors: DescriptorSettings
    steps: int = field(metadata=count(3))
    mosaic: int = field(metadata=count(2))
    widget_resolution: int = field(metadata=count(2))


SLICE_BUDGETS: dict[str, SliceBudget] = {
    "smoke": SliceBudget(
        resolution=3,
        descriptors=DescriptorSettings(k=16, n_dirs=2, radius=0.5),
        steps=5,
        mosaic=3,
        widget_resolution=3,
    ),
    # 196 grid points x 120 VJPs through the 32x32 decoder: minutes on 2 CPU cores
    "book": SliceBudget(
        resolution=14,
        descriptors=DescriptorSettings(k=120, n_dirs=16, radius=0.5),
        steps=25,
        mosaic=7,
        widget_resolution=6,
    ),
    # SD 1.4's decoder at 512x512: 120 VJPs per grid point, 8 at a time to fit in GPU memory
    "paper": SliceBudget(
        resolution=12,
        descriptors=DescriptorSettings(k=120, n_dirs=16, radius=0.5, chunk_size=8),
        steps=50,
        mosaic=6,
        widget_resolution=4,
    ),
}


@dataclass
class LatentPlane:
    """A 2-D slice of latent space: ``origin + u * basis[0] + v * basis[1]``.

    Attributes
    ----------
    origin : ``(E,)`` the anchors' centroid (flattened latent).
    basis : ``(2, E)`` orthonormal directions (Gram-Schmidt of ``a1 - a0``, ``a2 - a0``).
    shape : per-sample latent shape, e.g. ``(4, 8, 8)``.
    anchor_coords : ``(3, 2)`` the anchors' ``(u, v)``.
    us, vs : ``(n,)`` grid coordinates along each direction.
    """

    origin: torch.Tensor
    basis: torch.Tensor
    shape: tuple[int, ...]
    anchor_coords: torch.Tensor
    us: torch.Tensor
    vs: torch.Tensor

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(umin, umax, vmin, vmax)`` for ``imshow(..., origin="lower")``."""
        return (float(self.us[0]), float(self.us[-1]), float(self.vs[0]), float(self.vs[-1]))

    def to_latent(self, coords: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` plane coordinates to ``(N, *shape)`` latents."""
        coords = torch.as_tensor(coords, dtype=self.origin.dtype)
        return (self.origin + coords @ self.basis).reshape(len(coords), *self.shape)

    def grid_coords(self) -> torch.Tensor:
        """``(n_v, n_u, 2)``: row ``i`` has ``v = vs[i]`` (row 0 is the bottom of a heatmap)."""
        v, u = torch.meshgrid(self.vs, self.us, indexing="ij")
        return torch.stack([u, v], dim=-1)

    def grid_latents(self) -> torch.Tensor:
        """``(n_v * n_u, *shape)`` latents of the grid, row by row."""
        return self.to_latent(self.grid_coords().reshape(-1, 2))

    def inside_hull(self) -> torch.Tensor:
        """``(n_v, n_u)`` bool: grid points inside the anchors' triangle (barycentric test)."""
        a, b, c = self.anchor_coords.double()
        p = self.grid_coords().double()
        matrix = torch.stack([b - a, c - a], dim=1)  # columns: edges from a
        weights = torch.linalg.solve(matrix, (p - a).reshape(-1, 2).T).T.reshape(*p.shape[:2], 2)
        tol = 1e-9
        return (weights >= -tol).all(-1) & (weights.sum(-1) <= 1 + tol)


def latent_plane(anchors: torch.Tensor, resolution: int = 16, padding: float = 0.25) -> LatentPlane:
    """The plane through three anchor latents, with a ``resolution x resolution`` grid on it.

    Parameters
    ----------
    anchors
        ``(3, *shape)`` latents, not collinear.
    resolution
        grid points per axis.
    padding
        the grid covers the anchors' bounding box in plane coordinates, widened on each side by
        ``padding`` times its width (height).
    """
    if not isinstance(anchors, torch.Tensor) or anchors.ndim < 2 or anchors.shape[0] != 3:
        got = tuple(anchors.shape) if isinstance(anchors, torch.Tensor) else type(anchors).__name__
        raise ValueError(f"anchors must be a tensor of shape (3, *latent_shape), got {got}")
    finite_tensor("anchors", anchors.double() if not anchors.is_floating_point() else anchors)
    if positive_int("resolution", resolution) < 2:
        raise ValueError(f"resolution must be at least 2 grid points per axis, got {resolution}")
    non_negative_number("padding", padding)
    flat = anchors.flatten(1).double()
    first = flat[1] - flat[0]
    second = flat[2] - flat[0]
    if first.norm() == 0 or second.norm() == 0 or (flat[2] - flat[1]).norm() == 0:
        raise ValueError("two of the three anchors are the same latent: they span no plane")
    e1 = first / first.norm()
    residual = second - (second @ e1) * e1
    if residual.norm() <= 1e-5 * second.norm():  # relative to float32 precision
        raise ValueError("the three anchors are (nearly) collinear: they span no plane")
    basis = torch.stack([e1, residual / residual.norm()])
    origin = flat.mean(0)
    coords = (flat - origin) @ basis.T
    low, high = coords.min(0).values, coords.max(0).values
    margin = padding * (high - low)
    axes = [
        torch.linspace(float(low[i] - margin[i]), float(high[i] + margin[i]), resolution, dtype=torch.float64)
        for i in range(2)
    ]
    dtype = anchors.dtype if anchors.is_floating_point() else torch.float32
    return LatentPlane(
        origin=origin.to(dtype),
        basis=basis.to(dtype),
        shape=tuple(anchors.shape[1:]),
        anchor_coords=coords.to(dtype),
        us=axes[0].to(dtype),
        vs=axes[1].to(dtype),
    )


def default_prompts(model: str) -> list[str]:
    """The chapter's three prompts: the paper's for Stable Diffusion (any model without a procedural
    world), captions of the world's grammar otherwise."""
    if world_for_model(model) is None:
        return ["a cat", "a dog", "a fox"]
    return [
        "a large red circle in the center on a blue background",
        "a large yellow star in the center on a blue background",
        "a large green square in the center on a blue background",
    ]


@dataclass
class LatentSlice:
    """Descriptors of the decoder over a :class:`LatentPlane`'s grid.

    Attributes
    ----------
    plane : the plane and its grid.
    grids : ``{descriptor: (n_v, n_u) array}`` ψ, ν, δ (row 0 = smallest ``v``).
    inside : ``(n_v, n_u)`` bool, grid points inside the anchors' triangle.
    """

    plane: LatentPlane
    grids: dict[str, np.ndarray]
    inside: np.ndarray

    def hull_contrast(self) -> dict[str, tuple[float, float]]:
        """``{descriptor: (mean inside the anchors' hull, mean outside)}``."""

        def mean(grid: np.ndarray, mask: np.ndarray) -> float:
            return float(grid[mask].mean()) if mask.any() else float("nan")  # a coarse grid may miss the hull

        return {
            name: (mean(grid, self.inside), mean(grid, ~self.inside)) for name, grid in self.grids.items()
        }


def latent_slice(
    pipe: SDPipeline,
    anchors: torch.Tensor,
    settings: DescriptorSettings,
    *,
    resolution: int = 16,
    padding: float = 0.25,
    progress: bool = True,
) -> LatentSlice:
    """ψ, ν (and δ, when ``settings.radius`` is set) of the decoder on the plane through
    ``anchors: (3, 4, h, w)``, on a ``resolution x resolution`` grid."""
    plane = latent_plane(anchors.float().cpu(), resolution, padding)
    values = settings.describe(pipe, plane.grid_latents(), progress=progress)
    shape = (len(plane.vs), len(plane.us))
    grids = {
        name: getattr(values, name).reshape(shape).numpy()
        for name in DESCRIPTOR_NAMES
        if getattr(values, name) is not None
    }
    return LatentSlice(plane=plane, grids=grids, inside=plane.inside_hull().numpy())


def slice_images(pipe: SDPipeline, plane: LatentPlane, n: int) -> tuple[np.ndarray, torch.Tensor]:
    """Decoded images on an ``n x n`` grid spanning the plane's extent, top row first (largest
    ``v``), as for a picture: ``((n * n, H, W, 3), (n * n, 2) coordinates)``."""
    umin, umax, vmin, vmax = plane.extent
    v, u = torch.meshgrid(torch.linspace(vmax, vmin, n), torch.linspace(umin, umax, n), indexing="ij")
    coords = torch.stack([u, v], dim=-1).reshape(-1, 2).to(plane.origin.dtype)
    return decode_latents(pipe, plane.to_latent(coords)), coords


def slice_slider(pipe: SDPipeline, result: LatentSlice, images_per_row: int = 8) -> str:
    """An explorable for a static page: a slider over the grid's rows; each frame marks the row on
    the ψ, ν, δ heatmaps and shows images decoded along it. Returns ``to_jshtml`` HTML."""
    import matplotlib.pyplot as plt

    from geomlib.runtime.plotting import DESCRIPTOR_CMAPS, DESCRIPTOR_LABELS, slider_animation

    plane = result.plane
    columns = np.unique(np.linspace(0, len(plane.us) - 1, images_per_row).round().astype(int))
    coords = plane.grid_coords()[:, columns].reshape(-1, 2)
    decoded = decode_latents(pipe, plane.to_latent(coords))
    strips = decoded.reshape(len(plane.vs), len(columns), *decoded.shape[1:])
    fig = plt.figure(figsize=(10, 5.6))
    grid = fig.add_gridspec(2, 3, height_ratios=[3, 1.3])
    lines = []
    for index, name in enumerate(DESCRIPTOR_NAMES):
        ax = fig.add_subplot(grid[0, index])
        ax.imshow(
            result.grids[name],
            origin="lower",
            extent=plane.extent,
            cmap=DESCRIPTOR_CMAPS[name],
            aspect="auto",
        )
        ax.plot(*np.vstack([plane.anchor_coords, plane.anchor_coords[:1]]).T, "w--", linewidth=1)
        ax.set_title(DESCRIPTOR_LABELS[name], fontsize=9)
        lines.append(ax.axhline(float(plane.vs[0]), color="red", linewidth=1.5))
    strip_ax = fig.add_subplot(grid[1, :])
    strip_ax.set_axis_off()
    strip = strip_ax.imshow(np.concatenate(list(strips[0]), axis=1))
    fig.tight_layout()

    def update(row: int) -> None:
        for line in lines:
            line.set_ydata([float(plane.vs[row])] * 2)
        strip.set_data(np.concatenate(list(strips[row]), axis=1))
        strip_ax.set_title(
            f"row {row}: v = {float(plane.vs[row]):.2f}, images at {len(columns)} points along u", fontsize=9
        )

    return slider_animation(fig, update, len(plane.vs))


def slice_widget(
    pipe: SDPipeline,
    prompts: list[str],
    settings: DescriptorSettings,
    *,
    padding: float,
    resolution: int,
    seed: int = 0,
    guidance_scale: float = 7.5,
    steps: int = 25,
) -> None:
    """Live controls (displayed) for readers who run the notebook: three prompts and the padding;
    the "Run" button generates the anchors and redraws the ψ, ν, δ heatmaps (nothing runs until then)."""
    import ipywidgets as widgets

    from geomlib.runtime.plotting import heatmap_panels, outline_polygon
    from geomlib.runtime.widgets import live_controls

    if len(prompts) != 3:
        raise ValueError(f"a slice needs three prompts, got {len(prompts)}")

    def redraw(prompt_a: str, prompt_b: str, prompt_c: str, padding: float):
        anchors = generate(
            pipe,
            [prompt_a, prompt_b, prompt_c],
            seed=seed,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
        ).latents
        result = latent_slice(pipe, anchors, settings, resolution=resolution, padding=padding, progress=False)
        fig = heatmap_panels(result.grids, result.plane.extent)
        outline_polygon(fig, result.plane.anchor_coords.numpy(), labels="ABC")
        return fig

    texts = {
        f"prompt_{key}": widgets.Text(value=text, layout=widgets.Layout(width="90%"))
        for key, text in zip("abc", prompts, strict=True)
    }
    slider = widgets.FloatSlider(value=padding, min=0.0, max=2.0, step=0.1, description="padding")
    live_controls(
        redraw, {**texts, "padding": slider}, rows=[*([name] for name in texts), ["padding"]], manual=True
    )
