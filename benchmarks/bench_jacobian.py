"""Batched Jacobian kernels against a naive autograd loop, on the same inputs in one run.

The baseline is what research code usually does: for each latent, one forward pass, then one
``torch.autograd.grad`` call per row of ``W`` (``retain_graph=True``). The kernels under test are
``geomlib``'s vmapped VJPs (``projected``), forward-mode full Jacobians (``exact``) and randomized
SVD. For each model the table gives seconds, the speed-up over the loop, and the largest relative
difference of the singular values (the results must agree).

    python benchmarks/bench_jacobian.py            # CPU: MLP and a small diffusers decoder
    python benchmarks/bench_jacobian.py --quick    # seconds, a smaller run

With CUDA present it also times the Stable-Diffusion-1.4-size AutoencoderKL decoder (diffusers'
default SD configuration, random weights) at 512x512 with k=120, in float32 and bfloat16.
Results are written as JSON to ``benchmarks/results/jacobian.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from timing import timed  # benchmarks/timing.py, shared by the benchmark scripts
from torch import nn

import geomlib
from geomlib import jacobian_singular_values, orthonormal_rows

RESULTS = Path(__file__).parent / "results" / "jacobian.json"


def naive_projected_singular_values(f: Callable, z: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Baseline: per sample, one forward and k ``autograd.grad`` calls, one per row of W."""
    rows_per_sample = []
    for sample in z:
        x = sample.unsqueeze(0).clone().requires_grad_(True)
        out = f(x)
        w = orthonormal_rows(k, out.numel(), seed=seed, dtype=out.dtype, device=out.device)
        rows = [
            torch.autograd.grad(out, x, w[i].view_as(out), retain_graph=i < k - 1)[0].flatten()
            for i in range(k)
        ]
        rows_per_sample.append(torch.stack(rows))
    return torch.linalg.svdvals(torch.stack(rows_per_sample).float()).to(z.dtype)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    m = min(a.shape[-1], b.shape[-1])
    a, b = a[..., :m].double(), b[..., :m].double()
    return float(((a - b).abs() / b.abs().clamp_min(1e-12 * b.abs().max())).max())


def mlp_generator(latent: int = 32, output: int = 3072) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, output)
    )


def small_decoder() -> Callable[[torch.Tensor], torch.Tensor]:
    """A diffusers AutoencoderKL decoder: latent (4, 8, 8) -> image (3, 64, 64), random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 32, 64, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ).eval()
    return lambda latents: vae.decode(latents).sample


def sd14_decoder(dtype: torch.dtype, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The SD-1.x VAE decoder (diffusers' default AutoencoderKL config), random weights."""
    from diffusers import AutoencoderKL

    vae = (
        AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        .eval()
        .to(device=device, dtype=dtype)
    )
    scale = 0.18215  # SD 1.x latent scaling factor
    return lambda latents: vae.decode(latents / scale).sample


def compare(name: str, f: Callable, z: torch.Tensor, k: int, repeats: int, full: bool) -> list[dict]:
    """Time the naive loop and the batched kernels on the same ``f`` and ``z``.

    The projected kernel is checked against the loop (same ``W``); randomized SVD against the exact
    spectrum, which is the reference row of its own.
    """
    device = z.device
    base_time, base = timed(lambda: naive_projected_singular_values(f, z, k), repeats, device)
    rows = [row(name, f"naive loop, k={k} autograd.grad calls per latent", base_time, base_time, None)]
    seconds, sigma = timed(lambda: jacobian_singular_values(f, z, method="projected", k=k), repeats, device)
    rows.append(
        row(name, f"projected k={k} (vmap over VJPs)", seconds, base_time, relative_difference(sigma, base))
    )
    if full:
        seconds, exact = timed(lambda: jacobian_singular_values(f, z, method="exact"), repeats, device)
        rows.append(row(name, "exact full J (vmap over JVPs)", seconds, base_time, None))
        seconds, top = timed(
            lambda: jacobian_singular_values(f, z, method="randomized", k=10), repeats, device
        )
        rows.append(
            row(name, "randomized SVD top-10 (vs exact)", seconds, base_time, relative_difference(top, exact))
        )
    return rows


def row(model: str, kernel: str, seconds: float, base_seconds: float, diff: float | None) -> dict:
    return dict(
        model=model, kernel=kernel, seconds=seconds, speedup=base_seconds / seconds, max_rel_diff=diff
    )


def gpu_rows(repeats: int) -> list[dict]:
    device = torch.device("cuda")
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        f = sd14_decoder(dtype, device)
        z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(device, dtype)

        def psi_nu(f: Callable = f, z: torch.Tensor = z) -> torch.Tensor:
            sigma = jacobian_singular_values(f, z, method="projected", k=120, chunk_size=40)
            return torch.stack([geomlib.local_scaling(sigma), geomlib.local_rank(sigma)])

        torch.cuda.reset_peak_memory_stats()
        seconds, values = timed(psi_nu, repeats, device)
        entry = row(
            f"SD-1.4 VAE decoder 512x512, {str(dtype).split('.')[-1]}",
            "projected k=120: psi+nu, 1 latent",
            seconds,
            float("nan"),
            None,
        )
        entry.update(
            peak_gib=torch.cuda.max_memory_allocated() / 2**30,
            psi=float(values[0, 0]),
            nu=float(values[1, 0]),
        )
        rows.append(entry)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<40} {'kernel':<42} {'seconds':>9} {'speed-up':>9} {'max rel diff':>13}")
    for entry in rows:
        diff = "-" if entry["max_rel_diff"] is None else f"{entry['max_rel_diff']:.1e}"
        timing = f"{entry['seconds']:>9.3f} {entry['speedup']:>8.1f}x"
        print(f"{entry['model']:<40} {entry['kernel']:<42} {timing} {diff:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller batch and sketch, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    batch, k = (2, 16) if args.quick else (8, 64)
    generator = torch.Generator().manual_seed(0)

    rows = compare(
        "MLP 32 -> 3072 (ReLU)",
        mlp_generator(),
        torch.randn(batch, 32, generator=generator),
        k,
        repeats,
        full=True,
    )
    latents = torch.randn(max(1, batch // 2), 4, 8, 8, generator=generator)
    rows += compare(
        "AutoencoderKL decoder 4x8x8 -> 3x64x64",
        small_decoder(),
        latents,
        k // 2,
        repeats,
        full=not args.quick,
    )
    if torch.cuda.is_available():
        rows += gpu_rows(repeats)
    print_table(rows)
    meta = dict(
        torch=torch.__version__,
        geomlib=geomlib.__version__,
        machine=platform.machine(),
        threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        batch=batch,
        k=k,
        repeats=repeats,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
